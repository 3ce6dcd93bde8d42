"""SQLite storage of the clock: blocks, events in application order, heads.

Schema (``PRAGMA user_version`` = 1):

- ``blocks(cid BLOB PRIMARY KEY, data BLOB)`` — every block, events and plain result blocks;
- ``events(ord INTEGER PRIMARY KEY AUTOINCREMENT, cid BLOB UNIQUE, author, seq, height)`` —
  ``ord`` is the order events were applied, always parents first, so a restart replays the DAG
  by ``ORDER BY ord`` with heights already computed: nothing is re-derived on open;
- ``heads(cid BLOB PRIMARY KEY)`` — maintained in the same transaction as the event insert;
- ``pruned(cid BLOB PRIMARY KEY, stub BLOB)`` — events whose block was deleted because every op
  of theirs is about a dropped workflow (``p2p.clock.stub``): the ``events`` row stays, so the
  event is still known and replayed (as its stub: parents, version vector, no ops). The first
  pruned row sets ``user_version`` to 2, which an older version refuses to open rather than
  re-fold a history with holes;
- ``expiry(workflow_id TEXT PRIMARY KEY, dropped_at REAL, expired INTEGER)`` — when this peer
  dropped a compacted workflow's records (wall-clock seconds), and whether its result blocks
  were deleted after ``results.retention_s`` (``p2p.compaction.expiry``);
- ``dropped(workflow_id TEXT PRIMARY KEY, data BLOB)`` — compacted workflows whose records this
  peer dropped (``p2p.scheduler.dropped.Dropped``, encoded): a restart files them before it
  re-folds, and skips every op about them (docs/compaction.md §5). Added without a version bump:
  an older version ignores the table, and re-folds those workflows in full.

WAL with ``synchronous=FULL``: a committed transaction survives a power cut or kill -9.
Transactions opened with ``durable=False`` commit with ``synchronous=NORMAL`` instead: in WAL
mode that survives kill -9 (the commit is in the WAL file, in the OS page cache) but not a
power cut until the next durable commit syncs the WAL.

Who uses which connection (see ``writer`` and ``clock``): the clock's writer thread owns the one
connection that writes (``ClockWriter``, batched commits); the trio thread keeps a connection for
point reads (tens of µs, no disk wait in WAL mode: readers never block on the writer); worker
threads use read-only connections (``readonly=True``) for bulk reads such as serving catch-ups.
Every connection has a busy timeout, and WAL lets readers run while the writer commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1
PRUNED_SCHEMA_VERSION = 2  # set by the first pruned event (see the module doc)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (cid BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    cid BLOB NOT NULL UNIQUE,
    author TEXT NOT NULL,
    seq INTEGER NOT NULL,
    height INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_author_seq ON events(author, seq);
CREATE TABLE IF NOT EXISTS heads (cid BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS dropped (workflow_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pruned (cid BLOB PRIMARY KEY, stub BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS expiry (workflow_id TEXT PRIMARY KEY, dropped_at REAL NOT NULL,
                                   expired INTEGER NOT NULL DEFAULT 0);
"""


