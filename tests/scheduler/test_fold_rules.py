"""The fold's rules one by one: continuation claims (pause and resume), terminal precedence,
set-based errors, what control ops touch, op length limits, and bounded memory for ops that
name unknown tasks (issue 7, items 2-4, 6, 10 and "Bad input")."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.scheduler import views
from p2p.scheduler.assignment import claim_beats
from p2p.scheduler.ops import MAX_ERROR_CHARS, parse_op, submitter_prefix
from p2p.scheduler.state import REJECTIONS_KEPT, State, TaskStatus, WorkflowStatus, apply_event

from test_fold_agreement import Dag, causal_orders, fold  # noqa: E402  (same folder)

W = submitter_prefix("A") + "5" * 16
T0, T1 = f"{W}/0", f"{W}/1"


def _submit(n: int = 1) -> dict[str, Any]:
    return {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
            "tasks": [{"model": "m", "input": f"x{i}"} for i in range(n)]}


def claim(attempt: int, **extra: Any) -> dict[str, Any]:
    return {"op": "task.claim", "task_id": T0, "attempt": attempt, "capacity": 1.0, **extra}


def start(attempt: int) -> dict[str, Any]:
    return {"op": "task.start", "task_id": T0, "attempt": attempt}


def done(attempt: int, v: Any = 1) -> dict[str, Any]:
    return {"op": "task.done", "task_id": T0, "attempt": attempt, "result": {"v": v}}


def expire(attempt: int, why: str = "silent", task: str = T0) -> dict[str, Any]:
    return {"op": "task.fail", "task_id": task, "attempt": attempt, "error": why, "retryable": True, "expired": True}


def _loser_and_winner(task: str) -> tuple[str, str]:
    """Two peer ids where the first loses a plain claim race to the second."""
    a, b = "P", "Q"
    return (a, b) if claim_beats(task, (b, 1.0), (a, 1.0)) else (b, a)


def _status_view(state: State) -> dict[str, Any]:
    return views.workflow_status(state, state.workflows[W], include_results=True, offset=0, limit=100,
                                 load_block=lambda cid: None)


# ----------------------------------------------------------------- continuation (item 4)


def test_a_started_owner_that_was_superseded_while_paused_keeps_its_task() -> None:
    """P owns and starts attempt 1, is paused; A (the attempt's judge) records it lost and Q
    (which outscores P) claims attempt 2. P resumes and re-asserts with a continuation: it owns
    attempt 2 on every peer, whatever the order, the task stays running, and P's result for
    attempt 1 stands."""
    paused, rival = _loser_and_winner(T0)
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    p1 = dag.add(paused, [claim(1), start(1)], [s.idx])
    x1 = dag.add("A", [expire(1, f"owner {paused} silent for over 10 s")], [p1.idx])
    q2 = dag.add(rival, [claim(2)], [x1.idx])
    cont = dag.add(paused, [claim(2, continues=True)], [q2.idx])
    for order in causal_orders(dag, random.Random(7), 4):
        state = fold(dag, order)
        task = state.tasks[T0]
        assert task.owner(2).peer == paused
        assert state.task_status(task) is TaskStatus.RUNNING  # its start of attempt 1 counts
    dag.add(paused, [done(1, "from the paused owner")], [cont.idx])
    for order in causal_orders(dag, random.Random(8), 4):
        state = fold(dag, order)
        task = state.tasks[T0]
        assert state.task_status(task) is TaskStatus.DONE
        view = _status_view(state)["tasks"][0]
        assert view["peer"] == paused and view["result"] == {"v": "from the paused owner"}
        assert view["attempts"] == 2
        assert view["errors"] == [{"attempt": 1, "peer": "A", "error": f"owner {paused} silent for over 10 s", "expired": True}]


def test_a_continuation_needs_the_previous_owner_and_its_start() -> None:
    paused, rival = _loser_and_winner(T0)
    # not started: an ordinary claim, the score decides (the rival wins)
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    p1 = dag.add(paused, [claim(1)], [s.idx])
    x1 = dag.add("A", [expire(1)], [p1.idx])
    q2 = dag.add(rival, [claim(2)], [x1.idx])
    dag.add(paused, [claim(2, continues=True)], [q2.idx])
    assert fold(dag, dag.events).tasks[T0].owner(2).peer == rival
    # not the owner of attempt 1: "continues" is just a flag on an ordinary claim
    third = "R" if not claim_beats(T0, ("R", 1.0), (rival, 1.0)) else "S"
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    p1 = dag.add(paused, [claim(1), start(1)], [s.idx])
    x1 = dag.add("A", [expire(1)], [p1.idx])
    q2 = dag.add(rival, [claim(2)], [x1.idx])
    dag.add(third, [claim(2, continues=True)], [q2.idx])
    assert fold(dag, dag.events).tasks[T0].owner(2).peer == rival


def test_a_result_for_an_earlier_attempt_from_its_owner_stands() -> None:
    paused, rival = _loser_and_winner(T0)
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    p1 = dag.add(paused, [claim(1), start(1)], [s.idx])
    x1 = dag.add("A", [expire(1)], [p1.idx])
    dag.add(rival, [claim(2), start(2)], [x1.idx])
    dag.add(paused, [done(1, "first")], [])
    for order in causal_orders(dag, random.Random(9), 4):
        state = fold(dag, order)
        task = state.tasks[T0]
        assert state.task_status(task) is TaskStatus.DONE
        assert task.result is not None and task.result.peer == paused and task.result.attempt == 1


# ------------------------------------------------------------------- terminal (item 10)


def test_a_result_after_the_task_failed_for_good_is_shown_but_the_task_stays_failed() -> None:
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    b = dag.add("B", [claim(1), {"op": "task.fail", "task_id": T0, "attempt": 1, "error": "bad input",
                                 "retryable": False}], [s.idx])
    before = fold(dag, dag.events)
    assert before.workflow_status(before.workflows[W]) is WorkflowStatus.FAILED
    dag.add("B", [done(1, "late")], [b.idx])  # written after it saw the failure
    state = fold(dag, dag.events)
    assert state.workflow_status(state.workflows[W]) is WorkflowStatus.FAILED
    view = _status_view(state)["tasks"][0]
    assert view["state"] == "failed" and view["error"] == "bad input"
    assert view["late_results"] == [{"peer": "B", "attempt": 1}]
    assert "result" not in view


def test_a_cancel_written_after_completion_changes_nothing_and_one_before_is_for_good() -> None:
    dag = Dag()
    s = dag.add("A", [_submit(2)], [])
    b = dag.add("B", [claim(1), {"op": "task.claim", "task_id": T1, "attempt": 1, "capacity": 1.0}], [s.idx])
    d0 = dag.add("B", [done(1)], [])
    # a cancel concurrent with the last result: the workflow is cancelled for good
    dag.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [d0.idx])
    d1 = dag.add("B", [{"op": "task.done", "task_id": T1, "attempt": 1, "result": {"v": 2}}], [])
    for order in causal_orders(dag, random.Random(10), 4):
        state = fold(dag, order)
        wf = state.workflows[W]
        assert state.workflow_status(wf) is WorkflowStatus.CANCELLED
        assert [state.task_status(state.tasks[t]).value for t in wf.task_ids] == ["done", "done"]
    # a cancel written after everything finished: ignored
    dag2 = Dag()
    s = dag2.add("A", [_submit(2)], [])
    dag2.add("B", [claim(1), {"op": "task.claim", "task_id": T1, "attempt": 1, "capacity": 1.0}], [s.idx])
    last = dag2.add("B", [done(1), {"op": "task.done", "task_id": T1, "attempt": 1, "result": {"v": 2}}], [])
    dag2.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [last.idx])
    state = fold(dag2, dag2.events)
    assert state.workflow_status(state.workflows[W]) is WorkflowStatus.COMPLETED
    assert state.workflows[W].late_cancels == 1 and not state.workflows[W].cancelled
    del b, d1


def test_a_done_before_its_claim_is_a_forgery() -> None:
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    d = dag.add("B", [done(1, "forged")], [s.idx])
    dag.add("B", [claim(1)], [d.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.CLAIMED
    assert [r.reason for r in state.forged()] == ["task.done for a claim its author does not hold"]


# -------------------------------------------------------------- errors are set-based (item 2)


def test_errors_come_from_counted_expiries_in_stamp_order_whatever_the_arrival_order() -> None:
    """The judge A and, concurrently, C (a suspicion) and then D (concurring with C) record
    attempt 1 lost: the errors list the counted expiries by stamp, never C's lone suspicion."""
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    b = dag.add("B", [claim(1)], [s.idx])
    dag.add("A", [expire(1, "reason from A")], [b.idx])
    c = dag.add("C", [expire(1, "reason from C")], [b.idx])
    dag.add("D", [expire(1, "reason from D")], [c.idx])
    answers = set()
    for order in causal_orders(dag, random.Random(11), 8):
        state = fold(dag, order)
        errors = state.tasks[T0].errors()
        answers.add(repr(errors))
        assert sorted(e["peer"] for e in errors) == ["A", "D"]
    assert len(answers) == 1


# ------------------------------------------------------- control ops cost what they change (item 3)


def test_a_reprioritise_touches_only_the_workflow_and_a_cancel_only_unfinished_tasks() -> None:
    dag = Dag()
    s = dag.add("A", [_submit(4)], [])
    b = dag.add("B", [claim(1), done(1)], [s.idx])
    r = dag.add("A", [{"op": "workflow.reprioritize", "workflow_id": W, "priority": 1}], [b.idx])
    c = dag.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [r.idx])
    c2 = dag.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [c.idx])
    state = State()
    touched = {}
    for ev in dag.events:
        touched[ev.idx] = apply_event(state, ev.cid, ev.author, ev.height, ev.ops,
                                      parents=[dag.events[p].cid for p in ev.parents], seq=ev.seq)
    assert touched[r.idx] == {f"wf:{W}"}
    assert state.workflows[W].priority == 1
    assert touched[c.idx] == {f"wf:{W}", f"{W}/1", f"{W}/2", f"{W}/3"}  # task 0 is done: unchanged
    assert touched[c2.idx] == {f"wf:{W}"}  # already cancelled: nothing changes


