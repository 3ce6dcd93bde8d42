"""The workflow-state fold: convergence under any causal delivery order, and its rules."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.scheduler.assignment import claim_beats
from p2p.scheduler.ops import submitter_prefix
from p2p.scheduler.state import State, TaskStatus, WorkflowStatus, apply_event

from test_fold_agreement import ADVERT, causal_orders  # noqa: E402  (same folder; works on this Dag too)

PEERS = ["peerA", "peerB", "peerC"]
W1 = submitter_prefix("peerA") + "1" * 16  # workflow ids are bound to their submitter
W = submitter_prefix("A") + "2" * 16
T0, T1 = f"{W}/0", f"{W}/1"


@dataclass
class Ev:
    cid: bytes
    author: str
    parents: list[int]
    ops: list[dict[str, Any]]
    height: int = 0
    idx: int = 0
    seq: int = 1


@dataclass
class Dag:
    events: list[Ev] = field(default_factory=list)
    last_of: dict[str, int] = field(default_factory=dict)

    def add(self, author: str, ops: list[dict[str, Any]], extra_parents: list[int]) -> Ev:
        if author not in self.last_of:
            ops = [ADVERT, *ops]  # every author advertises the model first, as a node does
        parents = set(extra_parents)
        if author in self.last_of:
            parents.add(self.last_of[author])  # an author's events form a chain, as in the clock
        height = 1 + max((self.events[p].height for p in parents), default=-1)
        idx = len(self.events)
        cid = hashlib.sha256(repr((author, idx, ops)).encode()).digest()
        seq = self.events[self.last_of[author]].seq + 1 if author in self.last_of else 1
        ev = Ev(cid, author, sorted(parents), ops, height, idx, seq)
        self.events.append(ev)
        self.last_of[author] = idx
        return ev


def fold(order: list[Ev], max_attempts: int = 3, dag: Dag | None = None) -> State:
    """Fold events the way the scheduler does: with their parents (cids) and seq."""
    by_idx = {e.idx: e for e in (dag.events if dag else order)}
    state = State(max_attempts=max_attempts)
    for ev in order:
        apply_event(state, ev.cid, ev.author, ev.height, ev.ops,
                    parents=[by_idx[p].cid for p in ev.parents], seq=ev.seq)
    return state


op_kinds = st.sampled_from(["claim", "start", "done", "fail", "cancel", "reprio", "forged_done", "garbage", "expire"])


@st.composite
def scenarios(draw: Any) -> Dag:
    dag = Dag()
    n_tasks = draw(st.integers(1, 4))
    dag.add("peerA", [{"op": "workflow.submit", "workflow_id": W1, "name": "wf", "priority": 5,
                       "tag": "p2p-eligible", "tasks": [{"model": "m", "input": f"t{i}"} for i in range(n_tasks)]}], [])
    for _ in range(draw(st.integers(1, 25))):
        author = draw(st.sampled_from(PEERS))
        ops = []
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(op_kinds)
            tid = f"{W1}/{draw(st.integers(0, n_tasks))}"  # n_tasks itself is an unknown task
            attempt = draw(st.integers(1, 3))
            if kind == "claim":
                ops.append({"op": "task.claim", "task_id": tid, "attempt": attempt, "capacity": float(draw(st.integers(1, 4)))})
            elif kind == "start":
                ops.append({"op": "task.start", "task_id": tid, "attempt": attempt})
            elif kind in ("done", "forged_done"):
                ops.append({"op": "task.done", "task_id": tid, "attempt": attempt, "result": {"v": draw(st.integers(0, 9))}})
            elif kind == "fail":
                ops.append({"op": "task.fail", "task_id": tid, "attempt": attempt, "error": "boom", "retryable": draw(st.booleans())})
            elif kind == "expire":
                ops.append({"op": "task.fail", "task_id": tid, "attempt": attempt, "error": "silent", "retryable": False, "expired": True})
            elif kind == "cancel":
                ops.append({"op": "workflow.cancel", "workflow_id": draw(st.sampled_from([W1, "nope"]))})
            elif kind == "reprio":
                ops.append({"op": "workflow.reprioritize", "workflow_id": W1, "priority": draw(st.integers(1, 10))})
            else:
                ops.append({"op": "task.claim", "task_id": tid, "attempt": -1})
        existing = list(range(len(dag.events)))
        extra = draw(st.lists(st.sampled_from(existing), max_size=2)) if existing else []
        dag.add(author, ops, extra)
    return dag


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_any_causal_order_gives_the_same_state(dag: Dag, rnd: random.Random) -> None:
    orders = causal_orders(dag, rnd, 4)
    for order in orders:  # the incremental caches always equal a derivation from scratch
        st = fold(order)
        for wf in st.workflows.values():
            assert st.counts(wf) == st.recount(wf)
            for tid in wf.task_ids:
                t = st.tasks[tid]
                assert st.task_status(t) is t.status(wf.cancelled, st.max_attempts)
    snaps = [fold(o).snapshot() for o in orders]
    assert all(s == snaps[0] for s in snaps)
    rejected = [sorted((r.event_cid, r.op, r.reason) for r in fold(o).rejected) for o in orders]
    assert all(r == rejected[0] for r in rejected)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_duplicate_delivery_changes_nothing(dag: Dag) -> None:
    once = fold(dag.events).snapshot()
    twice = fold(dag.events + dag.events).snapshot()
    assert once == twice


def _submit(n: int = 2, tag: str = "p2p-eligible") -> dict[str, Any]:
    return {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": tag,
            "tasks": [{"model": "m", "input": f"x{i}"} for i in range(n)]}


def test_the_owners_first_result_stands_and_duplicates_never_replace_it() -> None:
    dag = Dag()
    dag.add("A", [_submit(1)], [])
    dag.add("B", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [0])
    dag.add("C", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [0])
    owner, other = ("B", "C") if claim_beats(T0, ("B", 1.0), ("C", 1.0)) else ("C", "B")
    first = dag.add(owner, [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 1}}], [])
    dag.add(other, [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 2}}], [first.idx])
    dag.add(owner, [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 3}}], [])
    for order in causal_orders(dag, random.Random(2), 4):
        state = fold(order)
        task = state.tasks[T0]
        assert state.task_status(task) is TaskStatus.DONE
        assert task.result is not None and task.result.result == {"v": 1} and task.result.peer == owner
        assert len(task.valid_results) == 3  # the duplicates are kept, never used


def test_done_for_someone_elses_claim_is_rejected() -> None:
    dag = Dag()
    dag.add("A", [_submit(1)], [])
    dag.add("B", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [0])
    dag.add("C", [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 9}}], [1])
    state = fold(dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.CLAIMED
    assert [r.reason for r in state.forged()] == ["task.done for a claim its author does not hold"]
    assert state.rejected == []  # well-formed, just not valid: kept out of the state, not malformed


def test_concurrent_claims_have_one_deterministic_owner() -> None:
    dag = Dag()
    dag.add("A", [_submit(1)], [])
    dag.add("B", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 2.0}], [0])
    dag.add("C", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 2.0}], [0])
    for order in causal_orders(dag, random.Random(1), 5):
        owner = fold(order).tasks[T0].owner()
        assert owner is not None
        expected = "B" if claim_beats(T0, ("B", 2.0), ("C", 2.0)) else "C"
        assert owner.peer == expected


def test_cancel_stops_queued_tasks_but_done_stays_done() -> None:
    dag = Dag()
    dag.add("A", [_submit(2)], [])
    dag.add("A", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0},
                  {"op": "task.start", "task_id": T0, "attempt": 1}], [])
    dag.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [])
    dag.add("A", [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 1}}], [])
    state = fold(dag.events)
    wf = state.workflows[W]
    assert state.task_status(state.tasks[T0]) is TaskStatus.DONE
    assert state.task_status(state.tasks[T1]) is TaskStatus.CANCELLED
    assert state.workflow_status(wf) is WorkflowStatus.CANCELLED


def test_retry_until_max_attempts_then_fail_with_every_error() -> None:
    dag = Dag()
    dag.add("A", [_submit(1)], [])
    for attempt in (1, 2, 3):
        dag.add("B", [{"op": "task.claim", "task_id": T0, "attempt": attempt, "capacity": 1.0}], [0])
        state = fold(dag.events)
        assert state.task_status(state.tasks[T0]) is TaskStatus.CLAIMED
        dag.add("B", [{"op": "task.fail", "task_id": T0, "attempt": attempt, "error": f"e{attempt}"}], [])
        state = fold(dag.events)
        want = TaskStatus.FAILED if attempt == 3 else TaskStatus.QUEUED
        assert state.task_status(state.tasks[T0]) is want
    task = fold(dag.events).tasks[T0]
    assert [e["error"] for e in task.errors()] == ["e1", "e2", "e3"]
    assert fold(dag.events).workflow_status(fold(dag.events).workflows[W]) is WorkflowStatus.FAILED


def test_reprioritize_is_last_writer_wins_on_the_causal_stamp_and_only_the_submitter_counts() -> None:
    dag = Dag()
    dag.add("A", [_submit(1)], [])
    dag.add("A", [{"op": "workflow.reprioritize", "workflow_id": W, "priority": 1}], [])
    dag.add("A", [{"op": "workflow.reprioritize", "workflow_id": W, "priority": 9}], [])
    assert fold(dag.events).workflows[W].priority == 9
    dag.add("B", [{"op": "workflow.reprioritize", "workflow_id": W, "priority": 2}], [2])
    state = fold(dag.events)
    assert state.workflows[W].priority == 9
    assert [r.reason for r in state.rejected] == ["only the workflow's submitter A may reprioritize it"]


def test_malformed_ops_are_rejected_not_fatal() -> None:
    state = State()
    apply_event(state, b"x", "A", 0, [{"op": "nope"}, "garbage", {"op": "task.claim", "task_id": T0, "attempt": 0, "capacity": 1}])
    assert len(state.rejected) == 3
    assert state.workflows == {} and state.tasks == {} and state.orphans == {}


def test_ops_that_do_not_follow_their_submit_are_dropped_in_every_order() -> None:
    """A claim concurrent with the submit is never causally justified: dropped on every peer,
    whichever arrived first, and nothing is held for it. One that follows the submit counts."""
    dag = Dag()
    dag.add("B", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [])
    submit = dag.add("A", [_submit(1)], [])
    dag.add("C", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [submit.idx])
    for order in causal_orders(dag, random.Random(4), 6):
        state = fold(order, dag=dag)
        assert state.orphans == {} and state.rejected_total == 1
        assert [r.reason for r in state.rejected] == ["op does not follow its task's submit"]
        assert state.task_status(state.tasks[T0]) is TaskStatus.CLAIMED
        assert state.tasks[T0].owner().peer == "C"


def test_a_shallow_claim_and_done_cannot_replace_the_owners_result() -> None:
    """A forger claims and completes in one event right under the submit (lower height)."""
    dag = Dag()
    submit = dag.add("A", [_submit(1)], [])
    dag.add("B", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [submit.idx])
    dag.add("B", [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": "honest"}}], [])
    rival = "M" if not claim_beats(T0, ("M", 1.0), ("B", 1.0)) else "N"
    assert not claim_beats(T0, (rival, 1.0), ("B", 1.0))
    dag.add(rival, [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0},
                    {"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": "forged"}}], [submit.idx])
    for order in causal_orders(dag, random.Random(3), 4):
        task = fold(order).tasks[T0]
        assert task.result is not None and task.result.result == {"v": "honest"}


def test_cancelling_a_completed_workflow_leaves_it_completed() -> None:
    dag = Dag()
    dag.add("A", [_submit(1)], [])
    dag.add("A", [{"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0}], [])
    dag.add("A", [{"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 1}}], [])
    dag.add("B", [{"op": "workflow.cancel", "workflow_id": W}], [2])
    state = fold(dag.events)
    assert state.workflow_status(state.workflows[W]) is WorkflowStatus.COMPLETED


def test_only_its_submitter_can_define_a_workflow_id() -> None:
    """Another peer's submit under an id bound to A is rejected on every peer, whatever the order."""
    dag = Dag()
    dag.add("A", [_submit(2)], [])
    hijack = {**_submit(1), "name": "hijacked"}
    dag.add("M", [hijack], [])  # parents=[]: height 0, the smallest stamp there is
    for order in causal_orders(dag, random.Random(5), 4):
        state = fold(order)
        wf = state.workflows[W]
        assert wf.submitter == "A" and wf.name == "n" and len(wf.task_ids) == 2
        assert [r.reason for r in state.rejected] == ["workflow id not bound to its submitter"]
