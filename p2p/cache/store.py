"""The cache's SQLite file: sealed entries by cache key, least recently used evicted first.

Only two kinds of bytes reach the disk: cache keys (HMACs) and sealed entries (AEAD), so the
file and its WAL hold no input and no result in the clear. Every method is synchronous and
blocking: :class:`p2p.cache.cache.ResultCache` calls them in worker threads, never on the event
loop. One connection, shared by those threads under a lock.

Size accounting: an entry costs ``len(key) + len(sealed)`` bytes; ``max_bytes`` bounds their
sum (SQLite's own page overhead comes on top). An entry larger than ``max_bytes`` is not kept.

The key index: every stored entry gets the next ``seq`` (never reused within one ``epoch``, a
random id made with the file), so a peer can ask for the keys stored since the last seq it saw
(:meth:`CacheStore.since`). The first 8 bytes of every key are also held in memory
(:meth:`CacheStore.may_hold`): a miss, the common case, is answered without touching the disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

PREFIX_BYTES = 8

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
_SEQ = """
CREATE INDEX IF NOT EXISTS entries_seq ON entries (seq);
"""


def prefix_of(key: bytes) -> int:
    """The in-memory (and on-the-wire) stand-in of a key: its first 8 bytes. Keys are HMACs, so
    two keys share a prefix with probability 2^-64: a false match costs one lookup, nothing more."""
    return int.from_bytes(key[:PREFIX_BYTES], "big")


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
        if "seq" not in {r[1] for r in self._db.execute("PRAGMA table_info(entries)")}:  # a file from before the index
            self._db.execute("ALTER TABLE entries ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE entries SET seq = used")
        self._db.executescript(_SEQ)
        row = self._db.execute("SELECT v FROM meta WHERE k = 'epoch'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (k, v) VALUES ('epoch', ?)", (os.urandom(8),))
            row = self._db.execute("SELECT v FROM meta WHERE k = 'epoch'").fetchone()
        self.epoch = bytes(row[0])
        row = self._db.execute("SELECT v FROM meta WHERE k = 'key_id'").fetchone()
        if row is None or bytes(row[0]) != key_id:
            # entries sealed under another key (the network key changed) can never open: start empty
            with self._db:
                self._db.execute("BEGIN")
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0]
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('seq', ?)", (seq.to_bytes(8, "big"),))
                self._db.execute("DELETE FROM entries")
                self._db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('key_id', ?)", (key_id,))
        self.entries, self.bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
        self._tick = self._db.execute("SELECT COALESCE(MAX(used), 0) FROM entries").fetchone()[0]
        # seq only rises within an epoch, even across a changed key that emptied the table
        self.seq = max(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0],
                       int.from_bytes(bytes((self._db.execute("SELECT v FROM meta WHERE k = 'seq'").fetchone() or [b""])[0]), "big"))
        self._prefixes: set[int] = {prefix_of(bytes(r[0])) for r in self._db.execute("SELECT key FROM entries")}
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

    def may_hold(self, key: bytes) -> bool:
        """False when ``key`` is surely not here (no disk read); True when it may be."""
        return prefix_of(key) in self._prefixes

    def put(self, key: bytes, sealed: bytes) -> bool:
        """Store (or replace) an entry, evicting the least recently used to fit; False when the
        entry alone is over ``max_bytes`` (nothing changes)."""
        return self.put_many([(key, sealed)])[0]

    def put_many(self, entries: list[tuple[bytes, bytes]]) -> list[bool]:
        """:meth:`put` for several entries in one transaction (one commit, one eviction pass)."""
        out = [len(k) + len(v) <= self.max_bytes for k, v in entries]
        if not any(out):
            return out
        with self._lock:
            # the counters change only once the transaction committed: a failed write (a full
            # disk) leaves them describing what is really stored
            count, total, tick, seq, added = self.entries, self.bytes, self._tick, self.seq, []
            with self._db:
                self._db.execute("BEGIN")
                for (key, sealed), ok in zip(entries, out):
                    if not ok:
                        continue
                    size = len(key) + len(sealed)
                    old = self._db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
                    if old is not None:
                        self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
                        count -= 1
                        total -= old[0]
                    tick += 1
                    seq += 1
                    self._db.execute("INSERT INTO entries (key, sealed, size, used, seq) VALUES (?, ?, ?, ?, ?)",
                                     (key, sealed, size, tick, seq))
                    count += 1
                    total += size
                    added.append(prefix_of(key))
            self.entries, self.bytes, self._tick, self.seq = count, total, tick, seq
            self._prefixes.update(added)
            self._evict(0)
        return out

    def since(self, seq: int, limit: int) -> tuple[list[bytes], int, bool]:
        """Prefixes of the keys stored after ``seq`` (at most ``limit``, in store order), the seq
        of the last one (``seq`` itself when there is none) and whether more follow."""
        with self._lock:
            rows = self._db.execute("SELECT key, seq FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (seq, limit + 1)).fetchall()
            newest = self.seq
        more = len(rows) > limit
        rows = rows[:limit]
        # the last page ends at the store's own seq, even when its newest entries were evicted:
        # an asker is then in step with what heartbeats advertise
        last = rows[-1][1] if more else max(newest, seq, 0)
        return [bytes(r[0])[:PREFIX_BYTES] for r in rows], last, more

    def delete(self, key: bytes) -> bool:
        with self._lock:
            row = self._db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            self.entries -= 1
            self.bytes -= row[0]
            self._prefixes.discard(prefix_of(key))
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
            self._prefixes.difference_update(prefix_of(bytes(k)) for k, _ in freed)
            self.evictions += len(freed)

    def keys_by_use(self) -> list[bytes]:
        """Every key, least recently used first (tests and diagnostics)."""
        with self._lock:
            return [bytes(r[0]) for r in self._db.execute("SELECT key FROM entries ORDER BY used")]

    def close(self) -> None:
        with self._lock:
            self._db.close()
