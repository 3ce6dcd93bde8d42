"""The pruner: delete the events a verified compaction made dead weight (docs/compaction.md §5).

Why a component of its own: dropping a compacted workflow's records (the compactor) frees
memory, but its events stay on disk — the SQLite file only grows, and every restart reads them
all to skip their ops. An event **all** of whose ops are about workflows this node dropped can
never change an answer again (every op about a dropped workflow is skipped, on this node, for
good). What the DAG still needs of it is its place: its parents, height and version vector. So
the pruner replaces its block by a stub (``p2p.clock.stub``): the ``events`` row stays, a restart
replays the stub (no ops), peers asking for the block get the stub.

Which events, exactly:

- every op is about a dropped workflow (an advert, a malformed op, or an op about any other
  workflow keeps the whole event: adverts weigh claims for ever, and the rest is live);
- it is not a head (our next event names our heads; peers ask for heads first);
- its author has not forked (the fold walks a forker's ancestry; stubs keep that walk intact,
  but a forker's sibling is where a peer's view and ours may differ, so we keep them whole);
- **every live peer already holds it**: the event is in the past of the newest event each live
  peer wrote (what it had folded then). Causal stability over the live view: a peer that is
  behind can still fetch the block from us. A peer that was away (not live) gets stubs when it
  comes back, and adopts them as a joiner does (``p2p.replication.replicator``).

A pass scans the retained events on a worker thread (decoding ops only), then judges the
candidates on the loop with the fold's version vectors. It runs when something was dropped
since the last pass, and again every ``interval_s`` while candidates were held back (heads, or
not yet held by every live peer): those re-judge the candidates held back, without a scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from p2p.clock.stub import MAX_STUB_ABOUT, Stub
from p2p.scheduler.state import raw_op_workflow

log = structlog.get_logger("p2p.compaction")

PRUNE_INTERVAL_S = 60.0


def dropped_only(dropped: frozenset[str]) -> Callable[[Any], tuple[str, ...] | None]:
    """The test a stored event's ops must pass to be prunable: the workflows they are about,
    when every op is about one of ``dropped`` (None otherwise). Runs on a worker thread."""

    def about(ops: Any) -> tuple[str, ...] | None:
        if not isinstance(ops, list) or not ops:
            return None
        wids: set[str] = set()
        for op in ops:
            wid = raw_op_workflow(op)
            if wid is None or wid not in dropped:
                return None
            wids.add(wid)
        if len(wids) > MAX_STUB_ABOUT:
            return None
        return tuple(sorted(wids))

    return about


@dataclass
class PruneStats:
    """What the pruner did (get_node_info.compaction)."""

    passes: int = 0
    pruned: int = 0  # events replaced by their stubs, since start
    held_back: int = 0  # candidates of the last pass still heads, or that some live peer may not hold yet
    waiting_for: list[str] = field(default_factory=list)  # live peers that held the last pass back


class Pruner:
    """Replaces the blocks of dead events by stubs (module doc)."""

    def __init__(self, scheduler: Any, clock: Any, peer_id: str, *, live_peers: Callable[[], Iterable[str]],
                 interval_s: float = PRUNE_INTERVAL_S, now: Callable[[], float] = time.monotonic) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.peer_id = peer_id
        self._live_peers = live_peers
        self.interval_s = interval_s
        self._now = now
        self.stats = PruneStats()
        self._last_dropped = -1  # len(state.dropped) at the last pass
        self._last_pass = float("-inf")
        # the last scan's candidates still held back: a pass with nothing newly dropped re-judges
        # them, without scanning the history again
        self._held: list[tuple[Any, str, int, int, tuple[Any, ...], tuple[str, ...]]] = []

    def info(self) -> dict[str, Any]:
        return {"pruned_events": self.stats.pruned, "stubs_held": self.clock.pruned_count(),
                "prune_held_back": self.stats.held_back, "prune_waiting_for": list(self.stats.waiting_for)}

    def due(self) -> bool:
        dropped = len(self.scheduler.state.dropped)
        if not dropped:
            return False
        if dropped != self._last_dropped:
            return True
        return self.stats.held_back > 0 and self._now() - self._last_pass >= self.interval_s

    async def step(self) -> int:
        """One pass when one is due (see the module doc); returns how many events it pruned."""
        if not self.due():
            return 0
        state = self.scheduler.state
        rescan = len(state.dropped) != self._last_dropped
        self._last_dropped = len(state.dropped)
        self._last_pass = self._now()
        self.stats.passes += 1
        if rescan:
            found = await trio.to_thread.run_sync(self.clock.scan_events, dropped_only(frozenset(state.dropped)))
        else:
            found = [c for c in self._held if self.clock.stub(c[0]) is None]
        stubs, held, waiting = self.judge(found)
        pruning = {bytes(s.cid) for s in stubs}
        self._held = [c for c in found if bytes(c[0]) not in pruning]
        self.stats.held_back, self.stats.waiting_for = held, sorted(waiting)
        n = await self.clock.prune_async(stubs) if stubs else 0
        self.stats.pruned += n
        if n or held:
            log.info("pruned dead events", pruned=n, held_back=held, waiting_for=sorted(waiting)[:8],
                     stubs_held=self.clock.pruned_count())
        return n

    def judge(self, found: list[tuple[Any, str, int, int, tuple[Any, ...], tuple[str, ...]]]) -> tuple[list[Stub], int, set[str]]:
        """The candidates every live peer holds, as stubs; plus how many were held back, and by
        whom. ``found``: (cid, author, seq, height, parents, about) of events whose ops are all
        about dropped workflows."""
        causal = self.scheduler.state._causal
        heads = {bytes(h) for h in self.clock.heads()}
        live = [p for p in set(self._live_peers()) if p != self.peer_id]
        seen_by = {p: causal.vv.get(causal.latest[p]) if p in causal.latest else None for p in live}
        stubs: list[Stub] = []
        held = 0
        waiting: set[str] = set()
        for cid, author, seq, height, parents, about in found:
            key = bytes(cid)
            vv = causal.vv.get(key)
            if vv is None or author in causal.forked:
                continue
            if key in heads:  # not yet: once an event names it, a later pass prunes it
                held += 1
                continue
            behind = [p for p, pv in seen_by.items() if pv is None or pv.get(author, 0) < seq]
            if behind:
                held += 1
                waiting.update(behind)
                continue
            stubs.append(Stub(cid, author, seq, height, tuple(parents), dict(vv), about))
        return stubs, held, waiting


__all__ = ["PRUNE_INTERVAL_S", "PruneStats", "Pruner", "dropped_only"]
