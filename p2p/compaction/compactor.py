"""The compactor: this node's side of compaction (docs/compaction.md §4–§5).

Why a component of its own: the fold decides what a compaction *means* (p2p.scheduler.state:
a submitter's ``workflow.compact`` freezes its finished workflow at the op's cut); someone must
decide *when* to write one, and check the ones peers write. That is local policy and I/O, so it
lives here, in the shell, with time injected:

- **Compacting.** A workflow this node submitted that has stayed finished for
  ``clock.retention_s`` (by this node's clock, counted from when it first saw it finished; a
  restart starts the count again) gets a snapshot (``p2p.compaction.snapshot``), built a slice
  at a time on the event loop. If no event touched the workflow meanwhile, the snapshot's blocks
  are stored in the clock (so peers can fetch them over the blocks protocol) and the compact op
  is appended over the current heads: every event folded so far is in its past, so the cut is
  exactly the state the snapshot was built from.
- **Verifying.** A compaction in force that another peer wrote is checked by building the
  snapshot of the workflow as this node now reads it (its view at the cut) and comparing the
  root CID with the one the op names: the same, *verified* (the blocks are stored, so this node
  serves them too); another, *forged* — the author is logged once and counted, and nothing else
  changes (the fold's answers never depend on the snapshot); a snapshot this node cannot build
  (a task record larger than a block), *abstained*.

- **Dropping** (§5). Once a compaction in force is verified — this node wrote it, or rebuilt its
  snapshot to the same CID — the workflow's records are dropped (``State.drop``, unless
  ``clock.drop_compacted`` is off): its answers come from the snapshot's blocks, stored here,
  and the clock's ``dropped`` table makes a restart skip every op about it. Not before every
  result block the snapshot names is here (while the records stay, the node fetches missing
  ones; dropped, nothing would). A compaction this node could not verify (forged, or it
  abstained) keeps its records: the fold's answers are the same either way; only memory
  differs. Its own compactions are verified like a peer's when read back after a restart (a
  crash before the drop was recorded, or a version that did not drop).

- **Pruning** (§5): after each look, the pruner (``p2p.compaction.pruner``) replaces the blocks
  of events whose every op is about a dropped workflow by their stubs, and result expiry
  (``p2p.compaction.expiry``) deletes the result blocks of workflows dropped over
  ``results.retention_s`` ago.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from p2p.compaction.pages import dropped_from_snapshot, result_cids
from p2p.compaction.snapshot import Snapshot, SnapshotError, build_snapshot, build_snapshot_async
from p2p.scheduler.state import TERMINAL_WORKFLOW, WorkflowStatus

log = structlog.get_logger("p2p.compaction")

MAX_INTERVAL_S = 60.0  # how often the compactor looks, at most (retention_s / 10 when shorter)
MIN_INTERVAL_S = 1.0  # ... and at least: each look lists the finished workflows
MAX_RETRIES = 3  # snapshots dropped because the workflow moved; then one is built without yielding


@dataclass
class CompactionStats:
    """What the compactor did, for get_node_info (counts since start)."""

    written: int = 0  # compact ops this node wrote
    verified: int = 0  # peers' compactions whose snapshot this node rebuilt to the same CID
    forged: dict[str, int] = field(default_factory=dict)  # author -> compactions whose snapshot differs
    abstained: int = 0  # compactions this node could not rebuild a snapshot for
    retried: int = 0  # snapshots discarded because the workflow changed while they were built
    dropped: int = 0  # verified compactions whose records this node dropped


class Compactor:
    """Writes this node's compactions after ``retention_s`` and checks its peers' (module doc)."""

    def __init__(self, scheduler: Any, clock: Any, peer_id: str, *, retention_s: float, max_chunk_bytes: int,
                 now: Callable[[], float] = time.monotonic, drop: bool = True, pruner: Any = None,
                 expiry: Any = None) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.peer_id = peer_id
        self.retention_s = retention_s
        self.max_chunk_bytes = max_chunk_bytes
        self._now = now
        self.drop = drop  # drop the records of verified compactions (docs/compaction.md §5)
        self.pruner = pruner  # p2p.compaction.pruner.Pruner: then deletes the events they made dead
        self.expiry = expiry  # p2p.compaction.expiry.ResultExpiry: result blocks after results.retention_s
        self.stats = CompactionStats()
        self._finished_since: dict[str, float] = {}  # own finished workflows -> when first seen so
        self._checked: dict[str, Any] = {}  # compacted workflow -> the stamp in force when checked
        self._cannot: set[str] = set()  # own workflows whose snapshot cannot be built (logged once)
        self._retries: dict[str, int] = {}  # own workflow -> snapshots dropped in a row
        # verified compactions whose records wait to be dropped until every result block they
        # name is here (the records are what make the node fetch missing ones)
        self._drop_waiting: dict[str, tuple[Snapshot, list[Any]]] = {}  # -> (snapshot, blocks missing)

    def info(self) -> dict[str, Any]:
        state = self.scheduler.state
        return {
            "retention_s": self.retention_s,
            "compacted": len(state.compacted_ids()),
            "waiting": len(self._finished_since),
            "written": self.stats.written,
            "verified": self.stats.verified,
            "forged": dict(self.stats.forged),
            "abstained": self.stats.abstained,
            "late_ops_ignored": state.late_for_compacted,
            "dropped": len(state.dropped),  # compacted workflows answered from their snapshot, records freed
            "dropped_ops_skipped": state.dropped_ops,  # ops about them skipped (since start: a restart's too)
        }

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, self.retention_s / 10))
        task_status.started()
        while True:
            await self.step()
            await trio.sleep(interval)

    async def step(self) -> None:
        """One look: compact what has waited long enough, check peers' new compactions."""
        state = self.scheduler.state
        now = self._now()
        finished: list[str] = []
        for status in TERMINAL_WORKFLOW:
            finished += [wf.workflow_id for wf in state.listed(WorkflowStatus(status))
                         if wf.submitter == self.peer_id and wf.compacted is None and not wf.compacts
                         and wf.workflow_id not in self._cannot]
        mine = set(finished)
        for wid in [w for w in self._finished_since if w not in mine]:
            del self._finished_since[wid]  # compacted (or no longer finished: a fork) meanwhile
        for wid in finished:
            since = self._finished_since.setdefault(wid, now)
            if now - since >= self.retention_s:
                await self._compact(wid)
        for wid, (snap, missing) in list(self._drop_waiting.items()):
            del self._drop_waiting[wid]
            wf = state.workflows.get(wid)
            if wf is not None and wf.compacted is not None and wid not in state.dropped \
                    and bytes(wf.compacted.snapshot) == bytes(snap.root_cid):
                self._drop(wid, snap, missing)
        compacted = state.compacted_ids()
        for wid in [w for w in self._checked if not state.is_compacted(w)]:
            del self._checked[wid]  # no longer compacted (a fork's re-judgement)
        for wid in compacted:
            if wid in state.dropped:
                continue  # verified before it was dropped (here, or before a restart)
            wf = state.workflows.get(wid)
            if wf is None or wf.compacted is None or self._checked.get(wid) == wf.compacted.stamp:
                continue
            # ours too, read back after a restart (its records were not dropped before the crash,
            # or by a version without dropping): rebuilt and compared like a peer's
            await self._check(wid, wf)
            break  # one peer's compaction a look: after a restart they are checked over time
        if self.pruner is not None:
            await self.pruner.step()
        if self.expiry is not None:
            await self.expiry.step()

    async def _compact(self, wid: str) -> None:
        state = self.scheduler.state
        before = state.changes.get(wid, 0)
        try:
            if self._retries.get(wid, 0) >= MAX_RETRIES:  # kept moving (a peer's junk ops on it): do not yield
                snap = build_snapshot(state, wid, max_chunk_bytes=self.max_chunk_bytes)
            else:
                snap = await build_snapshot_async(state, wid, max_chunk_bytes=self.max_chunk_bytes)
        except SnapshotError as exc:
            log.warning("a finished workflow cannot be compacted", workflow_id=wid, reason=str(exc))
            self._finished_since.pop(wid, None)
            self._cannot.add(wid)
            return
        wf = state.workflows.get(wid)
        if state.changes.get(wid, 0) != before or wf is None or wf.compacted is not None or wf.compacts:
            self.stats.retried += 1  # an event touched it while the snapshot was built: next time
            self._retries[wid] = self._retries.get(wid, 0) + 1
            return
        self._retries.pop(wid, None)
        for cid, data in snap.blocks():
            self.clock.add_raw_block(cid, data)
        self.scheduler.compact(wid, snap.root_cid)  # folded at once: the workflow reads as this cut
        self._finished_since.pop(wid, None)
        self.stats.written += 1
        wf = state.workflows.get(wid)
        if wf is not None and wf.compacted is not None:
            self._checked[wid] = wf.compacted.stamp
        log.info("workflow compacted", workflow_id=wid, tasks=len(wf.task_ids) if wf else None,
                 snapshot=str(snap.root_cid), blocks=len(snap.chunks) + 1)
        if wf is not None and wf.compacted is not None and bytes(wf.compacted.snapshot) == bytes(snap.root_cid):
            self._drop(wid, snap)  # built from the very state the cut is: verified

    async def _check(self, wid: str, wf: Any) -> None:
        state = self.scheduler.state
        winner = wf.compacted
        before = state.changes.get(wid, 0)
        try:
            snap = await build_snapshot_async(state, wid, max_chunk_bytes=self.max_chunk_bytes)
        except SnapshotError as exc:
            self.stats.abstained += 1
            self._checked[wid] = winner.stamp
            log.info("cannot rebuild a peer's compaction snapshot; abstaining", workflow_id=wid, reason=str(exc))
            return
        now_wf = state.workflows.get(wid)
        if now_wf is None or now_wf.compacted is not winner or state.changes.get(wid, 0) != before:
            return  # re-judged meanwhile (a fork): the view may have moved, so no verdict yet
        self._checked[wid] = winner.stamp
        if bytes(snap.root_cid) == bytes(winner.snapshot):
            self.stats.verified += 1
            for cid, data in snap.blocks():
                self.clock.add_raw_block(cid, data)  # this node serves the snapshot too
            self._drop(wid, snap)
            return
        author = winner.where.who
        self.stats.forged[author] = self.stats.forged.get(author, 0) + 1
        if self.stats.forged[author] == 1:
            log.warning("a peer's compaction names a snapshot this node does not rebuild: not trusted",
                        author=author, workflow_id=wid, named=str(winner.snapshot), rebuilt=str(snap.root_cid))

    def _held(self, cid: Any) -> bool:
        try:
            return bool(self.clock.has(cid))
        except Exception:  # noqa: BLE001 - a CID no peer can serve: nothing to wait for
            return True

    def _drop(self, wid: str, snap: Snapshot, wanted: list[Any] | None = None) -> None:
        """Free a verified compaction's records (its snapshot's blocks are queued for the clock
        already; the record is queued after them, so a restart never finds one without them).
        ``wanted``: the result blocks still missing at the last look (else every one it names)."""
        if not self.drop:
            return
        state = self.scheduler.state
        missing = [c for c in (result_cids(snap) if wanted is None else wanted) if not self._held(c)]
        if missing:  # not yet: dropped, the workflow would never fetch them (Node._missing_result_blocks)
            self._drop_waiting[wid] = (snap, missing)
            log.info("compacted workflow's records kept until its result blocks arrive", workflow_id=wid,
                     missing=len(missing))
            return
        gone = dropped_from_snapshot(state, wid, snap)
        self.clock.put_dropped(wid, gone.encode())
        state.drop(gone)
        self.stats.dropped += 1
        log.info("compacted workflow's records dropped", workflow_id=wid, tasks=gone.total, chunks=len(gone.chunks))


__all__ = ["CompactionStats", "Compactor"]
