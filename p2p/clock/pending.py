"""Orphans: verified events whose parents have not arrived yet.

A peer walking a remote DAG receives children before parents (it fetches heads first), so the
clock holds verified orphans here and applies them the moment their last missing parent is
applied. The pool lives in memory only — a restart forgets orphans and the DAG walk refetches
them, which is cheap next to making the store handle unapplied events. It is bounded by count
and bytes; beyond that the oldest orphans are dropped (again: they are refetched later).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from multiformats import CID

from p2p.clock.cids import cid_from_bytes, cid_raw
from p2p.clock.event import Event, load_stored_event, stub_event
from p2p.clock.stub import decode_stub

DEFAULT_MAX_ORPHANS = 100_000
DEFAULT_MAX_ORPHAN_BYTES = 256 << 20


class OrphanPool:
    """Orphans, what each still waits for, and the reverse index parent → waiting children.

    Compact on purpose: it holds only bytes and tuples of bytes (binary CIDs, block data), no
    decoded ``Event``. A deep catch-up arrives children first, so the pool can hold tens of
    thousands of events; decoded, each is dozens of objects that the cyclic GC must traverse on
    every full collection (measured: 100-170 ms pauses with 20,000 decoded orphans, long enough
    to stall the event loop), and hashing ``CID`` objects costs ~6 µs against a fraction of that
    for ``bytes``. Events are verified before they get here and re-decoded (decode only, no
    checks: ``load_stored_event``) when released."""

    def __init__(self, max_orphans: int = DEFAULT_MAX_ORPHANS,
                 max_bytes: int = DEFAULT_MAX_ORPHAN_BYTES) -> None:
        self._max_orphans = max_orphans
        self._max_bytes = max_bytes
        self._orphans: OrderedDict[bytes, bytes] = OrderedDict()  # key -> block data
        self._needs: dict[bytes, tuple[bytes, ...]] = {}          # key -> parents still missing
        self._waiting: dict[bytes, tuple[bytes, ...]] = {}        # parent -> children waiting
        self._stubs: set[bytes] = set()  # orphans that are pruned events' stubs (p2p.clock.stub), not blocks
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._orphans)

    def __contains__(self, cid: object) -> bool:
        """``cid``: a binary CID or a ``CID``."""
        if isinstance(cid, CID):
            cid = cid_raw(cid)
        return cid in self._orphans

    def add(self, event: Event, key: bytes, unknown_parents: Iterable[bytes]) -> list[bytes]:
        """Hold ``event`` (binary CID ``key``) until ``unknown_parents`` (binary CIDs) are
        applied; returns the binary CIDs evicted to make room."""
        if key in self._orphans:
            return []
        self._orphans[key] = event.data
        if event.vv is not None:
            self._stubs.add(key)
        needs = tuple(unknown_parents)
        self._needs[key] = needs
        for pkey in needs:
            self._waiting[pkey] = self._waiting.get(pkey, ()) + (key,)
        self._bytes += len(event.data)
        evicted: list[bytes] = []
        while len(self._orphans) > 1 and (len(self._orphans) > self._max_orphans
                                          or self._bytes > self._max_bytes):
            oldest = next(iter(self._orphans))
            self._remove(oldest)
            evicted.append(oldest)
        return evicted

    def _remove(self, key: bytes) -> bytes:
        data = self._orphans.pop(key)
        self._bytes -= len(data)
        self._stubs.discard(key)
        for pkey in self._needs.pop(key):
            children = self._waiting.get(pkey)
            if children is not None:
                rest = tuple(c for c in children if c != key)
                if rest:
                    self._waiting[pkey] = rest
                else:
                    del self._waiting[pkey]
        return data

    def parent_applied(self, parent: bytes) -> list[Event]:
        """Note ``parent`` (binary CID) as applied; return (and release) the orphans now fully
        resolved, in binary-CID order (deterministic within one wake-up)."""
        children = self._waiting.pop(parent, None)
        if children is None:
            return []
        ready: list[Event] = []
        for child in sorted(set(children)):
            needs = tuple(p for p in self._needs[child] if p != parent)
            self._needs[child] = needs
            if not needs:
                stub = child in self._stubs
                data = self._remove(child)
                ready.append(stub_event(decode_stub(data), data) if stub else load_stored_event(cid_from_bytes(child), data, 0))
        return ready

    def missing(self) -> set[CID]:
        """Parents some orphan waits for that are not themselves held here."""
        return {cid_from_bytes(p) for p in self._waiting if p not in self._orphans}
