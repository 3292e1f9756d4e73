"""The app's persistent state: one SQLite database (WAL) plus folders of files under a data directory.

    <data>/boothkit.db          concepts, jobs, images (rows)
    <data>/concepts/<name>/     finished concept folders (what `boothkit.methods.tune` wrote)
    <data>/jobs/<id>/refs/      the job's reference photos (the app's own PNG re-encodings)
    <data>/jobs/<id>/out/       where the job's method writes (and keeps its checkpoints, on resume)
    <data>/images/<id>.png      generated images

A file is always in place before the row that points at it is committed, so a restart at any moment finds every
committed concept and image on disk. Each call opens its own connection: safe from any thread.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS concepts (
    name TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    class_noun TEXT NOT NULL,
    model TEXT NOT NULL,
    job_id TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,               -- 'tune'
    status TEXT NOT NULL,             -- queued | running | done | failed
    concept TEXT NOT NULL,            -- name the finished concept gets
    method TEXT NOT NULL,
    class_noun TEXT NOT NULL,
    model TEXT NOT NULL,
    steps INTEGER,                    -- requested training steps (NULL: the method's default)
    config TEXT,                      -- JSON object of method config overrides (NULL: none)
    identifier TEXT,                  -- the token prompts use (NULL: the method's default)
    n_images INTEGER NOT NULL,
    progress_step INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,   -- times a worker started it (a resume is attempt 2+)
    resume INTEGER NOT NULL DEFAULT 0,     -- 1: the next attempt passes resume=True
    error TEXT,
    note TEXT,                        -- e.g. 'interrupted at step 7/40 by a server stop; resumed'
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,
    settings TEXT NOT NULL,           -- JSON: seed, steps, guidance, width, height, negative_prompt, concepts, model
    created REAL NOT NULL
);
"""


class NameTaken(ValueError):
    """A concept name already used by a concept or by a job that will create one."""