# ------------------------------------------------------------------- limits and bad input


@pytest.mark.parametrize("op", [
    {"op": "task.claim", "task_id": "x" * 10_000, "attempt": 1, "capacity": 1.0},
    {"op": "task.claim", "task_id": W + "/0/0", "attempt": 1, "capacity": 1.0},
    {"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": float("inf")},
    {"op": "task.start", "task_id": T0, "attempt": 101},
    {"op": "workflow.cancel", "workflow_id": "w" * 1_000_000},
    {"op": "workflow.reprioritize", "workflow_id": "short", "priority": 1},
    {"op": "workflow.submit", "workflow_id": W, "name": "n" * 513, "priority": 5, "tag": "p2p-eligible",
     "tasks": [{"model": "m", "input": "x"}]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "tasks": [{"model": "m", "input": "x" * 100_001}]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "tasks": [{"model": "m", "input": "x", "params": {str(i): i for i in range(65)}}]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "created_at": float("nan"), "tasks": [{"model": "m", "input": "x"}]},
    # the compact form: exactly one form, and the same bounds per input and on the template
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "tasks": [{"model": "m", "input": "x"}], "template": {"model": "m"}, "inputs": ["x"]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible", "inputs": ["x"]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "template": {"model": "m"}},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "template": {"model": "m"}, "inputs": []},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "template": {"model": "m"}, "inputs": ["x" * 100_001]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "template": {"model": "m", "input": "x"}, "inputs": ["x"]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "template": {"model": "m", "params": {str(i): i for i in range(65)}}, "inputs": ["x"]},
    {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
     "template": {"model": "m"}, "inputs": ["x"] * 100_001},
    {"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": list(range(200_001))}},
    {"op": "task.done", "task_id": T0, "attempt": 1, "result": {"v": 1}, "stats": {str(i): 0 for i in range(65)}},
    {"op": "task.done", "task_id": T0, "attempt": 1, "result": {"k" * 257: 1}},
    {"op": "task.claim", "task_id": T0, "attempt": 1, "capacity": 1.0, "supersedes": 5},
])
def test_every_field_is_bounded_and_an_op_over_a_limit_is_rejected(op: dict[str, Any]) -> None:
    state = State()
    apply_event(state, b"s", "A", 0, [_submit()], parents=[], seq=1)
    before = state.snapshot()
    apply_event(state, b"x", "B", 1, [op], parents=[b"s"], seq=1)
    assert state.rejected_total == 1 and state.rejected[-1].reason.startswith("malformed op")
    assert state.snapshot() == before


