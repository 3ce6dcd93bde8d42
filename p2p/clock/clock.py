"""MerkleClock: the replicated, signed, content-addressed DAG of events (Merkle-CRDT).

State is the set of events; merge is set union, so it is idempotent, commutative and
associative by construction, and two clocks holding the same events have the same heads and
``get_hash``. What makes that hold in practice:

- an event is stored only after all its parents are stored (``events.ord`` is a causal order),
  so "known" always means "known with all ancestors" and heads are exactly the stored events no
  stored event names as parent: insert the new event as a head, drop its parents from heads;
- foreign blocks are verified (``decode_event``) before anything is stored; invalid ones are
  reported in ``MergeResult.rejected`` and change nothing;
- events that arrive before their parents wait in the ``OrphanPool`` and are applied, in causal
  order, the moment their parents are;
- no validity rule depends on arrival order (a second event with an author's existing ``seq`` is
  stored, not rejected: rejecting "the later one" would make replicas diverge).

``MergeResult.missing`` is the clock-wide set of parents still needed after the merge (what a
DAG walker should fetch next), not only those named by this batch.

Threads (why: the trio loop must not wait on disk or crypto, or heartbeats slip and peers see
false lease expiries). The clock is owned by one thread (the trio thread in a node) that calls
every method below; it applies events in memory and queues the rows to the clock's writer
thread (``writer.ClockWriter``: one connection, batched commits). Reads see the clock's own
writes at once through the writer's overlay of queued rows. The ``*_async`` methods and
``collect_blocks`` move the heavy parts to worker threads:

- ``append_async(ops, durable=True)`` returns once the event is fsynced; ``durable=False``
  (and the sync ``append(..., durable=False)``) returns at once, the row lands in the writer's
  next batch (kill -9 window: until that commit, see ``writer``);
- ``add_blocks_async(blocks)`` verifies foreign blocks (hash, canonical re-encode, Ed25519) in a
  worker thread, ``VERIFY_CHUNK`` at a time, and applies each chunk on the owner thread in
  slices of ``APPLY_SLICE`` events, so a 20,000-block catch-up never holds the loop for long;
- ``collect_blocks(...)`` answers a catch-up (BFS through parents) on a read-only connection in
  a worker thread; ``events_async()`` reads and decodes the stored events there too.

The sync methods keep their meaning (``append(durable=True)`` and ``put_block(durable=True)``
still block their caller until the fsync; ``add_blocks`` verifies on the caller's thread) so
existing callers run unchanged; the node should move to the async ones.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import structlog
from multiformats import CID

from p2p.clock import codec
from p2p.clock.cids import block_cid, cid_from_bytes, cid_raw, matches_sha256
from p2p.clock.event import (
    Event,
    InvalidBlockError,
    check_ops,
    create_event,
    decode_event,
    event_parents,
    load_stored_event,
    stub_event,
)
from p2p.clock.pending import DEFAULT_MAX_ORPHAN_BYTES, DEFAULT_MAX_ORPHANS, OrphanPool
from p2p.clock.store import ClockStore
from p2p.clock.stub import Stub, decode_stub
from p2p.clock.writer import DEFAULT_MAX_BATCH, ClockWriter, ClockWriterError
from p2p.config import ClockConfig
from p2p.identity import Identity

log = structlog.get_logger("p2p.clock")

#: foreign blocks verified per worker-thread call in ``add_blocks_async``
VERIFY_CHUNK = 128
#: events applied on the owner thread between two checkpoints (an orphan cascade can release
#: a whole catch-up at once)
APPLY_SLICE = 128
#: ``add_blocks_async`` waits for the writer when more than this many bytes are queued
MAX_PENDING_BYTES = 64 << 20
#: events read and decoded per worker-thread call in ``events_async``
READ_CHUNK = 2000
#: queued (uncommitted) events sort after every stored one in ``_event_row``
_PENDING_ORD = 1 << 62
#: bytes counted per block on top of its data in ``collect_blocks``' budget (framing)
BLOCK_OVERHEAD = 64
_IDLE_READERS = 4
#: heights of events applied by this process, newest kept: parents are nearly always recent,
#: and a dict lookup beats a SQLite query (~10-20 µs) in the per-event path
RECENT_EVENTS = 65_536


@dataclass
class MergeResult:
    """What one merge did: events applied (causal order), parents still needed, blocks refused."""

    applied: list[Event] = field(default_factory=list)
    missing: set[CID] = field(default_factory=set)
    rejected: list[tuple[CID, str]] = field(default_factory=list)


class MerkleClock:
    """The local replica of the clock, backed by one SQLite file and its writer thread."""

    def __init__(self, store: ClockStore, identity: Identity, config: ClockConfig,
                 max_orphans: int = DEFAULT_MAX_ORPHANS,
                 max_orphan_bytes: int = DEFAULT_MAX_ORPHAN_BYTES,
                 *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._store = store
        self.identity = identity
        self.peer_id: str = identity.peer_id_str
        self.config = config
        self._orphans = OrphanPool(max_orphans, max_orphan_bytes)
        self._writer = ClockWriter(store.path, max_batch=max_batch)
        self._readers: list[ClockStore] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._last_write = 0
        self._listeners: list[Callable[[Event], None]] = []
        try:
            store.db.execute("PRAGMA query_only=ON")  # every write goes through the writer
            self._load_memo()
        except BaseException:
            self._writer.close()  # no writer thread left behind
            raise

    @classmethod
    def open(cls, path: Path, identity: Identity, config: ClockConfig | None = None,
             *, max_orphans: int = DEFAULT_MAX_ORPHANS,
             max_orphan_bytes: int = DEFAULT_MAX_ORPHAN_BYTES,
             max_batch: int = DEFAULT_MAX_BATCH) -> MerkleClock:
        """Open (or create) the clock stored in the SQLite file at ``path``."""
        return cls(ClockStore(Path(path)), identity, config or ClockConfig(), max_orphans,
                   max_orphan_bytes, max_batch=max_batch)

    def _load_memo(self) -> None:
        """In-memory copies of small derived values, read once at open."""
        self._head_set: dict[bytes, CID] = {c: cid_from_bytes(c) for c in self._store.heads()}
        self._heads: tuple[CID, ...] | None = None
        self._recent: dict[bytes, int] = {}
        self._count = self._store.event_count()
        self._seq = self._store.last_seq(self.peer_id)

    # -- reading ---------------------------------------------------------------------------
    def heads(self) -> tuple[CID, ...]:
        """Current heads, sorted by their binary CID."""
        if self._heads is None:
            self._heads = tuple(self._head_set[k] for k in sorted(self._head_set))
        return self._heads

    def get_hash(self) -> str:
        """sha256 hex over the sorted heads' binary CIDs (self-delimiting, so concatenated)."""
        return hashlib.sha256(b"".join(cid_raw(c) for c in self.heads())).hexdigest()

    def db_bytes(self) -> int:
        """Bytes the clock's SQLite file takes on disk, its write-ahead log and shared-memory
        index included (a few stat calls; 0 for an in-memory store)."""
        path = getattr(self._store, "path", None)
        if path is None or str(path) == ":memory:":
            return 0
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{path}{suffix}").st_size
            except OSError:
                continue
        return total

    def __len__(self) -> int:
        return self._count

    def has(self, cid: CID) -> bool:
        """Whether the block is stored here (an event or a plain block), committed or queued."""
        key = cid_raw(cid)
        w = self._writer
        return key in w.events or key in w.blocks or self._store.has_block(key)

    def has_event(self, cid: CID) -> bool:
        """Whether ``cid`` is an applied event (stored with all its ancestors)."""
        return self._has_event_raw(cid_raw(cid))

    def get_block(self, cid: CID) -> bytes | None:
        return self._get_block_raw(cid_raw(cid))

    def get_event(self, cid: CID) -> Event | None:
        row = self._event_row(cid_raw(cid))
        return None if row is None else load_stored_event(cid, row[2], row[1])

    def event_height(self, cid: CID) -> int | None:
        """Height of an applied event, None if it is not one."""
        return self._event_height_raw(cid_raw(cid))

    def events(self) -> Iterator[Event]:
        """Every event in application order (each after its parents), heights set.

        Includes queued, not yet committed events; reads on the calling thread (see
        ``events_async`` for a node's event loop)."""
        last, seen = 0, set()
        while True:
            rows, last, done = _read_rows(self._store, self._writer, last, READ_CHUNK, seen)
            for raw, height, data, stub in rows:
                yield _stored(raw, height, data, stub)
            if done:
                return

    async def events_async(self, chunk: int = READ_CHUNK) -> AsyncIterator[Event]:
        """``events()`` with the reading and decoding in a worker thread, ``chunk`` at a time.

        For loading a large clock from the event loop (the fold itself stays with the caller)."""
        import trio

        last, seen = 0, set()
        while True:
            events, last, done = await trio.to_thread.run_sync(self._read_events_chunk, last, chunk, seen)
            for event in events:
                yield event
            if done:
                return

    def missing(self) -> set[CID]:
        """Parents that held orphans name and this clock has not got."""
        return self._orphans.missing()

    def orphan_count(self) -> int:
        return len(self._orphans)

    @property
    def writer_error(self) -> BaseException | None:
        """Why the writer thread stopped, or None while it runs (see ``watch_writer``)."""
        return self._writer.error

    @property
    def pending_writes(self) -> int:
        """Rows queued to the writer and not committed yet."""
        return self._writer.last_queued - self._writer.committed

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event the moment it is applied (local or merged), in
        application order — a causal order. A consumer that folds events this way never sees a
        child before its parents, even when a merge is applied in slices and a local append
        lands between them (its parents are then merged events)."""
        self._listeners.append(listener)

    # -- writing ---------------------------------------------------------------------------
    def append(self, ops: list[dict[str, Any]], durable: bool = True) -> Event:
        """Write a local event over all current heads.

        ``durable=True``: blocks the caller until the event is fsynced (prefer
        ``append_async`` on an event loop). ``durable=False``: returns at once; the event is
        visible to every read here immediately and committed in the writer's next batch."""
        event, n = self._append(ops, durable)
        if durable:
            self._writer.wait(n)
        return event

    async def append_async(self, ops: list[dict[str, Any]], durable: bool = True) -> Event:
        """``append`` for trio: with ``durable=True`` it returns only after the fsync, without
        blocking the loop. Signing stays on the loop (tens of µs; it needs the current heads).

        If the caller is cancelled while waiting, the event is still appended and will be
        committed; only the confirmation is lost."""
        event, n = self._append(ops, durable)
        if durable:
            await self._writer.wait_async(n)
        return event

    def _append(self, ops: list[dict[str, Any]], durable: bool) -> tuple[Event, int]:
        check_ops(ops)
        if len(ops) > self.config.max_ops_per_event:
            raise ValueError(f"{len(ops)} ops exceed max_ops_per_event="
                             f"{self.config.max_ops_per_event}")
        event = create_event(self.identity, self.heads(), self._seq + 1, ops)
        if len(event.data) > self.config.max_block_bytes:
            raise ValueError(f"event of {len(event.data)} bytes exceeds max_block_bytes="
                             f"{self.config.max_block_bytes}")
        result = MergeResult()
        self._apply(event, result, durable)
        return result.applied[0], self._last_write

    def add_blocks(self, blocks: Iterable[tuple[CID, bytes]]) -> MergeResult:
        """Merge foreign event blocks in any order; see the module doc for the guarantees.

        Verifies on the calling thread (prefer ``add_blocks_async`` on an event loop); the rows
        are queued to the writer (not durable: peers can resend them)."""
        result = MergeResult()
        for cid, data in blocks:
            if self._known(cid):
                continue
            try:
                event = decode_event(cid, data, self.config.max_block_bytes)
            except InvalidBlockError as exc:
                result.rejected.append((cid, exc.reason))
                continue
            self._apply(event, result, durable=False)
        return self._finish_merge(result)

    async def add_blocks_async(self, blocks: Iterable[tuple[CID, bytes]],
                               chunk: int = VERIFY_CHUNK) -> MergeResult:
        """``add_blocks`` for trio: same result, but verification runs in a worker thread,
        ``chunk`` blocks at a time, and applying yields to the loop every ``APPLY_SLICE`` events.

        Other tasks may append or merge between chunks; that is safe (merge is set union, every
        event is re-checked when applied). When more than ``MAX_PENDING_BYTES`` are queued for
        the writer, it waits for the writer to catch up (memory stays bounded)."""
        import trio

        result = MergeResult()
        items = list(blocks)
        for start in range(0, len(items), chunk):
            part = [(cid, data) for cid, data in items[start:start + chunk]
                    if not self._known(cid)]
            if not part:
                await trio.lowlevel.checkpoint()
                continue
            verified = await trio.to_thread.run_sync(self._verify_chunk, part)
            stack: list[Event] = []
            for (cid, _), item in zip(part, verified):
                if isinstance(cid, CID) and self._seen_here(cid_raw(cid)):
                    continue  # arrived meanwhile (earlier in this chunk): as add_blocks skips it
                if isinstance(item, Event):
                    stack.append(item)
                    while stack:  # one block at a time, in arrival order, sliced
                        self._drain(stack, result, durable=False, limit=APPLY_SLICE)
                        if stack:
                            await trio.lowlevel.checkpoint()
                else:
                    result.rejected.append(item)
            if self._writer.pending_bytes > MAX_PENDING_BYTES:
                await self._writer.wait_async(self._writer.last_queued)
        return self._finish_merge(result)

    def _verify_chunk(self, part: list[tuple[CID, bytes]]) -> list[Event | tuple[CID, str]]:
        """Worker thread: decode_event on each block (pure: no clock state touched)."""
        out: list[Event | tuple[CID, str]] = []
        limit = self.config.max_block_bytes
        for cid, data in part:
            try:
                out.append(decode_event(cid, data, limit))
            except InvalidBlockError as exc:
                out.append((cid, exc.reason))
            time.sleep(0)  # hand the GIL over: the loop thread should not wait a switch interval
        return out

    def _finish_merge(self, result: MergeResult) -> MergeResult:
        result.missing = self._orphans.missing()
        if result.rejected:
            log.warning("rejected clock blocks", count=len(result.rejected),
                        first=str(result.rejected[0][0]), reason=result.rejected[0][1])
        return result

    def update(self, other: MerkleClock) -> list[Event]:
        """Pull every event ``other`` has that this clock lacks (in-process merge)."""
        wanted: dict[bytes, tuple[int, CID, bytes]] = {}
        stack = list(other.heads())
        while stack:
            cid = stack.pop()
            key = cid_raw(cid)
            if key in wanted or self._has_event_raw(key):
                continue  # an applied event implies all its ancestors are applied
            row = other._event_row(key)
            if row is None:
                continue
            wanted[key] = (row[0], cid, row[2])
            stack.extend(event_parents(row[2]))
        blocks = [(cid, data) for _, cid, data in sorted(wanted.values(), key=lambda w: w[0])]
        return self.add_blocks(blocks).applied

    def put_block(self, obj: Any, durable: bool = True) -> CID:
        """Store a plain (unsigned) DAG-CBOR block, e.g. a large result; returns its CID.

        ``durable=True`` blocks until fsynced (see ``put_block_async``)."""
        cid, n = self._put_block(obj, durable)
        if durable:
            self._writer.wait(n)
        return cid

    async def put_block_async(self, obj: Any, durable: bool = True) -> CID:
        """``put_block`` for trio: waits for the fsync without blocking the loop."""
        cid, n = self._put_block(obj, durable)
        if durable:
            await self._writer.wait_async(n)
        return cid

    def _put_block(self, obj: Any, durable: bool) -> tuple[CID, int]:
        try:
            data = codec.encode(obj)
        except codec.CodecError as exc:
            raise ValueError(f"not DAG-CBOR encodable: {exc}") from exc
        if len(data) > self.config.max_block_bytes:
            raise ValueError(f"block of {len(data)} bytes exceeds max_block_bytes="
                             f"{self.config.max_block_bytes}")
        cid = block_cid(data)
        return cid, self._writer.queue_block(cid_raw(cid), data, durable)

    def add_raw_block(self, cid: CID, data: bytes) -> None:
        """Store a fetched plain block after checking its hash (sha2-256) and size."""
        if not isinstance(cid, CID) or not isinstance(data, bytes):
            raise InvalidBlockError("cid must be a CID and data bytes")
        if len(data) > self.config.max_block_bytes:
            raise InvalidBlockError(f"block of {len(data)} bytes exceeds the "
                                    f"{self.config.max_block_bytes}-byte limit")
        if not matches_sha256(cid, data):
            raise InvalidBlockError(f"bytes do not hash to {cid} (only sha2-256 CIDv1 accepted)")
        self._writer.queue_block(cid_raw(cid), data, durable=False)  # refetchable from peers

    # -- pruned events (p2p.clock.stub, docs/compaction.md §5-§6) ------------------------
    def stub(self, cid: CID) -> bytes | None:
        """The stub of a pruned event (here since pruned, or adopted by a joiner), else None."""
        key = cid_raw(cid)
        pending = self._writer.events.get(key)
        if pending is not None:
            return pending.stub
        return self._store.stub(key)

    def pruned_count(self) -> int:
        """Events held here as stubs only (committed, and adopted ones still queued)."""
        queued = sum(1 for p in list(self._writer.events.values()) if p.stub is not None)
        return self._store.pruned_count() + queued

    async def prune_async(self, stubs: list[Stub]) -> int:
        """Delete stored events' blocks, keeping their stubs, in one durable transaction; returns
        how many. The caller (the compactor) judged them droppable; heads are never pruned (our
        next event names them, and they are what peers ask for first)."""
        heads = self._head_set
        items = [(s.key, s.encode()) for s in stubs if s.key not in heads and s.key not in self._writer.events]
        if not items:
            return 0
        await self._writer.wait_async(self._writer.queue_prune(items))
        return len(items)

    def scan_events(self, select: Callable[[Any], Any]) -> list[tuple[CID, str, int, int, tuple[CID, ...], Any]]:
        """Committed events whose block is here and whose ops ``select`` picks (it returns
        something not None): (cid, author, seq, height, parents, what select returned). Blocks
        the calling thread (run it in a worker thread): it decodes every retained event."""
        out = []
        last = 0
        with self._reader() as rd:
            while True:
                rows = rd.live_rows_after(last, READ_CHUNK)
                if not rows:
                    return out
                last = rows[-1][0]
                for _, raw, author, seq, height, data in rows:
                    node = codec.decode(data)
                    got = select(node.get("ops"))
                    if got is not None:
                        out.append((cid_from_bytes(raw), author, seq, height, tuple(node["parents"]), got))
                time.sleep(0)  # let the event loop's thread have the GIL between chunks

    def add_stubs(self, stubs: Iterable[Stub]) -> MergeResult:
        """Adopt pruned events by their stubs (a joiner's: the peers that served them pruned
        the blocks). Each goes the way of an event: held as an orphan until its parents are
        here, then applied (its height must be its parents' + 1), a head until its children
        (which the peers hold: they never prune a head) arrive. The caller
        decided to trust them (``clock.checkpoint_quorum``)."""
        result = MergeResult()
        for stub in stubs:
            if self._known(stub.cid):
                continue
            self._apply(stub_event(stub), result, durable=False)
        return self._finish_merge(result)

    # -- result expiry (p2p.compaction.expiry) ---------------------------------------------
    def expiry(self) -> dict[str, tuple[float, bool]]:
        """workflow id -> (when this peer dropped it, wall clock; whether its results expired)."""
        return self._store.expiry()

    def note_dropped_at(self, workflow_id: str, at: float) -> None:
        self._writer.queue_call("note_dropped_at", workflow_id, at)

    async def expire_async(self, workflow_id: str, cids: list[bytes]) -> None:
        """Delete result blocks of a dropped workflow and mark it expired, durably."""
        await self._writer.wait_async(self._writer.queue_call("expire", workflow_id, list(cids)))

    def put_dropped(self, workflow_id: str, data: bytes) -> None:
        """Record that this peer dropped a compacted workflow's records (``State.drop``); queued
        after the snapshot blocks stored before it, committed durably."""
        self._writer.queue_dropped(workflow_id, data)

    def dropped(self) -> list[tuple[str, bytes]]:
        """Every dropped workflow's record (committed ones), for a restart to file before folding."""
        return self._store.dropped()

    def flush(self, durable: bool = True) -> None:
        """Block until everything written so far is committed (and fsynced if durable)."""
        self._writer.wait(self._writer.barrier(durable))

    async def flush_async(self, durable: bool = True) -> None:
        """``flush`` without blocking the loop."""
        await self._writer.wait_async(self._writer.barrier(durable))

    # -- serving ---------------------------------------------------------------------------
    async def collect_blocks(self, cids: list[bytes], ancestors: int, max_blocks: int,
                             budget_bytes: int, stubs: list[bytes] | None = None) -> list[tuple[bytes, bytes]]:
        """Blocks for a catch-up request, read in a worker thread on a read-only connection.

        Breadth-first from ``cids`` (binary CIDs, in order; malformed or unknown ones are
        skipped, duplicates once); when ``ancestors > 0`` the walk continues through the parents
        of every event it returns (plain blocks have none). Stops after ``max_blocks`` blocks, or
        before the first block that would take the total of ``len(data) + BLOCK_OVERHEAD`` past
        ``budget_bytes``. Returns ``(binary cid, data)`` pairs; sees queued writes too. This is
        what ``Network._answer`` does for a ``BlocksRequest``: call it with
        ``req.cids[:max_blocks_per_request]``, ``req.ancestors``,
        ``max_blocks_per_request + min(req.ancestors, CATCH_UP_BLOCKS)`` and
        ``max_frame_bytes - 4096``. ``stubs``: see ``collect_blocks_sync``."""
        import trio

        return await trio.to_thread.run_sync(self.collect_blocks_sync, list(cids), ancestors,
                                             max_blocks, budget_bytes, stubs)

    def collect_blocks_sync(self, cids: list[bytes], ancestors: int, max_blocks: int,
                            budget_bytes: int, stubs: list[bytes] | None = None) -> list[tuple[bytes, bytes]]:
        """``collect_blocks`` on the calling thread (any thread: it uses a reader connection).

        ``stubs``, when given, receives the stubs of the pruned events the walk met (asked for,
        or ancestors of one returned): what a joiner needs in their place (``p2p.clock.stub``);
        they count towards ``max_blocks`` and the budget like blocks. Without it pruned events
        are skipped as unknown ones are."""
        from collections import deque

        w = self._writer
        out: list[tuple[bytes, bytes]] = []
        n_stubs = 0
        seen: set[bytes] = set()
        queue = deque(cids)
        walk = ancestors > 0
        with self._reader() as rd:
            while queue and len(out) + n_stubs < max_blocks:
                raw = queue.popleft()
                if raw in seen:
                    continue
                seen.add(raw)
                try:
                    key = cid_raw(cid_from_bytes(raw))
                except Exception:  # noqa: BLE001 - not a CID
                    continue
                stub: bytes | None = None
                pending = w.events.get(key)
                if pending is not None:
                    stub, data, is_event = pending.stub, pending.data, True
                else:
                    block = w.blocks.get(key)
                    if block is not None:
                        data, is_event = block.data, key in w.events or rd.has_event(key)
                    else:
                        row = rd.block_and_kind(key)
                        if row is None:
                            stub = rd.stub(key) if stubs is not None else None
                            if stub is None:
                                continue
                        else:
                            data, is_event = row
                if stub is not None:
                    # a pruned event: its stub stands in, and the walk goes on below it (events
                    # kept below pruned ones — adverts — are reached only through it)
                    if stubs is None:
                        continue
                    if budget_bytes - len(stub) - BLOCK_OVERHEAD < 0:
                        break
                    budget_bytes -= len(stub) + BLOCK_OVERHEAD
                    stubs.append(stub)
                    n_stubs += 1
                    if walk:
                        queue.extend(cid_raw(p) for p in decode_stub(stub).parents)
                    continue
                if budget_bytes - len(data) - BLOCK_OVERHEAD < 0:
                    break
                budget_bytes -= len(data) + BLOCK_OVERHEAD
                out.append((raw, data))
                if walk and is_event:
                    queue.extend(cid_raw(p) for p in event_parents(data))
        return out

    # -- life ------------------------------------------------------------------------------
    async def watch_writer(self) -> NoReturn:
        """Run in the node's nursery: raises ClockWriterError the moment the writer thread
        fails, so the node stops with a clear message instead of running on with writes that
        never reach the disk. Never returns otherwise."""
        import trio

        token = trio.lowlevel.current_trio_token()
        failed = trio.Event()

        def on_fatal(_exc: BaseException) -> None:
            try:
                token.run_sync_soon(failed.set)
            except trio.RunFinishedError:
                pass

        self._writer.on_fatal(on_fatal)
        try:
            await failed.wait()
        finally:
            self._writer.remove_on_fatal(on_fatal)
        raise ClockWriterError(f"clock writer for {self._store.path} failed: "
                               f"{self._writer.error!r}; stopping the node") from self._writer.error

    def close(self) -> None:
        """Commit and fsync everything queued, stop the writer, close every connection.

        Raises ClockWriterError if the writer had failed (queued rows were lost)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            with self._readers_lock:
                readers, self._readers = self._readers, []
            for rd in readers:
                rd.close()
            self._store.close()

    def __enter__(self) -> MerkleClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    # Every read looks at the writer's overlay first, then SQLite: a row leaves the overlay only
    # after its commit, so this order never misses a row (see ``writer``).
    def _has_event_raw(self, key: bytes) -> bool:
        return key in self._recent or key in self._writer.events or self._store.has_event(key)

    def _event_height_raw(self, key: bytes) -> int | None:
        height = self._recent.get(key)
        if height is not None:
            return height
        pending = self._writer.events.get(key)
        return pending.height if pending is not None else self._store.event_height(key)

    def _get_block_raw(self, key: bytes) -> bytes | None:
        w = self._writer
        pending = w.events.get(key) or w.blocks.get(key)
        if pending is not None:
            return None if getattr(pending, "stub", None) is not None else pending.data
        return self._store.get_block(key)

    def _event_row(self, key: bytes) -> tuple[int, int, bytes] | None:
        """(ord, height, data) of an applied event whose block is here (not a pruned one);
        queued events sort after stored ones."""
        pending = self._writer.events.get(key)
        if pending is not None:
            if pending.stub is not None:
                return None
            return (_PENDING_ORD + pending.n, pending.height, pending.data)
        return self._store.event_row(key)

    def _seen_here(self, key: bytes) -> bool:
        """Applied or held by this process lately (no SQL): what became known since a check
        against SQLite can only have come through here."""
        return key in self._recent or key in self._writer.events or key in self._orphans

    def _known(self, cid: object) -> bool:
        """An applied event or a held orphan: nothing to verify."""
        try:
            key = cid_raw(cid)  # type: ignore[arg-type]
        except Exception:
            return False  # not a CID: decode_event will reject it
        return key in self._orphans or self._has_event_raw(key)

    @contextmanager
    def _reader(self) -> Iterator[ClockStore]:
        """A read-only connection for the current (worker) thread, returned to a small pool."""
        with self._readers_lock:
            rd = self._readers.pop() if self._readers else None
        if rd is None:
            rd = ClockStore(self._store.path, readonly=True, check_same_thread=False)
        try:
            yield rd
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._readers) < _IDLE_READERS
                if keep:
                    self._readers.append(rd)
            if not keep:
                rd.close()

    def _read_events_chunk(self, last: int, chunk: int, seen: set[bytes]) -> tuple[list[Event], int, bool]:
        with self._reader() as rd:
            rows, last, done = _read_rows(rd, self._writer, last, chunk, seen)
        return [_stored(raw, h, data, stub) for raw, h, data, stub in rows], last, done

    def _apply(self, first: Event, result: MergeResult, durable: bool) -> None:
        """Store ``first`` if its parents are known, else hold it; then wake its orphans."""
        self._drain([first], result, durable, limit=None)

    def _drain(self, stack: list[Event], result: MergeResult, durable: bool,
               limit: int | None) -> None:
        """Apply events from ``stack`` (and the orphans each releases), at most ``limit``."""
        done = 0
        recent = self._recent
        while stack and (limit is None or done < limit):
            event = stack.pop()
            key = cid_raw(event.cid)
            if self._has_event_raw(key):
                continue
            done += 1
            height = -1
            unknown: dict[bytes, CID] = {}
            parent_keys = [cid_raw(p) for p in event.parents]
            for parent, pkey in zip(event.parents, parent_keys):
                h = self._event_height_raw(pkey)
                if h is None:
                    unknown[pkey] = parent
                elif h > height:
                    height = h
            if unknown:
                self._orphans.add(event, key, unknown.keys())
                stack.extend(self._stored_unapplied(unknown))
                continue
            height += 1
            if event.vv is not None:  # a stub (p2p.clock.stub): no block
                if event.height != height:
                    result.rejected.append((event.cid, f"stub height {event.height} is not its parents' + 1 ({height})"))
                    continue
                self._last_write = self._writer.queue_stub(key, event.data, event.author, event.seq, height,
                                                           parent_keys)
            else:
                # queue first: if the writer has failed this raises and nothing here changes
                self._last_write = self._writer.queue_event(key, event.data, event.author, event.seq,
                                                            height, parent_keys, durable)
            for pkey in parent_keys:
                self._head_set.pop(pkey, None)
            self._head_set[key] = event.cid
            self._heads = None
            recent[key] = height
            if len(recent) > RECENT_EVENTS:
                del recent[next(iter(recent))]
            self._count += 1
            if event.author == self.peer_id and event.seq > self._seq:
                self._seq = event.seq
            applied = event.with_height(height)
            result.applied.append(applied)
            for listener in self._listeners:
                try:
                    listener(applied)
                except Exception:  # a listener's bug must not leave the clock half-applied
                    log.exception("clock listener failed", cid=str(event.cid))
            stack.extend(reversed(self._orphans.parent_applied(key)))

    def _stored_unapplied(self, cids: dict[bytes, CID]) -> list[Event]:
        """Parents present as plain blocks (via add_raw_block) but never applied as events."""
        found: list[Event] = []
        for key, cid in cids.items():
            if key in self._orphans:
                continue
            data = self._get_block_raw(key)
            if data is None:
                continue
            try:
                found.append(decode_event(cid, data, self.config.max_block_bytes))
            except InvalidBlockError:
                continue
        return found


def _stored(raw: bytes, height: int, data: bytes | None, stub: bytes | None) -> Event:
    """A stored event as read back: from its block, or from its stub when it was pruned."""
    if data is None:
        assert stub is not None
        return stub_event(decode_stub(stub))
    return load_stored_event(cid_from_bytes(raw), data, height)


Row = tuple[bytes, int, "bytes | None", "bytes | None"]  # (cid, height, data, stub)


def _read_rows(store: ClockStore, writer: ClockWriter, last: int, chunk: int,
               seen: set[bytes]) -> tuple[list[Row], int, bool]:
    """One step of reading every event in application order: stored rows after ``last``, and
    at the end the queued ones. Returns (rows as (cid, height, data, stub), new last, done);
    a pruned event has a stub and no data.

    At the end, under the writer's lock (so no row can leave the overlay meanwhile), it takes
    the queued events and re-reads what was committed since: a row missing from the overlay
    was committed before the lock was taken, so the re-read finds it. ``seen`` drops rows
    read twice (committed and still in the overlay)."""
    rows = store.rows_after(last, chunk)
    if rows:
        out = [(cid, h, d, st) for _, cid, h, d, st in rows if cid not in seen and (d is not None or st is not None)]
        seen.update(r[1] for r in rows)
        return out, rows[-1][0], False
    with writer.lock:
        queued = sorted(writer.events.items(), key=lambda kv: kv[1].n)
        late = store.rows_after(last, 1 << 62)
    out = [(cid, h, d, st) for _, cid, h, d, st in late if cid not in seen and (d is not None or st is not None)]
    seen.update(r[1] for r in late)
    for cid, p in queued:
        if cid not in seen:
            seen.add(cid)
            out.append((cid, p.height, None if p.stub is not None else p.data, p.stub))
    return out, (late[-1][0] if late else last), True
