"""The clock's one writer: a thread with its own SQLite connection that commits in batches.

Why a thread: a commit costs an fsync (milliseconds, sometimes far more on a busy laptop disk),
and the trio thread must never wait on disk — a stalled loop delays heartbeats, and delayed
heartbeats become false lease expiries on every other peer. So the clock applies an event in
memory on the trio thread and hands the row to this thread; the writer drains whatever has
queued up since its last commit and writes it in one transaction (group commit: many events,
one fsync).

Why an overlay: between "queued" and "committed" a write is in neither the database nor
nowhere. ``events``/``blocks`` hold every queued, not-yet-committed row, and every read of the
clock looks there first and then in SQLite, so a caller always sees its own writes at once.
An entry leaves the overlay only after its transaction has committed, which is what makes
"overlay first, then SQLite" race-free from any thread: if a reader misses the overlay, the row
was committed before it looked.

Durability, per write:

- ``durable=True`` rows commit in a batch run with ``synchronous=FULL`` (the WAL is fsynced;
  that also covers every earlier commit). The caller waits (``wait``/``wait_async``) until then:
  a kill -9 or a power cut after the wait returns loses nothing.
- ``durable=False`` rows are queued and the call returns at once. They commit with
  ``synchronous=NORMAL`` in the next batch: the writer starts it as soon as the previous one is
  done, so the window in which a kill -9 loses them is the time the queue takes to drain — under
  a millisecond when idle, one batch commit (an fsync if the batch ahead was durable, up to
  ``max_batch`` rows) under load. After their commit they survive kill -9 (WAL in the OS page
  cache) but not a power cut until the next durable commit or ``close()``. The node uses this
  only for what peers can resend or the scheduler redoes.

Order: rows commit in the order they were queued; the clock queues events parents first, so
``events.ord`` stays a causal order.

Failure is loud: if the writer thread hits an error (disk full, I/O error, a bug), it records
it, logs it at critical level, wakes every waiter with ``ClockWriterError`` and calls the fatal
callbacks (``MerkleClock.watch_writer`` turns that into an exception in the node's nursery).
Every later write raises ``ClockWriterError``. A locked database (``SQLITE_BUSY`` from another
process holding the write lock) is not a failure: the writer logs it and retries.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import Any

import structlog

from p2p.clock.store import ClockStore

log = structlog.get_logger("p2p.clock.writer")

DEFAULT_MAX_BATCH = 4096
_EVENT, _BLOCK, _SYNC, _DROPPED, _PRUNE, _CALL = 0, 1, 2, 3, 4, 5


class ClockWriterError(RuntimeError):
    """The clock's writer thread failed: rows queued after its last commit are not on disk.

    Unrecoverable for this process: the node must stop (and restart, which reloads the clock
    from what was committed; peers resend what they hold)."""


@dataclass(slots=True)
class PendingEvent:
    """An applied event queued for the writer (the overlay entry and the queued row)."""

    n: int
    data: bytes
    author: str
    seq: int
    height: int
    parents: tuple[bytes, ...]
    stub: bytes | None = None  # an event known only by its stub (p2p.clock.stub): no data


@dataclass(slots=True)
class PendingPrune:
    """Events whose blocks give way to their stubs ((cid, stub) pairs), in one transaction."""

    n: int
    items: list[tuple[bytes, bytes]]
    data: bytes = b""


@dataclass(slots=True)
class PendingCall:
    """A call of one of the store's write methods (by name), in the writer's order."""

    n: int
    method: str
    args: tuple[Any, ...]
    data: bytes = b""


@dataclass(slots=True)
class PendingBlock:
    """A plain block queued for the writer."""

    n: int
    data: bytes


@dataclass(slots=True)
class _Write:
    n: int
    kind: int
    cid: bytes
    row: PendingEvent | PendingBlock | PendingPrune | PendingCall | None
    durable: bool


class ClockWriter:
    """The single writer thread of one clock file, with its queue and read-your-writes overlay."""

    def __init__(self, path: Path, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.path = Path(path)
        self._max_batch = max_batch
        # opened here so that a bad file fails the caller, not the thread; used only by the thread
        self._store = ClockStore(self.path, check_same_thread=False)
        self._cond = threading.Condition()
        self._queue: deque[_Write] = deque()
        #: queued, not yet committed rows by binary CID; read without the lock (dict reads are
        #: atomic), removed by the writer under the lock only after their commit
        self.events: dict[bytes, PendingEvent] = {}
        self.blocks: dict[bytes, PendingBlock] = {}
        self.pending_bytes = 0
        self._last = 0          # number of the last queued write
        self._committed = 0     # every write numbered <= this is committed
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._fatal_callbacks: list[Callable[[BaseException], None]] = []
        self._error: BaseException | None = None
        self._stopping = False
        self._unsynced = False  # a NORMAL commit happened since the last fsync of the WAL
        self.batches = 0        # commits done (for tests and benchmarks)
        self._thread = threading.Thread(target=self._run, name=f"clock-writer:{self.path.name}",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ queueing (any thread)

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the writer, or None while it runs."""
        return self._error

    @property
    def lock(self) -> threading.Condition:
        """Held while rows enter or leave the overlay (see ``clock._read_rows``)."""
        return self._cond

    @property
    def last_queued(self) -> int:
        return self._last

    @property
    def committed(self) -> int:
        return self._committed

    def queue_event(self, cid: bytes, data: bytes, author: str, seq: int, height: int,
                    parents: Sequence[bytes], durable: bool) -> int:
        """Queue an applied event (its parents already queued or stored); returns its number."""
        with self._cond:
            self._check()
            self._last += 1
            row = PendingEvent(self._last, data, author, seq, height, tuple(parents))
            self.events[cid] = row
            self.pending_bytes += len(data)
            self._queue.append(_Write(self._last, _EVENT, cid, row, durable))
            self._cond.notify()
            return self._last

    def queue_stub(self, cid: bytes, stub: bytes, author: str, seq: int, height: int,
                   parents: Sequence[bytes]) -> int:
        """Queue an event known only by its stub (a joiner's: its peers pruned the block)."""
        with self._cond:
            self._check()
            self._last += 1
            row = PendingEvent(self._last, b"", author, seq, height, tuple(parents), stub)
            self.events[cid] = row
            self._queue.append(_Write(self._last, _EVENT, cid, row, False))
            self._cond.notify()
            return self._last

    def queue_prune(self, items: list[tuple[bytes, bytes]]) -> int:
        """Queue the pruning of stored events ((cid, stub) pairs); committed durably."""
        with self._cond:
            self._check()
            self._last += 1
            self._queue.append(_Write(self._last, _PRUNE, b"", PendingPrune(self._last, list(items)), True))
            self._cond.notify()
            return self._last

    def queue_call(self, method: str, *args: Any) -> int:
        """Queue a call of ``ClockStore.<method>(*args)`` (the small tables: drop times, block
        deletions); committed durably, after every row queued before it."""
        with self._cond:
            self._check()
            self._last += 1
            self._queue.append(_Write(self._last, _CALL, b"", PendingCall(self._last, method, args), True))
            self._cond.notify()
            return self._last

    def queue_block(self, cid: bytes, data: bytes, durable: bool) -> int:
        """Queue a plain block; returns its write number."""
        with self._cond:
            self._check()
            self._last += 1
            row = PendingBlock(self._last, data)
            self.blocks[cid] = row
            self.pending_bytes += len(data)
            self._queue.append(_Write(self._last, _BLOCK, cid, row, durable))
            self._cond.notify()
            return self._last

    def queue_dropped(self, workflow_id: str, data: bytes) -> int:
        """Queue a dropped workflow's record (``store.put_dropped``); committed durably, after
        every row queued before it (the snapshot's blocks first)."""
        with self._cond:
            self._check()
            self._last += 1
            self._queue.append(_Write(self._last, _DROPPED, workflow_id.encode(), PendingBlock(self._last, data), True))
            self._cond.notify()
            return self._last

    def barrier(self, durable: bool = True) -> int:
        """A write number that commits after everything queued so far (fsynced if durable)."""
        with self._cond:
            self._check()
            self._last += 1
            self._queue.append(_Write(self._last, _SYNC, b"", None, durable))
            self._cond.notify()
            return self._last

    def _check(self) -> None:
        if self._error is not None:
            raise ClockWriterError(f"clock writer for {self.path} failed: {self._error!r}") from self._error
        if self._stopping:
            raise ClockWriterError(f"clock {self.path} is closed")

    # ------------------------------------------------------------------ waiting

    def wait(self, n: int, timeout: float | None = None) -> None:
        """Block until write ``n`` is committed; ClockWriterError if the writer failed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._committed < n and self._error is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"clock write {n} not committed within {timeout} s")
                self._cond.wait(left)
            if self._committed < n:
                raise ClockWriterError(f"clock writer for {self.path} failed before write {n} "
                                       f"was committed: {self._error!r}") from self._error

    async def wait_async(self, n: int) -> None:
        """``wait`` for trio: the writer wakes this task through the trio token, no thread."""
        import trio

        if self._committed >= n:
            return
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake() -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        entry = (n, wake)
        with self._cond:
            ready = self._committed >= n or self._error is not None
            if not ready:
                self._waiters.append(entry)
        try:
            if not ready:
                await done.wait()
        finally:
            with self._cond:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        if self._committed < n:
            raise ClockWriterError(f"clock writer for {self.path} failed before write {n} was "
                                   f"committed: {self._error!r}") from self._error

    def on_fatal(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(exc)`` (from the writer thread) if the writer fails; at once if it has."""
        with self._cond:
            if self._error is None:
                self._fatal_callbacks.append(callback)
                return
            error = self._error
        callback(error)

    def remove_on_fatal(self, callback: Callable[[BaseException], None]) -> None:
        with self._cond:
            if callback in self._fatal_callbacks:
                self._fatal_callbacks.remove(callback)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if not self._queue:
                        return  # stopping and drained
                    batch = [self._queue.popleft()
                             for _ in range(min(self._max_batch, len(self._queue)))]
                self._commit(batch)
                with self._cond:
                    self._committed = batch[-1].n
                    for w in batch:
                        if w.kind == _EVENT:
                            table: dict = self.events
                        elif w.kind == _BLOCK:
                            table = self.blocks
                        else:
                            continue  # a barrier, or a dropped-workflow row (never read back from the queue)
                        if table.get(w.cid) is w.row:
                            del table[w.cid]
                        self.pending_bytes -= len(w.row.data)  # type: ignore[union-attr]
                    ready = [cb for n, cb in self._waiters if n <= self._committed]
                    self._waiters = [(n, cb) for n, cb in self._waiters if n > self._committed]
                    self._cond.notify_all()
                for cb in ready:
                    cb()
        except BaseException as exc:  # noqa: BLE001 - reported loudly, never swallowed
            self._fail(exc)
        finally:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001
                pass

    def _commit(self, batch: list[_Write]) -> None:
        durable = any(w.durable for w in batch)
        rows = [w for w in batch if w.kind != _SYNC]
        if not rows:
            if durable and self._unsynced:
                self._fsync_wal()
            return
        db = self._store.db
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._begin(db)
        try:
            store = self._store
            for w in rows:
                row = w.row
                if w.kind == _EVENT:
                    assert isinstance(row, PendingEvent)
                    if row.stub is not None:
                        store.insert_stub(w.cid, row.stub, row.author, row.seq, row.height, row.parents)
                    else:
                        store.insert_event(w.cid, row.data, row.author, row.seq, row.height, row.parents)
                elif w.kind == _PRUNE:
                    assert isinstance(row, PendingPrune)
                    store.prune(row.items)
                elif w.kind == _CALL:
                    assert isinstance(row, PendingCall)
                    getattr(store, row.method)(*row.args)
                elif w.kind == _DROPPED:
                    assert isinstance(row, PendingBlock)
                    store.put_dropped(w.cid.decode(), row.data)
                else:
                    assert isinstance(row, PendingBlock)
                    store.put_block(w.cid, row.data)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self.batches += 1
        self._unsynced = not durable

    def _begin(self, db: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retried while another connection holds the write lock."""
        waited = 0.0
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                waited += ClockStore.BUSY_TIMEOUT_MS / 1000
                log.warning("clock database locked by another connection; retrying",
                            path=str(self.path), waited_s=round(waited, 1))

    def _fsync_wal(self) -> None:
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            self._unsynced = False  # checkpointed and removed: the data is in the main file
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._unsynced = False

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            waiters = [cb for _, cb in self._waiters]
            self._waiters = []
            fatal = list(self._fatal_callbacks)
            queued = len(self._queue)
            self._cond.notify_all()
        log.critical("clock writer failed: the node must stop; rows queued since the last commit "
                     "are not on disk (peers resend what they hold)", path=str(self.path),
                     error=repr(exc), queued=queued, committed=self._committed)
        for cb in waiters:
            cb()
        for fcb in fatal:
            try:
                fcb(exc)
            except Exception:  # noqa: BLE001
                log.exception("clock writer fatal callback failed")

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Commit everything queued (fsynced), stop and join the thread.

        Raises ClockWriterError if the writer had failed (after stopping it): queued rows were
        lost, and a silent close would hide that."""
        with self._cond:
            if not self._stopping and self._error is None:
                self._last += 1
                self._queue.append(_Write(self._last, _SYNC, b"", None, True))
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise ClockWriterError(f"clock writer for {self.path} had failed: {self._error!r}") from self._error
