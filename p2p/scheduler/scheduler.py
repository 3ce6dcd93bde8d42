"""The scheduler's imperative shell around the pure fold.

It folds clock events into ``State``, decides which tasks this peer should claim (the
rendezvous rule in ``assignment``), keeps the tasks it owns in a Fibonacci heap keyed by
(priority, submit order, index), runs them through the inference engine's batching executor,
and writes claims, starts, results and failures back to the clock — gathered for ``flush_ms``
into one event, so the DAG grows per batch, not per task.

Everything it starts lives in the nursery of ``run()`` and stops on cancel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import structlog
import trio

from p2p.clock import Event, MerkleClock, codec
from p2p.config import SchedulerConfig
from p2p.errors import NodeError
from p2p.scheduler.assignment import choose_owner, rank_peers
from p2p.scheduler.heap import FibonacciHeap
from p2p.scheduler.ops import TaskSpec, WorkflowTag, new_workflow_id
from p2p.scheduler.results import pack_result
from p2p.scheduler.state import TERMINAL_TASK, State, TaskState, TaskStatus, WorkflowState, apply_event

log = structlog.get_logger("p2p.scheduler")


@dataclass(frozen=True, slots=True)
class PeerCaps:
    """What the scheduler needs to know of a live peer (itself included)."""

    peer_id: str
    capacity: float
    models: frozenset[str]


class PeerView(Protocol):
    def live_peers(self) -> Sequence[PeerCaps]:
        """Every peer whose heartbeat is within the lease, this peer included."""

    def is_alive(self, peer_id: str) -> bool: ...


class Engine(Protocol):
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


# Errors a retry on another peer cannot fix.
class Scheduler:
    def __init__(
        self,
        clock: MerkleClock,
        engine: Engine,
        peers: PeerView,
        config: SchedulerConfig,
        *,
        max_inflight: int = 256,
        max_ops_per_event: int = 256,
    ) -> None:
        self.clock = clock
        self.engine = engine
        self.peers = peers
        self.config = config
        self.me = clock.peer_id
        self.state = State(max_attempts=config.max_attempts)
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
        self._unclaimed_since: dict[str, dict[int, float]] = {}  # task -> attempt -> first seen unclaimed
        self._open: set[str] = set()
        self._dirty: set[str] = set()
        self._pending: list[dict[str, Any]] = []
        self._wake_decide = trio.Event()
        self._wake_flush = trio.Event()
        self._wake_work = trio.Event()

    # ----------------------------------------------------------------- folding

    def load(self) -> None:
        """Fold every stored event (start-up): the state after a restart is the state before."""
        for ev in self.clock.events():
            self._fold(ev)
        self._dirty.update(self.state.tasks)

    def ingest(self, events: Iterable[Event]) -> None:
        """Fold events that arrived from peers (already verified and stored by the clock)."""
        any_new = False
        for ev in events:
            self._dirty |= self._fold(ev)
            any_new = True
        if any_new:
            self._wake_decide.set()
            self.changed.fire()

    def _fold(self, ev: Event) -> set[str]:
        before = len(self.state.rejected)
        touched = apply_event(self.state, bytes(ev.cid), ev.author, ev.height, ev.ops)
        for rej in self.state.rejected[before:]:
            log.warning("op rejected", author=rej.author, op=rej.op, reason=rej.reason, event_cid=str(ev.cid))
        for op in ev.ops:
            if isinstance(op, dict) and op.get("op") in ("task.done", "task.fail") and not op.get("expired"):
                task = self.state.tasks.get(op.get("task_id"))  # type: ignore[arg-type]
                if task is not None and not task.holds_claim(ev.author, op.get("attempt", 0)):
                    log.warning("op ignored: its author holds no claim on that attempt", author=ev.author,
                                op=op["op"], task_id=task.task_id, attempt=op.get("attempt"), event_cid=str(ev.cid))
        return {t for t in touched if not t.startswith("wf:")}

    def peers_changed(self) -> None:
        """Liveness or capabilities changed: every open task is re-decided."""
        self._dirty |= self._open
        self._wake_decide.set()

    # --------------------------------------------------------------- commands

    def submit(
        self, name: str, tasks: list[TaskSpec], priority: int, tag: WorkflowTag
    ) -> str:
        """Write a workflow to the clock now; it is on disk when this returns."""
        wid = new_workflow_id(self.me)
        op = {
            "op": "workflow.submit",
            "workflow_id": wid,
            "name": name,
            "priority": priority,
            "tag": tag.value,
            "tasks": [t.model_dump(exclude_defaults=True) for t in tasks],
            "created_at": time.time(),
        }
        self._append_now([op])
        return wid

    def cancel(self, workflow_id: str) -> None:
        self._append_now([{"op": "workflow.cancel", "workflow_id": workflow_id}])

    def reprioritize(self, workflow_id: str, priority: int) -> None:
        self._append_now([{"op": "workflow.reprioritize", "workflow_id": workflow_id, "priority": priority}])

    def _append_now(self, ops: list[dict[str, Any]]) -> Event:
        try:
            ev = self.clock.append(ops)
        except ValueError as exc:  # nothing was written
            raise NodeError(f"{exc}: split the workflow into smaller ones (or raise clock.max_block_bytes on every peer)") from None
        self._after_local_append(ev)
        return ev

    def _after_local_append(self, ev: Event) -> None:
        self.unannounced.append(ev)
        del self.unannounced[:-64]  # only the newest travel inline; the rest are fetched
        self._dirty |= self._fold(ev)
        self._wake_decide.set()
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
        while True:
            with trio.move_on_after(tick) as timer:
                await self._wake_decide.wait()
            self._wake_decide = trio.Event()
            if timer.cancelled_caught:
                self._dirty |= self._open  # leases expire with time, not with events
            dirty, self._dirty = self._dirty, set()
            if dirty:
                self.decide(dirty)

    async def _work_loop(self) -> None:
        slots = trio.Semaphore(self._max_inflight)
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                while not self._heap:
                    await self._wake_work.wait()
                    self._wake_work = trio.Event()
                _, tid = self._heap.pop()
                del self._handles[tid]
                attempt = self._owned.get(tid)
                if attempt is None:
                    slots.release()
                    continue
                self._running.add(tid)
                nursery.start_soon(self._execute, tid, attempt, slots)

    # ----------------------------------------------------------------- deciding

    def decide(self, task_ids: Iterable[str]) -> None:
        """Claim what this peer should run, drop what it lost; pure reads of the state."""
        live = self.peers.live_peers()
        for tid in task_ids:
            task = self.state.tasks.get(tid)
            if task is None:
                continue
            wf = self.state.workflows[task.workflow_id]
            status = self.state.task_status(task)
            if status in TERMINAL_TASK:
                self._open.discard(tid)
                self._claiming.pop(tid, None)
                self._finished.pop(tid, None)
                self._unclaimed_since.pop(tid, None)
                self._drop_local(tid, even_if_running=False)
                continue
            self._open.add(tid)
            if status in (TaskStatus.CLAIMED, TaskStatus.RUNNING):
                owner = task.owner()
                assert owner is not None
                if owner.peer == self.me:
                    self._own(task, wf, task.attempt)
                    continue
                self._drop_local(tid, even_if_running=False)  # a concurrent claim beat ours
                if self.peers.is_alive(owner.peer):
                    continue
                reason = f"owner {owner.peer} silent for over {self.config.lease_s:g} s"
                last = task.attempt >= self.config.max_attempts
                if last or self._rank_first(task, wf, live) is None:
                    # The last attempt is lost, or no live peer may take the next one: one live
                    # peer (eligible or not) records the expiry, so the task fails, or goes back
                    # to queued until a peer that serves its model appears, instead of hanging.
                    recorder = choose_owner(tid, {p.peer_id: p.capacity for p in live})
                    if recorder == self.me and -task.attempt not in self._claiming.get(tid, ()):
                        self._claiming.setdefault(tid, set()).add(-task.attempt)
                        self._record(
                            {"op": "task.fail", "task_id": tid, "attempt": task.attempt, "error": reason,
                             "retryable": not last, "expired": True}
                        )
                    continue
                self._maybe_claim(task, wf, live, task.attempt + 1, reason)
            else:  # queued: never claimed, or the last attempt failed and may be retried
                self._maybe_claim(task, wf, live, task.attempt + 1, None)

    def _maybe_claim(self, task: TaskState, wf: WorkflowState, live: Sequence[PeerCaps], attempt: int, why: str | None) -> None:
        if attempt in self._claiming.get(task.task_id, ()):
            return
        ranking = self._ranking(task, wf, live)
        if self.me not in ranking:
            return
        rank = ranking.index(self.me)
        if rank > 0:
            # Fallback: the peers ranked above us should have claimed by now; one that advertises
            # the model but never claims (broken, or a fake identity) must not starve the task.
            # The k-th ranked peer claims after k * lease_s of waiting; concurrent claims still
            # resolve by score, so an honest top peer that claims late still wins.
            now = time.monotonic()
            first_seen = self._unclaimed_since.setdefault(task.task_id, {}).setdefault(attempt, now)
            if now - first_seen < rank * self.config.lease_s:
                return
            log.info("claiming a task its higher-ranked peers left unclaimed", task_id=task.task_id, rank=rank)
        self._claiming.setdefault(task.task_id, set()).add(attempt)
        mine = next(p for p in live if p.peer_id == self.me)
        op: dict[str, Any] = {"op": "task.claim", "task_id": task.task_id, "attempt": attempt, "capacity": mine.capacity}
        if why:
            op["supersedes"] = why
        self._record(op)

    def _ranking(self, task: TaskState, wf: WorkflowState, live: Sequence[PeerCaps]) -> list[str]:
        """The live, eligible peers in the rendezvous rule's order for this task; peers that
        already failed it go last when others can take it."""
        eligible = {p.peer_id: p.capacity for p in live if self._allowed(p, task, wf)}
        failed = {peer for (_, peer), f in task.fails.items() if not f.expired}
        if failed and any(p not in failed for p in eligible):
            eligible = {p: c for p, c in eligible.items() if p not in failed}
        return rank_peers(task.task_id, eligible)

    def _rank_first(self, task: TaskState, wf: WorkflowState, live: Sequence[PeerCaps]) -> str | None:
        ranking = self._ranking(task, wf, live)
        return ranking[0] if ranking else None

    @staticmethod
    def _allowed(peer: PeerCaps, task: TaskState, wf: WorkflowState) -> bool:
        if task.spec.model not in peer.models:
            return False
        if wf.tag is WorkflowTag.P2P_ONLY:
            return peer.peer_id != wf.submitter
        if wf.tag is WorkflowTag.LOCAL_ONLY:
            return peer.peer_id == wf.submitter
        return True

    def _own(self, task: TaskState, wf: WorkflowState, attempt: int) -> None:
        tid = task.task_id
        key = (wf.priority, wf.order, task.index)
        if tid in self._running or self._finished.get(tid) == attempt:
            return
        if self._owned.get(tid) == attempt and tid in self._handles:
            handle = self._handles[tid]
            if handle.key != key:  # reprioritised
                self._heap.update_key(handle, key)
            return
        self._owned[tid] = attempt
        if tid not in self._handles:
            self._handles[tid] = self._heap.push(key, tid)
            self._wake_work.set()

    def _drop_local(self, tid: str, *, even_if_running: bool) -> None:
        handle = self._handles.pop(tid, None)
        if handle is not None:
            self._heap.remove(handle)
        if even_if_running or tid not in self._running:
            self._owned.pop(tid, None)

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
        self._record({"op": "task.start", "task_id": tid, "attempt": attempt})
        started = time.perf_counter()
        try:
            kwargs = {"top_k": int(spec.params["top_k"])} if "top_k" in spec.params else {}
            res = await self.engine.infer(spec.model, [spec.input], spec.task, **kwargs)
            output = res.outputs[0]
            output = output.to_json() if hasattr(output, "to_json") else output
            stats = {"ms": round((time.perf_counter() - started) * 1000, 3), "backend": res.backend, "device": res.device, "task": res.task}
            self._record(self._done_op(tid, attempt, pack_result(output), stats))
        except Exception as exc:  # the error is the task's outcome, recorded for every peer to see
            name = type(exc).__name__
            log.info("task failed", task_id=tid, attempt=attempt, error=str(exc))
            self._record(
                {"op": "task.fail", "task_id": tid, "attempt": attempt, "error": f"{name}: {exc}",
                 "retryable": not isinstance(exc, (InvalidInputError, UnsupportedTaskError))}
            )
        finally:
            self._running.discard(tid)
            self._owned.pop(tid, None)
            self._finished[tid] = attempt  # until its outcome is folded, it must not queue again
            slots.release()

    def _done_op(self, tid: str, attempt: int, result: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "task.done", "task_id": tid, "attempt": attempt, "stats": stats}
        if len(codec.encode(result)) <= self.config.inline_result_bytes:
            op["result"] = result
        else:
            op["result_cid"] = self.clock.put_block(result, durable=False)
        return op

    # ------------------------------------------------------------------ views

    def local_queue(self) -> int:
        """Tasks this peer owns and has not finished (queued here or running)."""
        return len(self._owned)

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)
