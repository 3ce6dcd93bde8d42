"""What a fold may cost, counted in work rather than seconds: a hostile peer must not be able
to make resolving one task's owner explode. 40 authors claim every attempt of one task with
``continues: true`` and a start on every attempt, and two peers record every attempt lost (an
expiry and a concurring one, so each next attempt may be claimed). Resolving the owner from
scratch must stay polynomial in the records (each claim's and expiry's verdict is derived once,
and shared with the views of the task's past), not grow as 40 ** attempts."""

from __future__ import annotations

from unittest import mock

from p2p.scheduler.state import TaskState

from test_fold_agreement import Dag, fold  # noqa: E402  (same folder)
from test_fold_rules import T0, W, _submit, expire  # noqa: E402


def test_resolving_an_owner_among_many_continuation_claims_is_polynomial() -> None:
    dag = Dag()
    root = dag.add("A", [_submit()], [])
    authors = [f"P{i:02d}" for i in range(40)]
    prev = [root.idx]
    for attempt in (1, 2, 3):
        layer = []
        for who in authors:
            ops = [{"op": "task.claim", "task_id": T0, "attempt": attempt, "capacity": 1.0, "continues": True},
                   {"op": "task.start", "task_id": T0, "attempt": attempt}]
            layer.append(dag.add(who, ops, prev).idx)
        if attempt < 3:
            x = dag.add("X1", [expire(attempt)], layer)
            prev = [dag.add("X2", [expire(attempt)], [x.idx]).idx]
    state = fold(dag, dag.events, max_attempts=3)
    task = state.tasks[T0]
    task.changed()  # from scratch
    calls = 0
    real = TaskState.owner

    def counting(self: TaskState, attempt: int | None = None) -> object:
        nonlocal calls
        calls += 1
        return real(self, attempt)

    with mock.patch.object(TaskState, "owner", counting):
        owner = task.owner()
    assert owner is not None and owner.peer in authors and task.attempt == 3
    records = sum(len(c) for c in task.claims.values()) + len(task.fails)
    assert calls <= 10 * records, f"owner() ran {calls} times to resolve one task's owner ({records} records)"
    assert state.workflows[W].task_ids == [T0]
