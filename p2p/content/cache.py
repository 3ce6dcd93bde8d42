"""A persistent cache of file CIDs, so a model directory is not re-hashed on every start.

Hashing a 90 MB model costs a fraction of a second, a 7 GB one half a minute: too much for each
start or each ``list_models``. A file's root (CID, size, Tsize) is kept in SQLite keyed by its
resolved path and validated by ``(size, mtime_ns, inode)``: a file rewritten in place changes
its mtime (or its size or inode), and then it is hashed again. The cache is an optimisation
only: a broken or foreign cache file is moved aside and the CIDs are computed afresh.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import structlog

from p2p.content.unixfs import CHUNK_SIZE, MAX_LINKS, ContentChangedError, Root, file_root

log = structlog.get_logger("p2p.content.cache")

# The layout parameters in the key: a future change of chunker or fan-out cannot reuse old CIDs.
PROFILE = f"unixfs-v1/raw-leaves/size-{CHUNK_SIZE}/balanced-{MAX_LINKS}/sha2-256"
FILE_NAME = "unixfs-cids.sqlite"
_SCHEMA = """CREATE TABLE IF NOT EXISTS file_roots (
    path TEXT NOT NULL, profile TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    cid BLOB NOT NULL, tsize INTEGER NOT NULL,
    PRIMARY KEY (path, profile))"""


class CidCache:
    """File roots by (path, size, mtime_ns, inode), in ``<cache_dir>/unixfs-cids.sqlite``.

    Thread-safe (one connection behind a lock) because hashing runs in worker threads, never on
    the trio loop. Several processes may share a cache dir: SQLite serialises their writes."""

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(cache_dir)
        self.path = self.dir / FILE_NAME
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        try:
            db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            db.execute(_SCHEMA)
            db.execute("SELECT count(*) FROM file_roots").fetchone()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.warning("content.cache_unreadable", path=str(self.path), error=str(exc), moved_to=str(aside))
            os.replace(self.path, aside)
            db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
            db.execute(_SCHEMA)
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _lookup(self, key: str, st: os.stat_result) -> Root | None:
        assert self._db is not None
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, inode, cid, tsize FROM file_roots WHERE path = ? AND profile = ?", (key, PROFILE)
            ).fetchone()
        if row is None or (row[0], row[1], row[2]) != (st.st_size, st.st_mtime_ns, st.st_ino):
            return None
        cid, tsize = row[3], row[4]
        if not isinstance(cid, bytes) or len(cid) != 36 or not isinstance(tsize, int) or tsize < st.st_size:
            return None  # not something we wrote: recompute
        return Root(cid, st.st_size, tsize)

    def file_root(self, path: str | os.PathLike[str]) -> Root:
        """The file's root, from the cache when the file is unchanged, else hashed and stored."""
        key = os.path.realpath(path)
        try:
            st = os.stat(key)
        except OSError:
            return file_root(path)  # let the hasher raise its clear error
        hit = self._lookup(key, st)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        root = file_root(key)
        after = os.stat(key)
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
            raise ContentChangedError(f"{path}: changed while it was hashed; try again when it is complete")
        assert self._db is not None
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO file_roots (path, profile, size, mtime_ns, inode, cid, tsize) VALUES (?,?,?,?,?,?,?)",
                (key, PROFILE, st.st_size, st.st_mtime_ns, st.st_ino, root.cid, root.tsize),
            )
        return root
