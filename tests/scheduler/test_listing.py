"""The fold's listing index (``State.listed``, what list_workflows reads) against a brute-force
sort of every workflow, after every event of any causal delivery order."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.scheduler.ops import submitter_prefix
from p2p.scheduler.state import State, WorkflowStatus, apply_event

from test_fold_agreement import Dag, causal_orders  # noqa: E402  (same folder)

AUTHORS = ["peerA", "peerB", "peerC"]
STATUSES = [None, *WorkflowStatus]


def brute_force(state: State, status: WorkflowStatus | None) -> list[str]:
    """Every workflow sorted newest first (then by id), filtered by status: the old list_workflows."""
    ordered = sorted(state.workflows.values(), key=lambda w: (-w.created_at, w.workflow_id))
    return [w.workflow_id for w in ordered if status is None or state.workflow_status(w) is status]


@st.composite
def histories(draw: Any) -> Dag:
    """Workflows from several submitters, with created_at ties, duplicate submits that redefine a
    workflow (another created_at, another size: in a forked event, which may come before the
    first submit), cancels, and task ops that move statuses."""
    dag = Dag()
    wids: list[tuple[str, str, int]] = []  # (workflow id, submitter, tasks of its first submit)
    for _ in range(draw(st.integers(1, 30))):
        author = draw(st.sampled_from(AUTHORS))
        ops: list[dict[str, Any]] = []
        fork = False
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["submit", "submit", "resubmit", "claim", "done", "fail", "cancel"]))
            mine = [w for w in wids if w[1] == author]
            if kind == "submit" or (kind == "resubmit" and not mine) or (kind != "resubmit" and not wids):
                n = draw(st.integers(1, 3))
                wid = submitter_prefix(author) + f"{len(wids):016x}"
                wids.append((wid, author, n))
                ops.append(_submit(wid, n, draw(st.sampled_from([0.0, 1.0, 2.0, 2.5]))))
            elif kind == "resubmit":  # a faulty submitter: the smallest stamp's submit defines it
                wid, _, _ = draw(st.sampled_from(mine))
                ops.append(_submit(wid, draw(st.integers(1, 3)), draw(st.sampled_from([0.0, 1.0, 3.0]))))
                fork = fork or draw(st.booleans())
            elif kind == "cancel":
                wid, _, _ = draw(st.sampled_from(mine or wids))
                ops.append({"op": "workflow.cancel", "workflow_id": wid})
            else:
                wid, _, n = draw(st.sampled_from(wids))
                tid, attempt = f"{wid}/{draw(st.integers(0, n - 1))}", draw(st.integers(1, 3))
                if kind == "claim":
                    ops.append({"op": "task.claim", "task_id": tid, "attempt": attempt, "capacity": 1.0})
                elif kind == "done":
                    ops.append({"op": "task.done", "task_id": tid, "attempt": attempt, "result": {"v": 1}})
                else:
                    ops.append({"op": "task.fail", "task_id": tid, "attempt": attempt, "error": "boom", "retryable": False})
        existing = list(range(len(dag.events)))
        dag.add(author, ops, draw(st.lists(st.sampled_from(existing), max_size=2)) if existing else [], fork=fork)
    return dag


def _submit(wid: str, n: int, created_at: float) -> dict[str, Any]:
    return {"op": "workflow.submit", "workflow_id": wid, "name": "w", "priority": 5, "tag": "p2p-eligible",
            "created_at": created_at, "tasks": [{"model": "m", "input": f"x{i}"} for i in range(n)]}


@settings(max_examples=100, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_listing_index_equals_a_brute_force_sort_after_every_event(dag: Dag, rnd: random.Random) -> None:
    by_idx = {e.idx: e for e in dag.events}
    # (the brute force reads the state alone, so the index agrees across peers whenever their
    # folds do; forked authors reusing a seq are the fold's own concern, not the index's)
    for order in causal_orders(dag, rnd, 2):
        state = State()
        for ev in order:
            apply_event(state, ev.cid, ev.author, ev.height, ev.ops, parents=[by_idx[p].cid for p in ev.parents], seq=ev.seq)
            for status in STATUSES:
                want = brute_force(state, status)
                assert [w.workflow_id for w in state.listed(status)] == want, status
                assert [w.workflow_id for w in state.listed(status, 2)] == want[:2], status


def test_listing_follows_status_and_a_redefined_created_at() -> None:
    a, b = submitter_prefix("peerA") + "a" * 16, submitter_prefix("peerA") + "b" * 16
    dag = Dag()
    dag.add("peerA", [_submit(a, 1, 1.0), _submit(b, 1, 2.0)], [])
    dag.add("peerA", [{"op": "task.claim", "task_id": f"{a}/0", "attempt": 1, "capacity": 1.0},
                      {"op": "task.done", "task_id": f"{a}/0", "attempt": 1, "result": {"v": 1}}], [])
    state = State()
    for ev in dag.events:
        apply_event(state, ev.cid, ev.author, ev.height, ev.ops, parents=[dag.events[p].cid for p in ev.parents], seq=ev.seq)
    assert [w.workflow_id for w in state.listed()] == [b, a]  # newest first
    assert [w.workflow_id for w in state.listed(WorkflowStatus.COMPLETED)] == [a]
    assert [w.workflow_id for w in state.listed(WorkflowStatus.PENDING)] == [b]
    assert state.listed(WorkflowStatus.RUNNING) == [] and state.listed(limit=1)[0].workflow_id == b
