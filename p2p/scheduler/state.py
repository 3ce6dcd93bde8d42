"""Workflow and task state: a pure fold over the clock's events.

Why the fold can be incremental and still converge: events are applied in causal order (the
clock applies an event only after its parents), and every derived value is a function of the
*set* of ops seen, never of the order in which concurrent ops arrived:

- a task's owner for an attempt is the claim with the highest rendezvous score among that
  attempt's claims (``assignment.claim_beats``);
- its result is the valid ``task.done`` with the smallest ``(height, event cid, op index)``;
- the priority is the ``workflow.reprioritize`` (or the submit) with the greatest
  ``(height, event cid)`` — a last-writer-wins register on a causal timestamp;
- cancel is a flag, and done beats cancel (running tasks finish; the workflow stays cancelled).

So two peers that hold the same events hold the same state, whatever order the events came in,
and applying one more event never needs a re-fold. ``tests/scheduler/test_state.py`` checks
this with hypothesis.

Validity rules (the clock has already checked hashes and signatures), also set-based:
- ``task.done``/``task.start``/``task.fail`` count only when their author holds a claim on that
  attempt somewhere in the set; others are forgeries, ignored and listed by ``State.forged()``;
- an ``expired`` ``task.fail`` (the owner went silent on the last attempt) may come from any peer;
- ops naming a task or workflow not seen yet wait in ``State.orphans`` until its submit arrives
  (an honest peer never sends one, but a concurrent submit must not make the fold order-dependent);
- two submits with one workflow id (only a faulty peer does that): the smaller stamp defines it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable

from pydantic import ValidationError

from p2p.scheduler.assignment import claim_beats
from p2p.scheduler.ops import (
    CancelOp,
    ClaimOp,
    DoneOp,
    FailOp,
    ReprioritizeOp,
    StartOp,
    SubmitOp,
    TaskSpec,
    WorkflowTag,
    parse_op,
    submitter_prefix,
    task_id_for,
)

# A causal timestamp: (height, event cid bytes, op index). Unique per op, equal on every peer.
Stamp = tuple[int, bytes, int]


class TaskStatus(str, enum.Enum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_TASK = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})


@dataclass(slots=True)
class Claim:
    peer: str
    capacity: float
    stamp: Stamp
    supersedes: str | None = None


@dataclass(slots=True)
class Outcome:
    """A task.done or task.fail as recorded in the clock."""

    peer: str
    attempt: int
    stamp: Stamp
    result: dict[str, Any] | None = None
    result_cid: Any = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = True
    expired: bool = False


@dataclass(slots=True)
class TaskState:
    task_id: str
    workflow_id: str
    index: int
    spec: TaskSpec
    claims: dict[int, dict[str, Claim]] = field(default_factory=dict)
    started: set[tuple[int, str]] = field(default_factory=set)
    results: dict[Stamp, Outcome] = field(default_factory=dict)  # keyed by stamp: idempotent
    fails: dict[tuple[int, str], Outcome] = field(default_factory=dict)

    @property
    def attempt(self) -> int:
        """The highest attempt anyone has claimed (0: never claimed)."""
        return max(self.claims, default=0)

    def owner(self, attempt: int | None = None) -> Claim | None:
        """The winning claim of an attempt: highest rendezvous score, deterministic tiebreak."""
        claims = self.claims.get(self.attempt if attempt is None else attempt)
        if not claims:
            return None
        best: Claim | None = None
        for c in claims.values():
            if best is None or claim_beats(self.task_id, (c.peer, c.capacity), (best.peer, best.capacity)):
                best = c
        return best

    def holds_claim(self, peer: str, attempt: int) -> bool:
        return peer in self.claims.get(attempt, ())

    @property
    def valid_results(self) -> list[Outcome]:
        return [o for o in self.results.values() if self.holds_claim(o.peer, o.attempt)]

    @property
    def result(self) -> Outcome | None:
        """The result that stands: results from the owner of their attempt (the winning claim)
        come before those of losing claimants, then the earliest causal stamp. So a peer that
        merely claimed too (a race, or a forger writing a shallow claim + done) never replaces
        the owner's result; among owners' results, later duplicates never replace the first."""
        valid = self.valid_results
        if not valid:
            return None
        owned = [o for o in valid if (own := self.owner(o.attempt)) is not None and own.peer == o.peer]
        return min(owned or valid, key=lambda o: o.stamp)

    def fail_for(self, attempt: int) -> Outcome | None:
        """The failure recorded for an attempt, by its owner or as a lease expiry; the earliest
        stamp when there are several (never arrival order)."""
        owner = self.owner(attempt)
        found = [
            f for (a, peer), f in self.fails.items()
            if a == attempt and (f.expired or (owner is not None and peer == owner.peer))
        ]
        return min(found, key=lambda f: f.stamp) if found else None

    def errors(self) -> list[dict[str, Any]]:
        """Every failed attempt's error, oldest first."""
        out = [
            {"attempt": f.attempt, "peer": f.peer, "error": f.error, "expired": f.expired}
            for f in sorted(self.fails.values(), key=lambda o: o.stamp)
            if f.expired or self.holds_claim(f.peer, f.attempt)
        ]
        for attempt in sorted(self.claims):
            for c in self.claims[attempt].values():
                if c.supersedes:
                    out.append({"attempt": attempt - 1, "peer": None, "error": c.supersedes, "expired": True})
                    break
        return sorted(out, key=lambda e: e["attempt"])

    def status(self, cancelled: bool, max_attempts: int) -> TaskStatus:
        if self.result is not None:
            return TaskStatus.DONE
        if cancelled:
            return TaskStatus.CANCELLED
        attempt = self.attempt
        if attempt == 0:
            return TaskStatus.QUEUED
        fail = self.fail_for(attempt)
        if fail is not None:
            if not fail.retryable or attempt >= max_attempts:
                return TaskStatus.FAILED
            return TaskStatus.QUEUED  # the next attempt is up for claiming
        owner = self.owner()
        assert owner is not None
        return TaskStatus.RUNNING if (attempt, owner.peer) in self.started else TaskStatus.CLAIMED