class ClockStore:
    """Thin typed wrapper over one connection to the SQLite file; no clock logic here."""

    BUSY_TIMEOUT_MS = 5000

    def __init__(self, path: Path, *, readonly: bool = False, check_same_thread: bool = True) -> None:
        path = Path(path)
        self.path = path
        if readonly:
            self._db = sqlite3.connect(str(path), isolation_level=None,
                                       check_same_thread=check_same_thread)
            self._db.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA query_only=ON")
            self._depth = 0
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=check_same_thread)
        self._db.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION, PRUNED_SCHEMA_VERSION):
            self._db.close()
            raise RuntimeError(f"{path}: clock schema version {version}, expected {SCHEMA_VERSION} "
                               f"or {PRUNED_SCHEMA_VERSION}")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={max(version, SCHEMA_VERSION)}")
        self._depth = 0

    @property
    def db(self) -> sqlite3.Connection:
        return self._db

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """One write transaction (re-entrant: nested uses join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")  # not allowed inside a transaction
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")

    # -- blocks --------------------------------------------------------------------------
    def put_block(self, cid: bytes, data: bytes) -> None:
        self._db.execute("INSERT OR IGNORE INTO blocks(cid, data) VALUES (?, ?)", (cid, data))

    def get_block(self, cid: bytes) -> bytes | None:
        row = self._db.execute("SELECT data FROM blocks WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else row[0]

    def block_and_kind(self, cid: bytes) -> tuple[bytes, bool] | None:
        """(data, whether it is an applied event) of a stored block."""
        row = self._db.execute(
            "SELECT b.data, EXISTS(SELECT 1 FROM events e WHERE e.cid = b.cid) FROM blocks b "
            "WHERE b.cid = ?", (cid,)).fetchone()
        return None if row is None else (row[0], bool(row[1]))

    def has_block(self, cid: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM blocks WHERE cid = ?", (cid,)).fetchone() is not None

    # -- events --------------------------------------------------------------------------
    def insert_event(self, cid: bytes, data: bytes, author: str, seq: int, height: int,
                     parents: Sequence[bytes]) -> None:
        """Store an event whose parents are all stored, and move the heads past it."""
        db = self._db
        db.execute("INSERT OR IGNORE INTO blocks(cid, data) VALUES (?, ?)", (cid, data))
        cur = db.execute("INSERT OR IGNORE INTO events(cid, author, seq, height) VALUES (?, ?, ?, ?)",
                         (cid, author, seq, height))
        if cur.rowcount != 1:
            return  # already stored: its head bookkeeping was done then
        if parents:
            db.executemany("DELETE FROM heads WHERE cid = ?", [(p,) for p in parents])
        db.execute("INSERT OR IGNORE INTO heads(cid) VALUES (?)", (cid,))

    def event_height(self, cid: bytes) -> int | None:
        row = self._db.execute("SELECT height FROM events WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else row[0]

    def has_event(self, cid: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM events WHERE cid = ?", (cid,)).fetchone() is not None

    def event_row(self, cid: bytes) -> tuple[int, int, bytes] | None:
        """(ord, height, data) of a stored event."""
        return self._db.execute(
            "SELECT e.ord, e.height, b.data FROM events e JOIN blocks b ON b.cid = e.cid "
            "WHERE e.cid = ?", (cid,)).fetchone()

    def iter_events(self, chunk: int = 2000) -> Iterator[tuple[bytes, int, bytes | None, bytes | None]]:
        """(cid, height, data, stub) in application order, read in chunks (safe against writes);
        a pruned event has no data and a stub."""
        last = 0
        while True:
            rows = self.rows_after(last, chunk)
            if not rows:
                return
            for _, cid, height, data, stub in rows:
                if data is not None or stub is not None:
                    yield cid, height, data, stub
            last = rows[-1][0]

    def rows_after(self, last_ord: int, limit: int) -> list[tuple[int, bytes, int, bytes | None, bytes | None]]:
        """(ord, cid, height, data, stub) of up to ``limit`` events applied after ``last_ord``:
        a live event has its block's data and no stub, a pruned one a stub and no data."""
        return self._db.execute(
            "SELECT e.ord, e.cid, e.height, b.data, p.stub FROM events e "
            "LEFT JOIN blocks b ON b.cid = e.cid LEFT JOIN pruned p ON p.cid = e.cid "
            "WHERE e.ord > ? ORDER BY e.ord LIMIT ?", (last_ord, limit)).fetchall()

    def live_rows_after(self, last_ord: int, limit: int) -> list[tuple[int, bytes, str, int, int, bytes]]:
        """(ord, cid, author, seq, height, data) of up to ``limit`` events after ``last_ord``
        whose blocks are here (not pruned)."""
        return self._db.execute(
            "SELECT e.ord, e.cid, e.author, e.seq, e.height, b.data FROM events e "
            "JOIN blocks b ON b.cid = e.cid WHERE e.ord > ? ORDER BY e.ord LIMIT ?", (last_ord, limit)).fetchall()

    # -- pruned events (p2p.clock.stub) ---------------------------------------------------
    def prune(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Replace stored events' blocks by their stubs ((cid, stub bytes) pairs)."""
        if not items:
            return
        db = self._db
        db.executemany("INSERT OR IGNORE INTO pruned(cid, stub) VALUES (?, ?)", items)
        db.executemany("DELETE FROM blocks WHERE cid = ? AND EXISTS (SELECT 1 FROM events e WHERE e.cid = blocks.cid)",
                       [(c,) for c, _ in items])
        db.execute(f"PRAGMA user_version={PRUNED_SCHEMA_VERSION}")

    def insert_stub(self, cid: bytes, stub: bytes, author: str, seq: int, height: int,
                    parents: Sequence[bytes]) -> None:
        """Store an event known only by its stub (a joiner's: peers pruned it), and move the
        heads past it as for any event (its children, which peers hold, follow it)."""
        db = self._db
        cur = db.execute("INSERT OR IGNORE INTO events(cid, author, seq, height) VALUES (?, ?, ?, ?)",
                         (cid, author, seq, height))
        if cur.rowcount != 1:
            return
        db.execute("INSERT OR IGNORE INTO pruned(cid, stub) VALUES (?, ?)", (cid, stub))
        db.execute(f"PRAGMA user_version={PRUNED_SCHEMA_VERSION}")
        if parents:
            db.executemany("DELETE FROM heads WHERE cid = ?", [(p,) for p in parents])
        db.execute("INSERT OR IGNORE INTO heads(cid) VALUES (?)", (cid,))

    # -- result expiry (p2p.compaction.expiry) --------------------------------------------
    def note_dropped_at(self, workflow_id: str, at: float) -> None:
        self._db.execute("INSERT OR IGNORE INTO expiry(workflow_id, dropped_at) VALUES (?, ?)", (workflow_id, at))

    def expire(self, workflow_id: str, cids: Sequence[bytes]) -> None:
        """Delete a dropped workflow's result blocks (never an event's) and mark it expired."""
        self._db.executemany("DELETE FROM blocks WHERE cid = ? AND NOT EXISTS (SELECT 1 FROM events e WHERE e.cid = blocks.cid)",
                             [(c,) for c in cids])
        self._db.execute("UPDATE expiry SET expired = 1 WHERE workflow_id = ?", (workflow_id,))

    def expiry(self) -> dict[str, tuple[float, bool]]:
        return {w: (at, bool(e)) for w, at, e in self._db.execute("SELECT workflow_id, dropped_at, expired FROM expiry")}

    def stub(self, cid: bytes) -> bytes | None:
        row = self._db.execute("SELECT stub FROM pruned WHERE cid = ?", (cid,)).fetchone()
        return None if row is None else row[0]

    def pruned_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM pruned").fetchone()[0]

    def event_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def last_seq(self, author: str) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM events WHERE author = ?", (author,)).fetchone()
        return row[0] or 0

    # -- dropped workflows ----------------------------------------------------------------
    def put_dropped(self, workflow_id: str, data: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO dropped(workflow_id, data) VALUES (?, ?)", (workflow_id, data))

    def dropped(self) -> list[tuple[str, bytes]]:
        return list(self._db.execute("SELECT workflow_id, data FROM dropped ORDER BY workflow_id"))

    def heads(self) -> list[bytes]:
        return [r[0] for r in self._db.execute("SELECT cid FROM heads ORDER BY cid")]

    def close(self) -> None:
        self._db.close()
