"""The background job queue: concept-creation jobs run by worker threads, persisted in the Store.

A job's life: queued -> running -> done | failed. Its state lives only in SQLite, so a server restart loses
nothing: `recover()` (called before the workers start) finds jobs left 'running' by a stopped server and either
re-queues them with resume=True (their method continues from its last checkpoint in the job's out folder) or marks
them failed with the reason. A job is re-queued at most MAX_ATTEMPTS - 1 times, so a job that kills the server
every time it runs can't keep it down.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import threading
import time
import traceback
from pathlib import Path

from .registry import MethodSpec
from .storage import Store

log = logging.getLogger("boothkit.app")

MAX_ATTEMPTS = 3
PROGRESS_EVERY_S = 0.2


def is_out_of_memory(e: BaseException) -> bool:
    """True for torch's OutOfMemoryError (any device), a RuntimeError saying so, or Python's MemoryError."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def free_memory() -> None:
    """After an out-of-memory error: drop garbage and cached accelerator memory, so the next request can run."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            torch.mps.empty_cache()
    except Exception:  # freeing memory must never be what fails a request
        pass


class JobRunner:
    """`workers` threads that take queued jobs from the Store, oldest first, and run them."""

    def __init__(self, store: Store, methods: dict[str, MethodSpec], model: str, workers: int = 1,
                 on_concepts_changed=None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        self.store = store
        self.methods = methods
        self.model = model
        self.workers = workers
        self.on_concepts_changed = on_concepts_changed or (lambda: None)
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------------------------
    def recover(self) -> list[dict]:
        """Deal with jobs a stopped server left 'running'; -> the jobs it touched (after the change)."""
        touched = []
        for job in self.store.running_jobs():
            where = f"step {job['progress_step']}/{job['progress_total']}" if job["progress_total"] else "its start"
            spec = self.methods.get(job["method"])
            out = self.store.job_dir(job["id"]) / "out"
            dest = self.store.concept_dir(job["concept"])
            if not out.exists() and (dest / "concept.json").exists() and not self.store.get_concept(job["concept"]):
                # stopped between moving the finished folder into the library and committing its row
                self.store.finish_job(job, out)
                log.info("job %s: finished concept %r found on disk, recorded", job["id"], job["concept"])
            elif spec is None:
                self.store.fail_job(job["id"], f"interrupted at {where} by a server stop; method "
                                               f"{job['method']!r} is not available in this server to resume it")
            elif not spec.supports_resume:
                self.store.fail_job(job["id"], f"interrupted at {where} by a server stop; method "
                                               f"{job['method']!r} cannot resume from a checkpoint")
            elif job["attempts"] >= MAX_ATTEMPTS:
                self.store.fail_job(job["id"], f"interrupted at {where} by a server stop, {job['attempts']} times; "
                                               f"not retried again")
            else:
                self.store.requeue_job(job["id"], f"interrupted at {where} by a server stop; resumed from its "
                                                  f"last checkpoint (attempt {job['attempts'] + 1})")
            touched.append(self.store.get_job(job["id"]))
            log.warning("job %s: %s", job["id"], touched[-1]["note"] or touched[-1]["error"] or "recovered")
        return touched

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"boothkit-job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask workers to stop after their current job (a running job is left 'running', resumed on restart)."""
        self._stop.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- work -------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next_job()
            if job is None:
                with self._wake:
                    self._wake.wait(0.5)
                continue
            self.run_job(job)

    def run_job(self, job: dict) -> None:
        spec = self.methods.get(job["method"])
        if spec is None:
            self.store.fail_job(job["id"], f"method {job['method']!r} is not available in this server")
            return
        jdir = self.store.job_dir(job["id"])
        refs = sorted((jdir / "refs").glob("*.png"))
        out = jdir / "out"
        resume = bool(job["resume"])
        if not resume and out.exists():
            shutil.rmtree(out)
        last = [0.0]

        def progress(step: int, total: int) -> None:
            now = time.monotonic()
            if step >= total or now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self.store.set_progress(job["id"], int(step), int(total))

        log.info("job %s: %s %r (%d photos, resume=%s)", job["id"], job["method"], job["concept"], len(refs), resume)
        try:
            extra = {"config": json.loads(job["config"])} if job.get("config") else {}
            if job.get("identifier"):
                extra["identifier"] = job["identifier"]
            made = spec.tune(refs, job["class_noun"], out, model=job["model"], steps=job["steps"], resume=resume,
                             progress=progress, **extra)
            made = Path(made) if made is not None else out
            if not (made / "concept.json").is_file():
                raise RuntimeError(f"method {job['method']!r} returned {made} without a concept.json")
            self.store.finish_job(job, made)
            self.on_concepts_changed()
            log.info("job %s: done", job["id"])
        except Exception as e:  # a failed job must not take the worker down
            if is_out_of_memory(e):
                free_memory()
                reason = f"out of memory while training ({e}); try fewer steps or photos"
            else:
                reason = f"{type(e).__name__}: {e}"
            log.error("job %s failed: %s\n%s", job["id"], reason, traceback.format_exc())
            self.store.fail_job(job["id"], reason)