def test_a_long_error_is_cut_not_rejected() -> None:
    op = parse_op({"op": "task.fail", "task_id": T0, "attempt": 1, "error": "e" * 1_000_000})
    assert len(op.error) <= MAX_ERROR_CHARS and op.error.endswith("(truncated)")
    op = parse_op(claim(2, supersedes="s" * 50_000))
    assert len(op.supersedes) <= MAX_ERROR_CHARS


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.sampled_from(
        ["op", "task_id", "attempt", "workflow_id", "result", "tasks"]), inner, max_size=4),
    max_leaves=20,
)
OP_NAMES = st.sampled_from(["workflow.submit", "task.claim", "task.start", "task.done", "task.fail",
                            "workflow.cancel", "workflow.reprioritize", "other"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(JUNK, st.builds(lambda name, body: {**body, "op": name} if isinstance(body, dict) else body,
                                          OP_NAMES, JUNK)), min_size=1, max_size=6))
def test_junk_ops_never_crash_the_fold(ops: list[Any]) -> None:
    state = State()
    apply_event(state, b"s", "A", 0, [_submit()], parents=[], seq=1)
    apply_event(state, b"j", "B", 1, ops, parents=[b"s"], seq=1)
    apply_event(state, b"k", "C", 0, ops)  # the old, parentless call too
    assert set(state.workflows) == {W}


