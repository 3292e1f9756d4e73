"""Where boothkit keeps what it can rebuild (glyph atlas, judge prototypes, class images, weight hashes).

`cached_digest()` remembers content hashes of weight files across processes (SQLite), keyed by each file's resolved
path, device, inode, size, modification time and status-change time (nanoseconds), the fields git's index compares
to decide "unchanged": a Stable Diffusion UNet is 3.4 GB, and every `tune`, `generate --concept` and app request
checks a concept's base model hash. Copies that keep the modification time (`cp -p`, `rsync -a`, `tar x`) still get
a new inode and ctime, which ordinary tools cannot set; only a file rewritten while the clock is turned back to
its old ctime would be missed. A digest is stored only if the files' stamp is the same after hashing as before.
The cache is an optimisation only: if its database cannot be opened or written, hashing just happens again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path


def cache_root() -> Path:
    """$BOOTHKIT_CACHE, else $XDG_CACHE_HOME/boothkit, else ~/.cache/boothkit (not created)."""
    if os.environ.get("BOOTHKIT_CACHE"):
        return Path(os.environ["BOOTHKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "boothkit"


def cache_dir() -> Path:
    """cache_root(), created."""
    path = cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stamp(files: list[Path]) -> str:
    """What identifies these files' contents without reading them (in order): resolved path, device, inode, size,
    mtime_ns, ctime_ns."""
    rows = []
    for f in files:
        st = os.stat(f)  # follows symlinks (the hub cache's snapshot files point at blobs)
        rows.append([str(Path(f).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _db() -> sqlite3.Connection:
    c = sqlite3.connect(cache_dir() / "hashes.sqlite", timeout=5, isolation_level=None)
    c.execute("CREATE TABLE IF NOT EXISTS digests (stamp TEXT PRIMARY KEY, digest TEXT NOT NULL)")
    return c


def cached_digest(files: list[Path], compute) -> str:
    """compute(files) -> digest, remembered for these files as they are now (see the module docstring)."""
    try:
        stamp = _stamp(files)
    except OSError:
        return compute(files)
    try:
        with closing(_db()) as c:
            row = c.execute("SELECT digest FROM digests WHERE stamp = ?", (stamp,)).fetchone()
        if row:
            return row[0]
    except (sqlite3.Error, OSError):
        pass
    digest = compute(files)
    try:
        if _stamp(files) != stamp:  # changed while being read: the digest may be of neither version
            return digest
        with closing(_db()) as c:
            c.execute("INSERT OR REPLACE INTO digests (stamp, digest) VALUES (?, ?)", (stamp, digest))
    except (sqlite3.Error, OSError):
        pass
    return digest