@dataclass(slots=True)
class WorkflowState:
    workflow_id: str
    name: str
    tag: WorkflowTag
    submitter: str
    created_at: float
    task_ids: list[str]
    order: int  # local fold order, used only to break heap ties
    priority: int
    priority_stamp: Stamp
    cancelled: bool = False
    submit_stamp: Stamp = (0, b"", 0)


@dataclass(slots=True)
class Rejection:
    event_cid: bytes
    author: str
    op: str
    reason: str


@dataclass
class State:
    """Everything derived from the clock. Mutated only by ``apply_event``."""

    max_attempts: int = 3
    workflows: dict[str, WorkflowState] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)  # malformed ops
    orphans: dict[str, dict[Stamp, tuple[Any, str]]] = field(default_factory=dict)
    events: int = 0
    # Derived caches, kept current by ``refresh`` for the tasks each event touches, so status
    # and progress reads cost O(1) per task instead of re-deriving every task on each read.
    _status: dict[str, TaskStatus] = field(default_factory=dict, repr=False)
    _counts: dict[str, dict[TaskStatus, int]] = field(default_factory=dict, repr=False)
    _claimed: set[str] = field(default_factory=set, repr=False)  # tasks ever claimed
    _claimed_per_wf: dict[str, int] = field(default_factory=dict, repr=False)

    def refresh(self, task_ids: Iterable[str]) -> None:
        """Recompute the cached status of these tasks and their workflows' counts."""
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is None:
                continue
            wid = task.workflow_id
            counts = self._counts.setdefault(wid, dict.fromkeys(TaskStatus, 0))
            new = task.status(self.workflows[wid].cancelled, self.max_attempts)
            old = self._status.get(tid)
            if old is not new:
                if old is not None:
                    counts[old] -= 1
                counts[new] += 1
                self._status[tid] = new
            if task.claims and tid not in self._claimed:
                self._claimed.add(tid)
                self._claimed_per_wf[wid] = self._claimed_per_wf.get(wid, 0) + 1

    def forged(self) -> list[Rejection]:
        """Ops from a peer that holds no claim on the attempt they speak for."""
        out = []
        for t in self.tasks.values():
            for o in t.results.values():
                if not t.holds_claim(o.peer, o.attempt):
                    out.append(Rejection(o.stamp[1], o.peer, "task.done", "task.done for a claim its author does not hold"))
            for f in t.fails.values():
                if not f.expired and not t.holds_claim(f.peer, f.attempt):
                    out.append(Rejection(f.stamp[1], f.peer, "task.fail", "task.fail for a claim its author does not hold"))
        return out

    def task_status(self, task: TaskState) -> TaskStatus:
        cached = self._status.get(task.task_id)
        return cached if cached is not None else task.status(self.workflows[task.workflow_id].cancelled, self.max_attempts)

    def workflow_status(self, wf: WorkflowState) -> WorkflowStatus:
        counts = self.counts(wf)
        total = len(wf.task_ids)
        if counts[TaskStatus.DONE] == total:  # every task ran: a late cancel changes nothing
            return WorkflowStatus.COMPLETED
        if wf.cancelled:
            return WorkflowStatus.CANCELLED
        if counts[TaskStatus.DONE] + counts[TaskStatus.FAILED] + counts[TaskStatus.CANCELLED] == total:
            return WorkflowStatus.FAILED
        if counts[TaskStatus.QUEUED] == total and not self._claimed_per_wf.get(wf.workflow_id):
            return WorkflowStatus.PENDING
        return WorkflowStatus.RUNNING

    def counts(self, wf: WorkflowState) -> dict[TaskStatus, int]:
        return dict(self._counts.get(wf.workflow_id) or dict.fromkeys(TaskStatus, 0))

    def recount(self, wf: WorkflowState) -> dict[TaskStatus, int]:
        """Counts derived from scratch (tests check the caches against this)."""
        counts = dict.fromkeys(TaskStatus, 0)
        for tid in wf.task_ids:
            t = self.tasks[tid]
            counts[t.status(wf.cancelled, self.max_attempts)] += 1
        return counts

    def snapshot(self) -> dict[str, Any]:
        """A plain, comparable picture of the whole state (tests compare peers with it)."""
        out: dict[str, Any] = {}
        for wid, wf in sorted(self.workflows.items()):
            tasks = []
            for tid in wf.task_ids:
                t = self.tasks[tid]
                res = t.result
                owner = t.owner()
                tasks.append(
                    (
                        tid,
                        self.task_status(t).value,
                        t.attempt,
                        owner.peer if owner else None,
                        (res.peer, res.attempt, repr(res.result), str(res.result_cid)) if res else None,
                        len(t.valid_results),
                        tuple((e["attempt"], e["error"]) for e in t.errors()),
                    )
                )
            out[wid] = (wf.name, wf.priority, wf.tag.value, wf.cancelled, self.workflow_status(wf).value, wf.submitter, tasks)
        out["_orphans"] = sorted((k, len(v)) for k, v in self.orphans.items())
        out["_forged"] = sorted((r.event_cid, r.op, r.reason) for r in self.forged())
        return out


