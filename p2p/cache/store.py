"""The cache's SQLite file: sealed entries by cache key, least recently used evicted first.

Only two kinds of bytes reach the disk: cache keys (HMACs) and sealed entries (AEAD), so the
file and its WAL hold no input and no result in the clear. Every method is synchronous and
blocking: :class:`p2p.cache.cache.ResultCache` calls them in worker threads, never on the event
loop. One connection, shared by those threads under a lock.

Size accounting: an entry costs ``len(key) + len(sealed)`` bytes; ``max_bytes`` bounds their
sum (SQLite's own page overhead comes on top). An entry larger than ``max_bytes`` is not kept.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key BLOB PRIMARY KEY,
    sealed BLOB NOT NULL,
    size INTEGER NOT NULL,
    used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
"""


class CacheStore:
    """Sealed entries in one SQLite file, LRU-bounded. Why SQLite: atomic writes, one file,
    an index on last use for eviction, and the WAL keeps a crash from tearing an entry."""

    def __init__(self, path: Path, max_bytes: int, key_id: bytes) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # an entry lost in a power cut is recomputed
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT v FROM meta WHERE k = 'key_id'").fetchone()
        if row is None or bytes(row[0]) != key_id:
            # entries sealed under another key (the network key changed) can never open: start empty
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM entries")
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('key_id', ?)", (key_id,))
        self.entries, self.bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
        self._tick = self._db.execute("SELECT COALESCE(MAX(used), 0) FROM entries").fetchone()[0]
        self.evictions = 0
        if self.bytes > self.max_bytes:  # max_bytes was lowered since the last run
            with self._lock:
                self._evict(0)

    def get(self, key: bytes) -> bytes | None:
        """The sealed entry under ``key`` (marked as just used), or None."""
        with self._lock:
            row = self._db.execute("SELECT sealed FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            self._tick += 1
            self._db.execute("UPDATE entries SET used = ? WHERE key = ?", (self._tick, key))
            return bytes(row[0])

    def has(self, key: bytes) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: bytes, sealed: bytes) -> bool:
        """Store (or replace) an entry, evicting the least recently used to fit; False when the
        entry alone is over ``max_bytes`` (nothing changes)."""
        size = len(key) + len(sealed)
        if size > self.max_bytes:
            return False
        with self._lock:
            with self._db:
                self._db.execute("BEGIN")
                old = self._db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
                if old is not None:
                    self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
                self._tick += 1
                self._db.execute("INSERT INTO entries (key, sealed, size, used) VALUES (?, ?, ?, ?)",
                                 (key, sealed, size, self._tick))
            if old is not None:
                self.entries -= 1
                self.bytes -= old[0]
            self.entries += 1
            self.bytes += size
            self._evict(0)
        return True

    def delete(self, key: bytes) -> bool:
        with self._lock:
            row = self._db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            self.entries -= 1
            self.bytes -= row[0]
            return True

    def _evict(self, room: int) -> None:
        """Drop least recently used entries until ``room`` more bytes fit (lock held)."""
        while self.bytes + room > self.max_bytes and self.entries:
            rows = self._db.execute("SELECT key, size FROM entries ORDER BY used LIMIT 64").fetchall()
            if not rows:
                break
            freed = []
            total = self.bytes
            for key, size in rows:
                if total + room <= self.max_bytes:
                    break
                freed.append((key, size))
                total -= size
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k, _ in freed])
            self.entries -= len(freed)
            self.bytes = total
            self.evictions += len(freed)

    def keys_by_use(self) -> list[bytes]:
        """Every key, least recently used first (tests and diagnostics)."""
        with self._lock:
            return [bytes(r[0]) for r in self._db.execute("SELECT key FROM entries ORDER BY used")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