class Store:
    """Rows in SQLite, files in folders; every method is safe to call from any thread."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        for sub in ("concepts", "jobs", "images", "trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "boothkit.db"
        with self._connect() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(SCHEMA)
        self._empty_trash()

    # -- plumbing ---------------------------------------------------------------------------------------------
    @contextmanager
    def _connect(self):
        c = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA busy_timeout=30000")
        try:
            yield c
        finally:
            c.close()

    @contextmanager
    def _tx(self):
        with self._connect() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _empty_trash(self):
        for p in (self.root / "trash").iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # -- folders ----------------------------------------------------------------------------------------------
    def concept_dir(self, name: str) -> Path:
        return self.root / "concepts" / name

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.png"

    # -- concepts ---------------------------------------------------------------------------------------------
    def list_concepts(self) -> list[dict]:
        with self._connect() as c:
            return [dict(r) for r in c.execute("SELECT * FROM concepts ORDER BY created")]

    def get_concept(self, name: str) -> dict | None:
        with self._connect() as c:
            r = c.execute("SELECT * FROM concepts WHERE name=?", (name,)).fetchone()
        return dict(r) if r else None

    @staticmethod
    def _name_taken(c, name: str) -> str | None:
        """Why `name` can't be used for a new concept (an existing concept, or a job that will create it)."""
        if c.execute("SELECT 1 FROM concepts WHERE name=?", (name,)).fetchone():
            return f"a concept named {name!r} already exists"
        r = c.execute("SELECT id FROM jobs WHERE concept=? AND status IN ('queued','running')", (name,)).fetchone()
        if r:
            return f"job {r['id']} is already creating a concept named {name!r}"
        return None

    def name_taken(self, name: str) -> str | None:
        with self._connect() as c:
            return self._name_taken(c, name)

    def rename_concept(self, old: str, new: str) -> None:
        with self._tx() as c:
            if not c.execute("SELECT 1 FROM concepts WHERE name=?", (old,)).fetchone():
                raise KeyError(old)
            taken = self._name_taken(c, new)
            if taken:
                raise NameTaken(taken)
            os.replace(self.concept_dir(old), self.concept_dir(new))
            try:
                c.execute("UPDATE concepts SET name=? WHERE name=?", (new, old))
            except BaseException:
                os.replace(self.concept_dir(new), self.concept_dir(old))
                raise

    def delete_concept(self, name: str) -> None:
        trash = self.root / "trash" / f"{name}-{uuid.uuid4().hex[:8]}"
        with self._tx() as c:
            if not c.execute("SELECT 1 FROM concepts WHERE name=?", (name,)).fetchone():
                raise KeyError(name)
            c.execute("DELETE FROM concepts WHERE name=?", (name,))
            if self.concept_dir(name).exists():
                os.replace(self.concept_dir(name), trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- jobs -------------------------------------------------------------------------------------------------
    def new_job_id(self) -> str:
        return uuid.uuid4().hex[:16]

    def add_job(self, job_id: str, *, concept: str, method: str, class_noun: str, model: str, steps: int | None,
                n_images: int, config: dict | None = None, identifier: str | None = None) -> dict:
        with self._tx() as c:
            taken = self._name_taken(c, concept)
            if taken:
                raise NameTaken(taken)
            c.execute("INSERT INTO jobs (id, kind, status, concept, method, class_noun, model, steps, config, "
                      "identifier, n_images, created) VALUES (?, 'tune', 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, concept, method, class_noun, model, steps, json.dumps(config) if config else None,
                       identifier, n_images, time.time()))
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> dict | None:
        with self._connect() as c:
            r = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return dict(r) if r else None

    def list_jobs(self, limit: int = 50) -> list[dict]:
        with self._connect() as c:
            return [dict(r) for r in c.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]

    def claim_next_job(self) -> dict | None:
        """Atomically move the oldest queued job to running and return it (None if the queue is empty)."""
        with self._tx() as c:
            r = c.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY created LIMIT 1").fetchone()
            if not r:
                return None
            c.execute("UPDATE jobs SET status='running', attempts=attempts+1, started=? WHERE id=?",
                      (time.time(), r["id"]))
        return self.get_job(r["id"])

    def set_progress(self, job_id: str, step: int, total: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET progress_step=?, progress_total=? WHERE id=? AND status='running'",
                      (step, total, job_id))

    def finish_job(self, job: dict, out: Path) -> None:
        """Move the job's finished concept folder into the library and record it, in that order."""
        dest = self.concept_dir(job["concept"])
        if out.exists():
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(out, dest)
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO concepts (name, method, class_noun, model, job_id, created) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
                      (job["concept"], job["method"], job["class_noun"], job["model"], job["id"], time.time()))
            c.execute("UPDATE jobs SET status='done', finished=?, error=NULL, "
                      "progress_step=MAX(progress_step, progress_total) WHERE id=?", (time.time(), job["id"]))
        shutil.rmtree(self.job_dir(job["id"]), ignore_errors=True)

    def fail_job(self, job_id: str, reason: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET status='failed', error=?, finished=? WHERE id=?",
                      (reason, time.time(), job_id))

    def requeue_job(self, job_id: str, note: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET status='queued', resume=1, note=? WHERE id=?", (note, job_id))

    def running_jobs(self) -> list[dict]:
        with self._connect() as c:
            return [dict(r) for r in c.execute("SELECT * FROM jobs WHERE status='running'")]

    # -- images -----------------------------------------------------------------------------------------------
    def add_image(self, image, prompt: str, settings: dict) -> str:
        """Write a PNG (temporary name, then rename) and then its row; -> the image id."""
        image_id = uuid.uuid4().hex
        path = self.image_path(image_id)
        tmp = path.with_name("." + path.name + ".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
        with self._tx() as c:
            c.execute("INSERT INTO images (id, prompt, settings, created) VALUES (?, ?, ?, ?)",
                      (image_id, prompt, json.dumps(settings), time.time()))
        return image_id

    def get_image(self, image_id: str) -> dict | None:
        with self._connect() as c:
            r = c.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        if not r:
            return None
        d = dict(r)
        d["settings"] = json.loads(d["settings"])
        return d

    def list_images(self, limit: int = 50) -> list[dict]:
        with self._connect() as c:
            rows = [dict(r) for r in c.execute("SELECT * FROM images ORDER BY created DESC LIMIT ?", (limit,))]
        for d in rows:
            d["settings"] = json.loads(d["settings"])
        return rows