def apply_event(state: State, cid: bytes, author: str, height: int, ops: Iterable[Any]) -> set[str]:
    """Fold one event into ``state``; returns the ids of tasks (and ``wf:<id>``) it touched.

    Parents must have been applied first (the clock guarantees causal delivery).
    """
    state.events += 1
    touched: set[str] = set()
    for index, raw in enumerate(ops):
        stamp: Stamp = (height, cid, index)
        try:
            op = parse_op(raw)
        except ValidationError as exc:
            name = raw.get("op", "?") if isinstance(raw, dict) else "?"
            state.rejected.append(Rejection(cid, author, str(name), f"malformed op: {exc.errors()[0]['msg']}"))
            continue
        _apply_op(state, op, author, stamp, touched)
    state.refresh(t for t in touched if not t.startswith("wf:"))
    return touched


def _apply_op(state: State, op: Any, author: str, stamp: Stamp, touched: set[str]) -> None:
    if isinstance(op, SubmitOp):
        _submit(state, op, author, stamp, touched)
        return

    if isinstance(op, (CancelOp, ReprioritizeOp)):
        wf = state.workflows.get(op.workflow_id)
        if wf is None:
            state.orphans.setdefault(f"wf:{op.workflow_id}", {})[stamp] = (op, author)
            return
        if isinstance(op, CancelOp):
            wf.cancelled = True
        elif stamp > wf.priority_stamp:
            wf.priority, wf.priority_stamp = op.priority, stamp
        touched.update(wf.task_ids)
        touched.add(f"wf:{wf.workflow_id}")
        return

    task = state.tasks.get(op.task_id)
    if task is None:
        state.orphans.setdefault(op.task_id, {})[stamp] = (op, author)
        return
    touched.add(task.task_id)
    touched.add(f"wf:{task.workflow_id}")
    if isinstance(op, ClaimOp):
        if op.attempt > state.max_attempts:  # never a valid attempt on any peer (same config)
            state.rejected.append(Rejection(stamp[1], author, op.op, "attempt beyond max_attempts"))
            return
        claims = task.claims.setdefault(op.attempt, {})
        old = claims.get(author)
        if old is None or stamp < old.stamp:  # a forked author's claims: the earliest stamp counts
            claims[author] = Claim(author, op.capacity, stamp, op.supersedes)
    elif isinstance(op, StartOp):
        task.started.add((op.attempt, author))
    elif isinstance(op, DoneOp):
        if op.result is not None or op.result_cid is not None:
            task.results[stamp] = Outcome(
                author, op.attempt, stamp, result=op.result, result_cid=op.result_cid, stats=dict(op.stats)
            )
    elif isinstance(op, FailOp):
        key = (op.attempt, author)
        new = Outcome(author, op.attempt, stamp, error=op.error, retryable=op.retryable, expired=op.expired)
        old = task.fails.get(key)
        if old is None or new.stamp < old.stamp:
            task.fails[key] = new


