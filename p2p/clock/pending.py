"""Orphans: verified events whose parents have not arrived yet.

A peer walking a remote DAG receives children before parents (it fetches heads first), so the
clock holds verified orphans here and applies them the moment their last missing parent is
applied. The pool lives in memory only — a restart forgets orphans and the DAG walk refetches
them, which is cheap next to making the store handle unapplied events. It is bounded by count
and bytes; beyond that the oldest orphans are dropped (again: they are refetched later).
"""

from __future__ import annotations

from collections import OrderedDict

from multiformats import CID

from p2p.clock.cids import cid_raw
from p2p.clock.event import Event

DEFAULT_MAX_ORPHANS = 100_000
DEFAULT_MAX_ORPHAN_BYTES = 256 << 20


class OrphanPool:
    """Orphans, what each still waits for, and the reverse index parent → waiting children."""

    def __init__(self, max_orphans: int = DEFAULT_MAX_ORPHANS,
                 max_bytes: int = DEFAULT_MAX_ORPHAN_BYTES) -> None:
        self._max_orphans = max_orphans
        self._max_bytes = max_bytes
        self._orphans: OrderedDict[CID, Event] = OrderedDict()
        self._needs: dict[CID, set[CID]] = {}
        self._waiting: dict[CID, set[CID]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._orphans)

    def __contains__(self, cid: object) -> bool:
        return cid in self._orphans

    def add(self, event: Event, unknown_parents: set[CID]) -> list[CID]:
        """Hold ``event`` until ``unknown_parents`` are applied; returns CIDs evicted to make room."""
        if event.cid in self._orphans:
            return []
        self._orphans[event.cid] = event
        self._needs[event.cid] = set(unknown_parents)
        for parent in unknown_parents:
            self._waiting.setdefault(parent, set()).add(event.cid)
        self._bytes += len(event.data)
        evicted: list[CID] = []
        while len(self._orphans) > 1 and (len(self._orphans) > self._max_orphans
                                          or self._bytes > self._max_bytes):
            oldest = next(iter(self._orphans))
            self._remove(oldest)
            evicted.append(oldest)
        return evicted

    def _remove(self, cid: CID) -> Event:
        event = self._orphans.pop(cid)
        self._bytes -= len(event.data)
        for parent in self._needs.pop(cid):
            children = self._waiting.get(parent)
            if children is not None:
                children.discard(cid)
                if not children:
                    del self._waiting[parent]
        return event

    def parent_applied(self, parent: CID) -> list[Event]:
        """Note ``parent`` as applied; return (and release) the orphans now fully resolved."""
        children = self._waiting.pop(parent, None)
        if not children:
            return []
        ready: list[Event] = []
        for child in sorted(children, key=cid_raw):  # deterministic order within one wake-up
            needs = self._needs[child]
            needs.discard(parent)
            if not needs:
                ready.append(self._remove(child))
        return ready

    def missing(self) -> set[CID]:
        """Parents some orphan waits for that are not themselves held here."""
        return {p for p in self._waiting if p not in self._orphans}
