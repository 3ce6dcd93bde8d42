"""The scheduler's imperative shell around the pure fold.

It folds clock events into ``State``, asks the assignment policy (``policy``) what this peer
should do about each task the fold touched, keeps the tasks it owns in a Fibonacci heap keyed by
(priority, submit order, index), runs them through the inference engine's batching executor
(each within ``task_timeout_s``), and writes claims, starts, results and failures back to the
clock — gathered for ``flush_ms`` into one event, so the DAG grows per batch, not per task.

A priority change moves only this peer's queued tasks of that workflow in the heap: folding a
control op costs what it changes, not a pass over every task.

Everything it starts lives in the nursery of ``run()`` and stops on cancel.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Iterable, Protocol, Sequence

import structlog
import trio

from p2p.clock import Event, MerkleClock, codec
from p2p.config import SchedulerConfig
from p2p.errors import NodeError
from p2p.net.ratelog import PeerLogLimiter
from p2p.peers.caps import PeerCaps
from p2p.scheduler.heap import FibonacciHeap
from p2p.scheduler.ops import MAX_ACCEPTS, TaskSpec, WorkflowTag, new_workflow_id
from p2p.scheduler.policy import AssignmentPolicy, Claim, Drop, Expire, Forget, Own, allowed
from p2p.scheduler.results import pack_result
from p2p.scheduler.replicas import split_index
from p2p.scheduler.dropped import Dropped
from p2p.scheduler.state import State, TaskState, TaskStatus, apply_event

# Replicated results travel inside the done op (up to this size), so that the fold can compare them.
REPLICA_INLINE_BYTES = 256 << 10

log = structlog.get_logger("p2p.scheduler")

DECIDE_CHUNK = 1000  # tasks decided between two checkpoints of the event loop
FEED_WINDOW = 512  # tasks without records of one lazy workflow decided per pass (``_feed``)
# indices looked at per lazy workflow per pass, at most (a dict lookup each: after a restart the
# tasks done before it are stepped over in a few passes, a few milliseconds each)
FEED_SCAN = 65_536
op_log = PeerLogLimiter(log)  # a peer's bad ops: once per author per minute, with a count


class PeerView(Protocol):
    """Who is alive and compatible, as the scheduler needs it (the PeerTable)."""

    def live_peers(self) -> Sequence[PeerCaps]:
        """Every peer whose heartbeat is within the lease, this peer included."""

    def is_alive(self, peer_id: str) -> bool: ...

    def is_compatible(self, peer_id: str) -> bool:
        """Whether the peer shares our consensus settings."""


class Engine(Protocol):
    """The inference engine, as the scheduler uses it (inference.engine.InferenceEngine)."""

    async def infer(self, model: str, inputs: list[str], task: str | None = None, **options: Any) -> Any: ...


class _Notifier:
    """A broadcast 'something changed' that many tasks can wait on."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class TaskTimeoutError(Exception):
    """This peer's own run of a task passed ``task_timeout_s``: the attempt is given up (retryable)."""