def test_ops_naming_unknown_tasks_cost_no_memory() -> None:
    """102,400 ops about tasks no submit defines: nothing is held for them (the issue measured
    +121 MiB per peer, never freed); a counter and the last few rejections remain."""
    state = State()
    apply_event(state, b"s", "A", 0, [_submit()], parents=[], seq=1)
    unknown_wf = submitter_prefix("M") + "e" * 16
    per_event = 1024
    for e in range(100):
        ops = [{"op": "task.claim", "task_id": f"{unknown_wf if i % 2 else W}/{1 + e * per_event + i}",
                "attempt": 1, "capacity": 1.0} for i in range(per_event)]
        apply_event(state, e.to_bytes(4, "big") + b"junk", "M", 1, ops, parents=[b"s"], seq=e + 1)
    assert state.rejected_total == 100 * per_event
    assert len(state.rejected) <= 2 * REJECTIONS_KEPT
    assert len(state.last_rejected) == REJECTIONS_KEPT  # the last event's first rejections
    assert list(state.tasks) == [T0] and state.undefined == {} and state.orphans == {}


def test_one_events_submits_share_the_task_slot_bound() -> None:
    """Compact submits cost a few bytes a task: the submits of one event together may define at
    most MAX_TASKS task slots (the one that crosses it is rejected), or one 2 MiB event could
    make every peer hold millions of tasks. Empty inputs are malformed."""
    from p2p.scheduler.ops import MAX_TASKS, submitter_prefix

    def wid(i: int) -> str:
        return submitter_prefix("A") + f"{i:016x}"

    big = MAX_TASKS // 2
    ops = [{"op": "workflow.submit", "workflow_id": wid(i), "name": "n", "priority": 5, "tag": "p2p-eligible",
            "template": {"model": "m"}, "inputs": ["x"] * big} for i in range(3)]
    state = State()
    apply_event(state, b"s", "A", 0, ops, parents=[], seq=1)
    assert sorted(state.workflows) == sorted([wid(0), wid(1)]) and state.rejected_total == 1
    assert "over 100000 task slots" in state.rejected[-1].reason
    state = State()
    apply_event(state, b"e", "A", 0, [{"op": "workflow.submit", "workflow_id": wid(9), "name": "n", "priority": 5,
                                      "tag": "p2p-eligible", "template": {"model": "m"}, "inputs": ["x", ""]}],
                parents=[], seq=1)
    assert not state.workflows and state.rejected_total == 1