def _submit(state: State, op: SubmitOp, author: str, stamp: Stamp, touched: set[str]) -> None:
    if not op.workflow_id.startswith(submitter_prefix(author)):
        # only the peer an id is bound to may define it (a set-based rule: no race on who's first)
        state.rejected.append(Rejection(stamp[1], author, op.op, "workflow id not bound to its submitter"))
        return
    existing = state.workflows.get(op.workflow_id)
    if existing is not None and existing.submit_stamp <= stamp:
        return  # a later duplicate id: the earlier submit defines the workflow
    tids = [task_id_for(op.workflow_id, i) for i in range(len(op.tasks))]
    old_tasks = {tid: state.tasks.pop(tid) for tid in (existing.task_ids if existing else [])}
    for tid in old_tasks:  # the caches are rebuilt for the winning definition below
        state._status.pop(tid, None)
        state._claimed.discard(tid)
    state._counts.pop(op.workflow_id, None)
    state._claimed_per_wf.pop(op.workflow_id, None)
    wf = WorkflowState(
        workflow_id=op.workflow_id,
        name=op.name,
        tag=op.tag,
        submitter=author,
        created_at=op.created_at,
        task_ids=tids,
        order=existing.order if existing else len(state.workflows),
        priority=op.priority,
        priority_stamp=stamp,
        submit_stamp=stamp,
        cancelled=existing.cancelled if existing else False,
    )
    if existing is not None and existing.priority_stamp > existing.submit_stamp:
        wf.priority, wf.priority_stamp = existing.priority, existing.priority_stamp
    state.workflows[op.workflow_id] = wf
    for i, (tid, spec) in enumerate(zip(tids, op.tasks)):
        task = TaskState(task_id=tid, workflow_id=op.workflow_id, index=i, spec=spec)
        old = old_tasks.pop(tid, None)
        if old is not None:  # keep what was said about the task id; it is a set, not a history
            task.claims, task.started, task.results, task.fails = old.claims, old.started, old.results, old.fails
        state.tasks[tid] = task
    for tid, old in old_tasks.items():  # task ids the winning submit lacks: back to waiting
        for attempt, claims in old.claims.items():
            for c in claims.values():
                claim = ClaimOp(op="task.claim", task_id=tid, attempt=attempt, capacity=c.capacity, supersedes=c.supersedes)
                state.orphans.setdefault(tid, {})[c.stamp] = (claim, c.peer)
    touched.update(tids)
    touched.add(f"wf:{op.workflow_id}")
    for key in [f"wf:{op.workflow_id}", *tids]:
        for when, (orphan, who) in sorted(state.orphans.pop(key, {}).items()):
            _apply_op(state, orphan, who, when, touched)