class Scheduler:
    """This peer's side of the leaderless schedule: fold, decide, queue, run, record.

    Why one object: the fold, the local queue and the executor must agree on which attempt this
    peer owns at every moment (a task dropped from the queue must not start; a finished attempt
    must not queue again before its outcome is folded). Everything else — who should run what —
    is the policy's, and everything about the network is the replicator's."""

    def __init__(
        self,
        clock: MerkleClock,
        engine: Engine,
        peers: PeerView,
        config: SchedulerConfig,
        *,
        max_inflight: int = 256,
        max_ops_per_event: int = 256,
        ready: Callable[[], bool] = lambda: True,
        now: Callable[[], float] = time.monotonic,
        lagging: Callable[[str], bool] = lambda peer: False,
        cache: Any = None,
        inputs: Any = None,
    ) -> None:
        self.clock = clock
        self.engine = engine
        self.cache = cache  # p2p.cache.ResultCache, or None: every task runs inference
        # p2p.content.inputs.InputChunks: a chunked submit's inputs, fetched when a task runs
        self.inputs = inputs
        self.peers = peers
        self.config = config
        self.me = clock.peer_id
        self.state = State(max_attempts=config.max_attempts)
        clock.subscribe(self._on_applied)  # fold every applied event in the clock's order
        self.changed = _Notifier()  # state changed (waiters, progress)
        self.local_event = _Notifier()  # this peer appended an event (announce heads)
        self.unannounced: list[Event] = []  # local events the network has not announced yet
        self._max_inflight = max_inflight
        self._max_ops = max_ops_per_event
        self._heap: FibonacciHeap[str] = FibonacciHeap()
        self._handles: dict[str, Any] = {}
        self._owned: dict[str, int] = {}  # task_id -> attempt this peer owns and has not finished
        self._running: set[str] = set()
        self._claiming: dict[str, set[int]] = {}  # claims written, per task; dropped when it ends
        self._finished: dict[str, int] = {}  # attempts run here whose outcome may not be folded yet
        self._queued_by_wf: dict[str, set[str]] = {}  # workflow -> its tasks in the local heap
        # workflow -> the (priority, order) its queued tasks are keyed with: every task op
        # touches its workflow, and re-keying thousands of queued tasks per folded event took
        # a fifth of a busy node's event loop (profiled under 10,000 tasks)
        self._queued_key: dict[str, tuple[int, int]] = {}
        self.policy = AssignmentPolicy(self.me, config, peers.is_alive, ready=ready, now=now,
                                       compatible=peers.is_compatible, judge=self._judge, lagging=lagging,
                                       siblings=lambda task: self.state.siblings(task),
                                       outvoted=lambda peer: self.state.outvoted.get(peer, 0))
        self._open: set[str] = set()
        self._advertised: tuple[Any, ...] | None = None  # what our last peer.advertise said
        self._sealing: set[str] = set()  # our workflows' done tasks whose seal is written, not yet folded
        self._dirty: set[str] = set()
        # lazy workflows with tasks no op is about yet (``WorkflowState.lazy``) -> the index the
        # next look at them starts from (``_feed``)
        self._feeding: dict[str, int] = {}
        # lazy workflows this peer may not run (model, content id, tag) -> where the feed was:
        # set aside until capabilities change (``peers_changed``), so a pass never visits them
        self._parked: dict[str, int] = {}
        # tasks whose chunked input no peer served: (first try, next try) by the policy's clock
        self._input_backoff: dict[str, tuple[float, float]] = {}
        self._pending: list[dict[str, Any]] = []
        self._wake_decide = trio.Event()
        self._wake_flush = trio.Event()
        self._wake_work = trio.Event()

    # ----------------------------------------------------------------- folding

    def load(self) -> None:
        """Fold every stored event (start-up): the state after a restart is the state before.
        Workflows whose records were dropped after compaction are filed first, so every op about
        them is skipped (docs/compaction.md §5: a restart costs live state, not history)."""
        for wid, data in self.clock.dropped():
            try:
                self.state.restore_dropped(Dropped.decode(data))
            except Exception as exc:  # noqa: BLE001 - an unreadable row: that workflow is re-folded in full
                log.warning("a dropped workflow's record is unreadable; re-folding it in full", workflow_id=wid,
                            error=f"{type(exc).__name__}: {exc}")
        for ev in self.clock.events():
            self._fold(ev)
        self._dirty.update(self.state.tasks)
        for wid, wf in self.state.workflows.items():
            if wf.virtual:
                self._feeding.setdefault(wid, 0)

    def _on_applied(self, ev: Event) -> None:
        """The clock applied ``ev`` (ours or a peer's): fold it now, in the clock's causal order."""
        self._dirty |= self._fold(ev)
        self._wake_decide.set()

    def ingest(self, events: Iterable[Event]) -> None:
        """Events that arrived from peers were applied (and folded, as the clock applied them):
        wake the decisions and the waiters."""
        if any(True for _ in events):
            self._wake_decide.set()
            self.changed.fire()

    def _fold(self, ev: Event) -> set[str]:
        if self._is_progress(ev):
            self.policy.worked(ev.author)  # its claims are not hoarded (policy._hoarded)
        touched = apply_event(self.state, bytes(ev.cid), ev.author, ev.height, ev.ops,
                              parents=[bytes(p) for p in ev.parents], seq=ev.seq)
        if ev.vv is not None and self.state._causal.vv.get(bytes(ev.cid)) != ev.vv:
            # a pruned event's stub (p2p.clock.stub) whose vector is not the one its parents
            # give: the peers that vouched for it lied or erred (the DAG's vector is used)
            log.warning("a stub's version vector differs from its parents'", cid=str(ev.cid), author=ev.author)
        for rej in self.state.last_rejected:
            op_log.warning(rej.author, "op rejected", op=rej.op, reason=rej.reason, event_cid=str(ev.cid))
        for op in ev.ops:
            if isinstance(op, dict) and op.get("op") in ("task.done", "task.fail") and not op.get("expired"):
                task = self.state.tasks.get(op.get("task_id"))  # type: ignore[arg-type]
                if task is not None and not task.holds_claim(ev.author, op.get("attempt", 0)) \
                        and not self.state.is_compacted(task.workflow_id):  # late for a compacted one: not a forgery
                    op_log.warning(ev.author, "op ignored: its author holds no claim on that attempt",
                                   op=op["op"], task_id=task.task_id, attempt=op.get("attempt"), event_cid=str(ev.cid))
        for key in touched:
            if key.startswith("wf:"):
                self._requeue_workflow(key[3:])
                wf = self.state.workflows.get(key[3:])
                if wf is not None and wf.virtual and wf.workflow_id not in self._parked:
                    self._feeding.setdefault(wf.workflow_id, 0)
        return {t for t in touched if not t.startswith("wf:")}

    def _is_progress(self, ev: Event) -> bool:
        """Whether ``ev`` shows its author working on an attempt it owns: a result or failure,
        or a start it had not written before (repeating one start is not work; an op on a task
        it does not own, which the fold ignores, is not work either)."""
        for op in ev.ops:
            if not isinstance(op, dict):
                continue
            kind = op.get("op")
            if kind not in ("task.start", "task.done", "task.fail") or op.get("expired"):
                continue
            task = self.state.tasks.get(op.get("task_id"))  # type: ignore[arg-type]
            attempt = op.get("attempt")
            if task is None or not isinstance(attempt, int):
                continue
            owner = task.owner(attempt)
            if owner is None or owner.peer != ev.author:
                continue  # an op on a task it does not own (or an unknown one) is not its work
            if kind != "task.start" or (attempt, ev.author) not in task.started:
                return True
        return False

    def _requeue_workflow(self, wid: str) -> None:
        """A workflow's priority may have changed: move its tasks in the local heap (only those)."""
        wf = self.state.workflows.get(wid)
        tids = self._queued_by_wf.get(wid)
        if wf is None or not tids or self._queued_key.get(wid) == (wf.priority, wf.order):
            return
        self._queued_key[wid] = (wf.priority, wf.order)
        for tid in tids:
            handle = self._handles.get(tid)
            task = self.state.tasks.get(tid)
            if handle is None or task is None:
                continue
            key = (wf.priority, wf.order, task.index)
            if handle.key != key:
                self._heap.update_key(handle, key)

    def peers_changed(self) -> None:
        """Liveness or capabilities changed: every open task is re-decided, and lazy workflows
        set aside as not ours to run are looked at again."""
        self._dirty |= self._open
        self._feeding.update(self._parked)
        self._parked.clear()
        self._wake_decide.set()

    # --------------------------------------------------------------- commands

    def submit(
        self, name: str, tasks: list[TaskSpec], priority: int, tag: WorkflowTag, *, replicas: int = 1, cache: bool = True,
    ) -> str:
        """Write a workflow to the clock now: folded and visible here at once, on disk after
        ``await durable()`` (the node awaits it before answering the caller)."""
        wid, op = self._submit_op(name, priority, tag, replicas, cache)
        shared = {(t.model, t.model_cid, t.task, repr(sorted(t.params.items()))) for t in tasks}
        if len(tasks) > 1 and len(shared) == 1:  # the compact form: what they share once, then inputs
            first = tasks[0].model_dump(exclude_defaults=True)
            op["template"] = {k: v for k, v in first.items() if k != "input"}
            op["inputs"] = [t.input for t in tasks]
        else:
            op["tasks"] = [t.model_dump(exclude_defaults=True) for t in tasks]
        self._append_now([op])
        return wid

    def submit_chunks(
        self, name: str, template: TaskSpec, chunks: list[tuple[Any, int]], priority: int, tag: WorkflowTag, *,
        replicas: int = 1, cache: bool = True,
    ) -> str:
        """``submit`` of tasks that share ``template`` (its input is ignored) and whose inputs
        are in stored chunk blocks ((CID, count) each, in task order; ``p2p.content.inputs``):
        the op names the blocks instead of carrying the inputs."""
        wid, op = self._submit_op(name, priority, tag, replicas, cache)
        op["template"] = {k: v for k, v in template.model_dump(exclude_defaults=True).items() if k != "input"}
        op["chunks"] = [{"cid": cid, "count": n} for cid, n in chunks]
        self._append_now([op])
        return wid

    def _submit_op(self, name: str, priority: int, tag: WorkflowTag, replicas: int, cache: bool) -> tuple[str, dict[str, Any]]:
        wid = new_workflow_id(self.me)
        op: dict[str, Any] = {"op": "workflow.submit", "workflow_id": wid, "name": name, "priority": priority,
                              "tag": tag.value, "created_at": time.time()}
        if replicas != 1:  # defaults stay off the wire: an old peer's submit encodes the same
            op["replicas"] = replicas
        if not cache:
            op["cache"] = False
        return wid, op

    def cancel(self, workflow_id: str) -> None:
        self._append_now([{"op": "workflow.cancel", "workflow_id": workflow_id}])

    def reprioritize(self, workflow_id: str, priority: int) -> None:
        self._append_now([{"op": "workflow.reprioritize", "workflow_id": workflow_id, "priority": priority}])

    def forget_workflow(self, workflow_id: str) -> None:
        """A workflow this peer had folded (in part) was adopted as compacted from its peers
        (p2p.compaction.joining): none of its tasks is queued or fed here any longer."""
        for tid in list(self._queued_by_wf.get(workflow_id, ())):
            self._drop_local(tid, even_if_running=False)
        self._feeding.pop(workflow_id, None)
        self._parked.pop(workflow_id, None)

    def compact(self, workflow_id: str, snapshot: Any) -> Event:
        """Freeze this node's finished workflow at the current heads (p2p.compaction)."""
        return self._append_now([{"op": "workflow.compact", "workflow_id": workflow_id, "snapshot": snapshot}])

    async def durable(self) -> None:
        """Return once everything written so far is fsynced (off the event loop)."""
        await self.clock.flush_async(durable=True)

    def _append_now(self, ops: list[dict[str, Any]]) -> Event:
        try:
            ev = self.clock.append(ops, durable=False)
        except ValueError as exc:  # nothing was written
            raise NodeError(f"{exc}: split the workflow into smaller ones (or raise clock.max_block_bytes on every peer)") from None
        self._after_local_append(ev)
        return ev

    def take_unannounced(self) -> list[Event]:
        """Local events not announced yet (the newest travel inline in the next announcement)."""
        out, self.unannounced = self.unannounced, []
        return out

    def _after_local_append(self, ev: Event) -> None:
        self.unannounced.append(ev)
        del self.unannounced[:-64]  # only the newest travel inline; the rest are fetched
        self._wake_decide.set()  # folded already, as the clock applied it
        self.changed.fire()
        self.local_event.fire()

    def _record(self, op: dict[str, Any]) -> None:
        self._pending.append(op)
        self._wake_flush.set()

    # ------------------------------------------------------------------- loops

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._decide_loop)
            nursery.start_soon(self._work_loop)
            self._wake_decide.set()
            task_status.started()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake_flush.wait()
            self._wake_flush = trio.Event()
            if self.config.flush_ms:
                await trio.sleep(self.config.flush_ms / 1000)
            self.flush()

    def flush(self) -> None:
        """Write every pending op, as few events as the size limits allow."""
        while self._pending:
            batch = self._pending[: self._max_ops]
            del self._pending[: len(batch)]
            self._append_batch(batch)

    def _append_batch(self, batch: list[dict[str, Any]]) -> None:
        try:
            ev = self.clock.append(batch, durable=False)  # progress can be redone; see clock.store
        except ValueError:
            if len(batch) == 1:
                log.error("op too large for one event; dropped", op=batch[0].get("op"), task_id=batch[0].get("task_id"))
                return
            half = len(batch) // 2
            self._append_batch(batch[:half])
            self._append_batch(batch[half:])
            return
        self._after_local_append(ev)

    async def _decide_loop(self) -> None:
        tick = max(0.05, self.config.lease_s / 4)
        ticks = 0
        next_tick = trio.current_time() + tick
        while True:
            with trio.move_on_at(next_tick):
                await self._wake_decide.wait()
            self._wake_decide = trio.Event()
            if trio.current_time() >= next_tick:  # by the clock: a stream of wake-ups must not hold it off
                ticks += 1
                next_tick = trio.current_time() + tick
                # decisions that time alone changes: fallback claims and timeouts every tick, and
                # once a lease everything open (owners never heard of, whose grace just ended)
                self._dirty |= self._open if ticks % 4 == 0 else self.policy.timed() & self._open
                now = self.policy.now()  # tasks whose unreachable input is due to be tried again
                self._dirty.update(t for t, (_, again) in self._input_backoff.items() if again <= now)
            dirty, self._dirty = list(self._dirty), set()
            dirty += self._feed()
            for i in range(0, len(dirty), DECIDE_CHUNK):
                if i:
                    await trio.sleep(0)  # a 10,000-task pass must not hold heartbeats back
                self.decide(dirty[i:i + DECIDE_CHUNK])

    async def _work_loop(self) -> None:
        slots = trio.Semaphore(self._max_inflight)
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                while not self._heap or not self.policy.ready():
                    if not self._heap:
                        await self._wake_work.wait()
                        self._wake_work = trio.Event()
                    else:
                        # catching up (joined, or resumed from a pause): what we own may have been
                        # superseded meanwhile (and dropped from the heap); learn that first
                        await trio.sleep(0.05)
                _, tid = self._heap.pop()  # non-empty: checked with no checkpoint in between
                del self._handles[tid]
                self._unqueue(tid)
                attempt = self._owned.get(tid)
                if attempt is None:
                    slots.release()
                    continue
                self._running.add(tid)
                nursery.start_soon(self._execute, tid, attempt, slots)

    # ----------------------------------------------------------------- deciding

    def _feed(self) -> list[str]:
        """Tasks of lazy workflows that no op is about yet, to be decided now: at most
        ``FEED_WINDOW`` a pass over all of them (fewer when this peer's backlog is nearly full),
        highest priority first, each in index order from where the last pass stopped (wrapping
        round to those left to others); none of a workflow this peer may not run (model, tag),
        and none while this peer already holds ``claim_backlog`` tasks. A million-task workflow
        is thus claimed as it is worked through, and a pass costs the window, not the workflow.
        Which tasks a peer claims is still the rendezvous rule's; only when it looks is paced."""
        if not self._feeding:
            return []
        # held: what we own, or claimed and have not seen folded yet (or lost: until it ends)
        held = max(len(self._owned), sum(1 for keys in self._claiming.values() if any(k > 0 for k in keys)))
        room = self.config.claim_backlog - held
        if room <= 0:
            return []
        # about ``room`` of them are ours when the live peers share them: look at that many
        live = self.peers.live_peers()
        mine = next((p for p in live if p.peer_id == self.me), None)
        if mine is None:
            return []
        budget = min(FEED_WINDOW, room * max(1, len(live)))
        out: list[str] = []
        wfs = self.state.workflows
        # the highest priority first (then submit order), so its tasks take the room there is
        for wid in sorted(self._feeding, key=lambda w: (wfs[w].priority, wfs[w].order) if w in wfs else (0, 0)):
            wf = wfs.get(wid)
            if wf is None or not wf.virtual or wf.cancelled or self.state.is_compacted(wid):
                del self._feeding[wid]
                continue
            if budget <= 0:
                continue
            first = self.state.task(wf.task_ids[0])
            if first is None or not allowed(mine, first, wf):  # one template: none is ours, for now
                self._parked[wid] = self._feeding.pop(wid)
                continue
            n, i, got = len(wf.task_ids), self._feeding[wid], 0
            for _ in range(min(n, FEED_SCAN)):
                if i >= n:
                    i = 0
                tid = f"{wid}/{i}"
                i += 1
                if tid not in self._open and tid not in self.state.tasks:
                    out.append(tid)
                    got += 1
                    if got >= budget:
                        break
            budget -= got
            self._feeding[wid] = i
        return out

    def decide(self, task_ids: Iterable[str]) -> None:
        """Apply the policy's decision for each task: claim, expire, queue here or drop."""
        live = self.peers.live_peers()
        self._advertise(next((p for p in live if p.peer_id == self.me), None))
        seals: dict[str, list[list[Any]]] = {}
        for tid in task_ids:
            task = self.state.task(tid)  # (a lazy task without a record: a fresh one, to decide on)
            if task is None:
                continue
            wf = self.state.workflows[task.workflow_id]
            status = self.state.task_status(task)
            running = self._owned.get(tid) if tid in self._running else None
            decisions = self.policy.decide(task, wf, status, live, running)
            if decisions and isinstance(decisions[0], Forget):
                if wf.submitter == self.me and status is TaskStatus.DONE and self._sealable(task, wf):
                    self._seal(task, wf, seals)
                self._open.discard(tid)
                self._input_backoff.pop(tid, None)
                self._claiming.pop(tid, None)
                self._finished.pop(tid, None)
                self._drop_local(tid, even_if_running=False)
                continue
            # open until terminal, decisions or not: a task nobody may claim yet (not caught up,
            # not our turn) must be decided again when peers or time change
            self._open.add(tid)
            for decision in decisions:
                if isinstance(decision, Own):
                    self._own(task, wf, decision.attempt)
                elif isinstance(decision, Drop):
                    self._drop_local(tid, even_if_running=False)
                elif isinstance(decision, Claim):
                    self._claim(task, decision, live)
                elif isinstance(decision, Expire):
                    key = -(2 * decision.attempt + decision.concur)  # a suspicion, then perhaps a concurrence
                    if key not in self._claiming.get(tid, ()):
                        self._claiming.setdefault(tid, set()).add(key)
                        self._record({"op": "task.fail", "task_id": tid, "attempt": decision.attempt,
                                      "error": decision.error, "retryable": decision.retryable, "expired": True})
        for wid, entries in seals.items():
            for i in range(0, len(entries), MAX_ACCEPTS):
                self._record({"op": "workflow.accept", "workflow_id": wid, "results": entries[i:i + MAX_ACCEPTS]})

    def _sealable(self, task: TaskState, wf: Any) -> bool:
        """A replica's result is sealed only once its task's verdict accepted a result: a seal
        makes a result stand for good, and until the replicas agree nobody knows which should."""
        if wf.replicas <= 1:
            return True
        return self.state.verdict(wf, split_index(task.index, len(wf.task_ids))[0]).accepted is not None

    def _seal(self, task: TaskState, wf: Any, seals: dict[str, list[list[Any]]]) -> None:
        """Our workflow's task is done: seal the result that stands (``workflow.accept``), once.
        Not in a compacted workflow: its results are fixed at the cut, and a seal after the cut
        would only wait there (and be written again after every restart)."""
        if wf.compacted is not None:
            self._sealing.discard(task.task_id)
            return
        if task.accepts:
            self._sealing.discard(task.task_id)  # our seal is folded
            if task.sealed() is not None:
                return
        res = task.result
        if res is None or task.task_id in self._sealing:
            return
        self._sealing.add(task.task_id)
        seals.setdefault(wf.workflow_id, []).append([task.index, res.stamp[1], res.stamp[2]])

    def _judge(self, task: TaskState, attempt: int) -> tuple[str | None, bool]:
        """The attempt's judge in our state, and whether another peer's suspicion is folded."""
        return task.judge(attempt), any(f.expired and a == attempt and p != self.me for (a, p, _), f in task.fails.items())

    def _advertise(self, mine: PeerCaps | None) -> None:
        """Write a ``peer.advertise`` when what we offer differs from what we last advertised:
        the fold counts a claim only after its author advertised the model (and weighs it by
        the capacity advertised), so it goes out before, or with, our first claim."""
        if mine is None:
            return
        want = (mine.capacity, tuple(sorted(mine.models)), tuple(sorted(mine.model_cids)))
        if self._advertised == want:
            return
        adv = self.state.latest_advert(self.me)
        if adv is None or (adv.capacity, tuple(sorted(adv.models)), tuple(sorted(adv.model_cids.items()))) != want:
            self._record({"op": "peer.advertise", "capacity": mine.capacity, "models": list(want[1]),
                          "model_cids": dict(want[2])})
        self._advertised = want

    def _claim(self, task: TaskState, claim: Claim, live: Sequence[PeerCaps]) -> None:
        written = self._claiming.setdefault(task.task_id, set())
        if claim.attempt in written:
            return
        written.add(claim.attempt)
        mine = next(p for p in live if p.peer_id == self.me)
        op: dict[str, Any] = {"op": "task.claim", "task_id": task.task_id, "attempt": claim.attempt, "capacity": mine.capacity}
        if claim.supersedes:
            op["supersedes"] = claim.supersedes
        if claim.continues:
            op["continues"] = True
            log.info("re-asserting a running task another peer superseded", task_id=task.task_id, attempt=claim.attempt)
        self._record(op)

    def _own(self, task: TaskState, wf: Any, attempt: int) -> None:
        tid = task.task_id
        key = (wf.priority, wf.order, task.index)
        if tid in self._running:
            return
        done = self._finished.get(tid)
        if done is not None:
            if not self._outcome_folded(task, done):
                return  # its outcome is on its way into the clock; never queue it again meanwhile
            del self._finished[tid]
            if done >= attempt:
                return
        if self._owned.get(tid) == attempt and tid in self._handles:
            handle = self._handles[tid]
            if handle.key != key:  # reprioritised
                self._heap.update_key(handle, key)
            return
        self._owned[tid] = attempt
        wait = self._input_backoff.get(tid)
        if wait is not None and self.policy.now() < wait[1]:
            return  # its input was unreachable: owned, not queued until the backoff ends
        if tid not in self._handles:
            self._handles[tid] = self._heap.push(key, tid)
            self._queued_by_wf.setdefault(task.workflow_id, set()).add(tid)
            self._queued_key.setdefault(task.workflow_id, (key[0], key[1]))
            self._wake_work.set()

    def _outcome_folded(self, task: TaskState, attempt: int) -> bool:
        """Whether this peer's result or failure for ``attempt`` is in the state."""
        if any(a == attempt and p == self.me for a, p, _ in task.fails):
            return True
        return any(o.peer == self.me and o.attempt == attempt for o in task.results.values())

    def _drop_local(self, tid: str, *, even_if_running: bool) -> None:
        self._input_backoff.pop(tid, None)  # a later attempt of ours starts its wait afresh
        handle = self._handles.pop(tid, None)
        if handle is not None:
            self._heap.remove(handle)
            self._unqueue(tid)
        if even_if_running or tid not in self._running:
            self._owned.pop(tid, None)

    def _unqueue(self, tid: str) -> None:
        wid = tid.rsplit("/", 1)[0]
        tids = self._queued_by_wf.get(wid)
        if tids is not None:
            tids.discard(tid)
            if not tids:
                del self._queued_by_wf[wid]
                self._queued_key.pop(wid, None)

    # ---------------------------------------------------------------- executing

    async def _execute(self, tid: str, attempt: int, slots: trio.Semaphore) -> None:
        from inference.errors import InvalidInputError, UnsupportedTaskError  # a retry elsewhere can't fix these

        task = self.state.tasks.get(tid)
        if task is None:  # gone from the state since it was queued
            self._running.discard(tid)
            self._owned.pop(tid, None)
            slots.release()
            return
        spec = task.spec
        unreadable: Exception | None = None
        if spec.ref is not None:  # a chunked submit: its input is fetched now, if not held
            try:
                if self.inputs is None:
                    raise NodeError("this node cannot read chunked inputs")
                spec = dataclasses.replace(spec, input=await self.inputs.input_of(spec.ref, task.submitter))
                self._input_backoff.pop(tid, None)
            except Exception as exc:  # noqa: BLE001 - becomes the task's outcome, unless it waits
                if self._wait_for_input(tid, exc):
                    self._running.discard(tid)
                    slots.release()
                    if tid not in self._open or self._owned.get(tid) != attempt:
                        # ended or taken over while it was fetching: nothing to wait for
                        self._owned.pop(tid, None)
                        self._input_backoff.pop(tid, None)
                    else:  # still ours: queued again once the backoff ends (``_own``)
                        self._dirty.add(tid)
                        self._wake_decide.set()
                    return
                unreadable = exc
        self._record({"op": "task.start", "task_id": tid, "attempt": attempt})
        wf = self.state.workflows.get(task.workflow_id)
        # the result cache (read and written), unless the workflow opted out
        cache = self.cache if self.cache is not None and wf is not None and wf.cache else None
        # never for a replicated workflow: a cache entry carries no author (any member can seal
        # one), so a cached answer is nobody's independent replica (found by review: one peer's
        # sealed wrong vector, answered from the cache by an honest peer, agreed with its own)
        lookup = cache is not None and wf is not None and wf.replicas == 1
        try:
            if unreadable is not None:
                raise unreadable
            key = None
            if cache is not None:
                try:
                    key = await cache.key_for(spec)
                except Exception as exc:  # noqa: BLE001 - a cache fault never fails a task: it runs
                    log.warning("no cache key for a task; it runs uncached", task_id=tid, error=str(exc))
            async with AsyncExitStack() as held:
                if lookup and key is not None:
                    # a task with the same key running here is waited for (then found in the
                    # cache): repeated inputs run once
                    await held.enter_async_context(cache.computing(key))
                    try:
                        hit = await cache.get(key)
                    except Exception as exc:  # noqa: BLE001 - a cache fault never fails a task: it runs
                        log.warning("cache lookup failed; the task runs", task_id=tid, error=str(exc))
                        hit = None
                    if hit is not None:
                        op = self._done_op(tid, attempt, hit.result, dict(hit.stats))
                        op["cached"] = True  # with the original run's stats
                        self._record(op)
                        return
                kwargs = {"top_k": int(spec.params["top_k"])} if "top_k" in spec.params else {}
                started = time.perf_counter()  # the run itself, not the wait for a twin's result
                res = None
                with trio.move_on_after(self.config.task_timeout_s):
                    res = await self.engine.infer(spec.model, [spec.input], spec.task, **kwargs)
                if res is None:
                    raise TaskTimeoutError(f"did not finish within task_timeout_s={self.config.task_timeout_s:g} s")
                output = res.outputs[0]
                output = output.to_json() if hasattr(output, "to_json") else output
                stats = {"ms": round((time.perf_counter() - started) * 1000, 3), "backend": res.backend, "device": res.device, "task": res.task}
                packed = pack_result(output)
                if key is not None:  # stored first: a task seen done here is in the cache too
                    try:
                        await cache.put(key, packed, stats)
                    except Exception as exc:  # noqa: BLE001 - the result stands; only the cache missed it
                        log.warning("could not store a result in the cache", task_id=tid, error=str(exc))
                self._record(self._done_op(tid, attempt, packed, stats))
        except Exception as exc:  # the error is the task's outcome, recorded for every peer to see
            name = type(exc).__name__
            log.info("task failed", task_id=tid, attempt=attempt, error=str(exc))
            self._record(
                {"op": "task.fail", "task_id": tid, "attempt": attempt, "error": f"{name}: {exc}",
                 "retryable": not isinstance(exc, (InvalidInputError, UnsupportedTaskError)) and not getattr(exc, "permanent", False)}
            )
        finally:
            self._running.discard(tid)
            self._owned.pop(tid, None)
            self._finished[tid] = attempt  # until its outcome is folded, it must not queue again
            slots.release()

    def _wait_for_input(self, tid: str, exc: Exception) -> bool:
        """Whether a task whose chunked input no peer served now waits and tries again (True),
        instead of failing the attempt: the submitter may be asleep or briefly unreachable, and
        a failed attempt per try would fail a whole backlog in milliseconds. It waits a lease
        between tries, for up to half of ``task_timeout_s``; a chunk that lacks the input
        (``permanent``) fails at once."""
        if not getattr(exc, "retry_later", False):
            return False  # (a chunk that lacks the input, or anything but an unreachable one)
        now = self.policy.now()
        first = self._input_backoff.get(tid, (now, now))[0]
        if now - first >= self.config.task_timeout_s / 2:
            self._input_backoff.pop(tid, None)
            return False
        self._input_backoff[tid] = (first, now + self.config.lease_s)
        log.info("a task's input is not reachable now; it waits", task_id=tid, error=str(exc))
        return True

    def _done_op(self, tid: str, attempt: int, result: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "task.done", "task_id": tid, "attempt": attempt, "stats": stats}
        task = self.state.tasks.get(tid)
        wf = self.state.workflows.get(task.workflow_id) if task is not None else None
        # replicated results are compared by the fold, which reads only what events carry: inline
        limit = max(self.config.inline_result_bytes, REPLICA_INLINE_BYTES) if wf is not None and wf.replicas > 1 \
            else self.config.inline_result_bytes
        if len(codec.encode(result)) <= limit:
            op["result"] = result
        else:
            op["result_cid"] = self.clock.put_block(result, durable=False)
        return op

    # ------------------------------------------------------------------ views

    def open_task_ids(self) -> list[str]:
        """Tasks not finished anywhere (queued, claimed or running), as last decided; and for
        each lazy workflow with tasks nobody has claimed yet, one of those (the feed looks at
        them only when this peer may run them: auto-pull must still hear of their model)."""
        out = list(self._open)
        for wid, start in [*self._feeding.items(), *self._parked.items()]:
            wf = self.state.workflows.get(wid)
            if wf is None or not wf.virtual:
                continue
            n = len(wf.task_ids)
            for k in range(min(n, FEED_SCAN)):
                tid = f"{wid}/{(start + k) % n}"
                if tid not in self.state.tasks:
                    out.append(tid)
                    break
        return out

    def local_queue(self) -> int:
        """Tasks this peer owns and has not finished (queued here or running)."""
        return len(self._owned)

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)
