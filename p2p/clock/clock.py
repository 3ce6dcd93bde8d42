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
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
)
from p2p.clock.pending import DEFAULT_MAX_ORPHAN_BYTES, DEFAULT_MAX_ORPHANS, OrphanPool
from p2p.clock.store import ClockStore
from p2p.config import ClockConfig
from p2p.identity import Identity

log = structlog.get_logger("p2p.clock")


@dataclass
class MergeResult:
    """What one merge did: events applied (causal order), parents still needed, blocks refused."""

    applied: list[Event] = field(default_factory=list)
    missing: set[CID] = field(default_factory=set)
    rejected: list[tuple[CID, str]] = field(default_factory=list)


class MerkleClock:
    """The local replica of the clock, backed by one SQLite file."""

    def __init__(self, store: ClockStore, identity: Identity, config: ClockConfig,
                 max_orphans: int = DEFAULT_MAX_ORPHANS,
                 max_orphan_bytes: int = DEFAULT_MAX_ORPHAN_BYTES) -> None:
        self._store = store
        self.identity = identity
        self.peer_id: str = identity.peer_id_str
        self.config = config
        self._orphans = OrphanPool(max_orphans, max_orphan_bytes)
        self._load_memo()

    @classmethod
    def open(cls, path: Path, identity: Identity, config: ClockConfig | None = None,
             *, max_orphans: int = DEFAULT_MAX_ORPHANS,
             max_orphan_bytes: int = DEFAULT_MAX_ORPHAN_BYTES) -> MerkleClock:
        """Open (or create) the clock stored in the SQLite file at ``path``."""
        return cls(ClockStore(Path(path)), identity, config or ClockConfig(), max_orphans, max_orphan_bytes)

    def _load_memo(self) -> None:
        """In-memory copies of small derived values; reloaded from SQLite after a rollback."""
        self._heads: tuple[CID, ...] = tuple(cid_from_bytes(c) for c in self._store.heads())
        self._count = self._store.event_count()
        self._seq = self._store.last_seq(self.peer_id)

    # -- reading ---------------------------------------------------------------------------
    def heads(self) -> tuple[CID, ...]:
        """Current heads, sorted by their binary CID."""
        return self._heads

    def get_hash(self) -> str:
        """sha256 hex over the sorted heads' binary CIDs (self-delimiting, so concatenated)."""
        return hashlib.sha256(b"".join(cid_raw(c) for c in self._heads)).hexdigest()

    def __len__(self) -> int:
        return self._count

    def has(self, cid: CID) -> bool:
        """Whether the block is stored here (an event or a plain block)."""
        return self._store.has_block(cid_raw(cid))

    def has_event(self, cid: CID) -> bool:
        """Whether ``cid`` is an applied event (stored with all its ancestors)."""
        return self._store.has_event(cid_raw(cid))

    def get_block(self, cid: CID) -> bytes | None:
        return self._store.get_block(cid_raw(cid))

    def get_event(self, cid: CID) -> Event | None:
        row = self._store.event_row(cid_raw(cid))
        return None if row is None else load_stored_event(cid, row[2], row[1])

    def events(self) -> Iterator[Event]:
        """Every event in application order (each after its parents), heights set."""
        for raw, height, data in self._store.iter_events():
            yield load_stored_event(cid_from_bytes(raw), data, height)

    def missing(self) -> set[CID]:
        """Parents that held orphans name and this clock has not got."""
        return self._orphans.missing()

    def orphan_count(self) -> int:
        return len(self._orphans)

    # -- writing ---------------------------------------------------------------------------
    def append(self, ops: list[dict[str, Any]], durable: bool = True) -> Event:
        """Write a local event over all current heads. Durable (fsynced) when this returns, or
        with ``durable=False`` safe from a process kill but not a power cut (see ``store``)."""
        check_ops(ops)
        if len(ops) > self.config.max_ops_per_event:
            raise ValueError(f"{len(ops)} ops exceed max_ops_per_event="
                             f"{self.config.max_ops_per_event}")
        event = create_event(self.identity, self._heads, self._seq + 1, ops)
        if len(event.data) > self.config.max_block_bytes:
            raise ValueError(f"event of {len(event.data)} bytes exceeds max_block_bytes="
                             f"{self.config.max_block_bytes}")
        result = MergeResult()
        with self._writing(durable):
            self._apply(event, result)
        return result.applied[0]

    def add_blocks(self, blocks: Iterable[tuple[CID, bytes]]) -> MergeResult:
        """Merge foreign event blocks in any order; see the module doc for the guarantees."""
        result = MergeResult()
        with self._writing(durable=False):  # refetchable from peers
            for cid, data in blocks:
                if (isinstance(cid, CID) and cid in self._orphans) or self._is_event(cid):
                    continue
                try:
                    event = decode_event(cid, data, self.config.max_block_bytes)
                except InvalidBlockError as exc:
                    result.rejected.append((cid, exc.reason))
                    continue
                self._apply(event, result)
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
            if key in wanted or self._store.has_event(key):
                continue  # an applied event implies all its ancestors are applied
            row = other._store.event_row(key)
            if row is None:
                continue
            wanted[key] = (row[0], cid, row[2])
            stack.extend(event_parents(row[2]))
        blocks = [(cid, data) for _, cid, data in sorted(wanted.values(), key=lambda w: w[0])]
        return self.add_blocks(blocks).applied

    def put_block(self, obj: Any, durable: bool = True) -> CID:
        """Store a plain (unsigned) DAG-CBOR block, e.g. a large result; returns its CID."""
        try:
            data = codec.encode(obj)
        except codec.CodecError as exc:
            raise ValueError(f"not DAG-CBOR encodable: {exc}") from exc
        if len(data) > self.config.max_block_bytes:
            raise ValueError(f"block of {len(data)} bytes exceeds max_block_bytes="
                             f"{self.config.max_block_bytes}")
        cid = block_cid(data)
        with self._writing(durable):
            self._store.put_block(cid_raw(cid), data)
        return cid

    def add_raw_block(self, cid: CID, data: bytes) -> None:
        """Store a fetched plain block after checking its hash (sha2-256) and size."""
        if not isinstance(cid, CID) or not isinstance(data, bytes):
            raise InvalidBlockError("cid must be a CID and data bytes")
        if len(data) > self.config.max_block_bytes:
            raise InvalidBlockError(f"block of {len(data)} bytes exceeds the "
                                    f"{self.config.max_block_bytes}-byte limit")
        if not matches_sha256(cid, data):
            raise InvalidBlockError(f"bytes do not hash to {cid} (only sha2-256 CIDv1 accepted)")
        with self._writing(durable=False):  # refetchable from peers
            self._store.put_block(cid_raw(cid), data)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> MerkleClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _is_event(self, cid: object) -> bool:
        try:
            return self._store.has_event(cid_raw(cid))  # type: ignore[arg-type]
        except Exception:
            return False  # not a CID: decode_event will reject it

    @contextmanager
    def _writing(self, durable: bool = True) -> Iterator[None]:
        """A store transaction; on rollback, reload the in-memory heads/count/seq."""
        try:
            with self._store.transaction(durable):
                yield
        except BaseException:
            self._load_memo()
            raise

    def _apply(self, first: Event, result: MergeResult) -> None:
        """Store ``first`` if its parents are known, else hold it; then wake its orphans."""
        stack = [first]
        heads = set(self._heads)
        changed = False
        while stack:
            event = stack.pop()
            if self._store.has_event(cid_raw(event.cid)):
                continue
            heights: list[int] = []
            unknown: set[CID] = set()
            for parent in event.parents:
                height = self._store.event_height(cid_raw(parent))
                if height is None:
                    unknown.add(parent)
                else:
                    heights.append(height)
            if unknown:
                self._orphans.add(event, unknown)
                stack.extend(self._stored_unapplied(unknown))
                continue
            applied = event.with_height(1 + max(heights) if heights else 0)
            self._store.insert_event(cid_raw(event.cid), event.data, event.author, event.seq,
                                     applied.height, [cid_raw(p) for p in event.parents])
            heads.difference_update(event.parents)
            heads.add(event.cid)
            changed = True
            self._count += 1
            if event.author == self.peer_id and event.seq > self._seq:
                self._seq = event.seq
            result.applied.append(applied)
            stack.extend(reversed(self._orphans.parent_applied(event.cid)))
        if changed:
            self._heads = tuple(sorted(heads, key=cid_raw))

    def _stored_unapplied(self, cids: set[CID]) -> list[Event]:
        """Parents present as plain blocks (via add_raw_block) but never applied as events."""
        found: list[Event] = []
        for cid in cids:
            if cid in self._orphans:
                continue
            data = self._store.get_block(cid_raw(cid))
            if data is None:
                continue
            try:
                found.append(decode_event(cid, data, self.config.max_block_bytes))
            except InvalidBlockError:
                continue
        return found
