"""Replicated verification (issue 8 item 4): a task's result stands only when distinct peers'
results agree; disagreement opens up to two reserve replicas and a strict majority decides;
otherwise the task fails with "replicas disagree", naming the peers. Decided from the events
alone: every causal order of the same events gives the same answer, field by field."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.config import SchedulerConfig
from p2p.peers.caps import PeerCaps
from p2p.scheduler import views
from p2p.scheduler.ops import submitter_prefix
from p2p.scheduler.policy import AssignmentPolicy
from p2p.scheduler.replicas import (
    SlotView,
    Vote,
    cosine_at_least,
    decide,
    results_agree,
    slots_for,
)
from p2p.scheduler.state import State, TaskStatus, WorkflowStatus

from test_fold_agreement import Dag, causal_orders, fold  # noqa: E402

W = submitter_prefix("A") + "7" * 16
RNG = np.random.default_rng(7)
BASE = RNG.standard_normal(16).astype("<f4")


def emb(vec: np.ndarray) -> dict[str, Any]:
    return {"embedding_f32": np.asarray(vec, dtype="<f4").tobytes()}


GOOD = emb(BASE)
GOOD_ROUNDED = emb(BASE + np.float32(1e-4))  # another CPU's rounding: still agrees
ZERO = emb(np.zeros(16))
OTHER = emb(RNG.standard_normal(16))


def submit(n: int, replicas: int) -> dict[str, Any]:
    return {"op": "workflow.submit", "workflow_id": W, "name": "r", "priority": 5, "tag": "p2p-eligible",
            "tasks": [{"model": "m", "input": f"x{i}"} for i in range(n)], "replicas": replicas}


def tid(n: int, index: int, slot: int) -> str:
    return f"{W}/{index + slot * n}"


def run(task: str, result: dict[str, Any], attempt: int = 1) -> list[dict[str, Any]]:
    return [{"op": "task.claim", "task_id": task, "attempt": attempt, "capacity": 1.0},
            {"op": "task.start", "task_id": task, "attempt": attempt},
            {"op": "task.done", "task_id": task, "attempt": attempt, "result": result}]


def status(state: State) -> dict[str, Any]:
    return views.workflow_status(state, state.workflows[W], include_results=True, offset=0, limit=100,
                                 load_block=lambda cid: None)


def all_orders_agree(dag: Dag, seed: int = 1, n: int = 8) -> State:
    ref = fold(dag, dag.events)
    for order in causal_orders(dag, random.Random(seed), n):
        state = fold(dag, order)
        assert state.snapshot() == ref.snapshot()
        assert status(state) == status(ref)
        for wf in state.workflows.values():
            assert state.counts(wf) == state.recount(wf)
    return ref


# ------------------------------------------------------------------------------- pure rule


def v(slot: int, peer: str, result: dict[str, Any]) -> SlotView:
    return SlotView(vote=Vote(slot, peer, result))


def test_two_agreeing_replicas_are_accepted_and_a_third_is_never_opened() -> None:
    verdict = decide(2, [v(0, "B", GOOD), v(1, "C", GOOD_ROUNDED), SlotView(), SlotView()])
    assert verdict.accepted is not None and verdict.accepted.slot == 0
    assert verdict.peers == ("B", "C") and verdict.disputed_by == () and verdict.open == 2


def test_disagreement_opens_one_reserve_and_a_majority_decides() -> None:
    waiting = decide(2, [v(0, "H", ZERO), v(1, "C", GOOD), SlotView(), SlotView()])
    assert not waiting.decided and waiting.open == 3
    verdict = decide(2, [v(0, "H", ZERO), v(1, "C", GOOD), v(2, "D", GOOD_ROUNDED), SlotView()])
    assert verdict.accepted is not None and verdict.accepted.peer == "C"
    assert verdict.peers == ("C", "D") and verdict.disputed_by == ("H",)


def test_no_majority_after_both_reserves_fails_naming_every_peer() -> None:
    results = [ZERO, GOOD, OTHER, emb(RNG.standard_normal(16))]
    verdict = decide(2, [v(i, p, r) for i, (p, r) in enumerate(zip("HCDE", results))])
    assert verdict.error is not None and verdict.error.startswith("replicas disagree")
    assert all(p in verdict.error for p in "HCDE")
    assert set(verdict.disputed_by) == set("HCDE") and verdict.accepted is None


def test_a_peer_on_two_slots_votes_once() -> None:
    """H took both open slots with the same wrong vector: one vote, so a reserve opens."""
    verdict = decide(2, [v(0, "H", ZERO), v(1, "H", ZERO), SlotView(), SlotView()])
    assert not verdict.decided and verdict.open == 3
    verdict = decide(2, [v(0, "H", ZERO), v(1, "H", ZERO), v(2, "C", GOOD), SlotView()])
    assert not verdict.decided and verdict.open == 4  # votes H, C: no two agree yet
    verdict = decide(2, [v(0, "H", ZERO), v(1, "H", ZERO), v(2, "C", GOOD), v(3, "D", GOOD)])
    # H's second slot is void: C and D are two of three distinct votes, a strict majority
    assert verdict.accepted is not None and verdict.peers == ("C", "D") and verdict.disputed_by == ("H",)
    alone = decide(2, [v(0, "H", ZERO), v(1, "H", ZERO), v(2, "H", ZERO), v(3, "H", ZERO)])
    assert alone.error is not None and alone.accepted is None  # one peer never decides alone


def fail(slot: int, peer: str, error: str) -> SlotView:
    return SlotView(vote=Vote(slot, peer, None, error=error.split(":")[0], message=error))


def test_one_peers_final_failure_is_a_vote_not_a_verdict() -> None:
    """A non-retryable failure is its owner's word: it opens a reserve like a wrong result, and
    fails the task only when distinct peers agree on the same error class."""
    one = decide(2, [v(0, "B", GOOD), fail(1, "H", "InvalidInputError: empty"), SlotView(), SlotView()])
    assert not one.decided and one.open == 3
    outvoted = decide(2, [v(0, "B", GOOD), fail(1, "H", "InvalidInputError: empty"), v(2, "C", GOOD), SlotView()])
    assert outvoted.accepted is not None and outvoted.disputed_by == ("H",)
    both = decide(2, [fail(0, "B", "InvalidInputError: empty input"), fail(1, "C", "InvalidInputError: empty"),
                      SlotView(), SlotView()])
    assert both.error == "InvalidInputError: empty input" and both.peers == ("B", "C") and both.accepted is None


def test_a_cached_or_expired_slot_is_void_and_never_a_vote() -> None:
    verdict = decide(2, [SlotView(void=True), v(1, "C", GOOD), SlotView(), SlotView()])
    assert not verdict.decided and verdict.open == 3
    verdict = decide(2, [SlotView(void=True), v(1, "C", GOOD), v(2, "D", GOOD), SlotView()])
    assert verdict.accepted is not None and verdict.peers == ("C", "D")


def test_a_scaled_vector_or_extra_fields_do_not_agree() -> None:
    assert not results_agree(GOOD, emb(BASE * np.float32(1e30)))  # same direction, not the same embedding
    assert not results_agree(GOOD, {**GOOD, "label": "pwned"}) and not results_agree(GOOD, {**GOOD, "truncated": True})
    f1 = {"predictions": [{"token": "paris", "score": 0.8}, {"token": "lyon", "score": 0.1}]}
    junk = {"predictions": [{"token": "paris", "score": 0.8}, {"token": "<script>", "score": 0.1}]}
    nan = {"predictions": [{"token": "paris", "score": float("nan")}, {"token": "lyon", "score": 0.1}]}
    assert not results_agree(f1, junk) and not results_agree(f1, nan)


def test_agreement_tolerances_per_task_kind() -> None:
    assert results_agree(GOOD, GOOD_ROUNDED) and not results_agree(GOOD, OTHER) and not results_agree(GOOD, ZERO)
    assert not results_agree(ZERO, ZERO)  # a zero vector has no direction
    c1 = {"label": "POSITIVE", "score": 0.9, "scores": {"POSITIVE": 0.9, "NEGATIVE": 0.1}}
    c2 = {"label": "POSITIVE", "score": 0.9005, "scores": {"POSITIVE": 0.9005, "NEGATIVE": 0.0995}}
    c3 = {"label": "POSITIVE", "score": 0.95, "scores": {"POSITIVE": 0.95, "NEGATIVE": 0.05}}
    assert results_agree(c1, c2) and not results_agree(c1, c3)
    assert not results_agree(c1, {**c2, "label": "NEGATIVE"})
    f1 = {"predictions": [{"token": "paris", "score": 0.8}, {"token": "lyon", "score": 0.1}]}
    f2 = {"predictions": [{"token": "paris", "score": 0.8004}, {"token": "lyon", "score": 0.0998}]}
    assert results_agree(f1, f2) and not results_agree(f1, {"predictions": [{"token": "rome", "score": 0.8}]})
    assert not results_agree(GOOD, c1) and not results_agree({"predictions": []}, {"predictions": []})
    assert results_agree({"x": 1}, {"x": 1}) and not results_agree({"x": 1}, {"x": 2})


def test_the_cosine_threshold_is_decided_exactly() -> None:
    """A pair right at the threshold gets the same answer whatever the summation order: the
    arithmetic is exact up to one correctly rounded division."""
    a = np.zeros(384, dtype="<f4")
    a[0] = 1.0
    for k in range(1, 200):
        b = a.copy()
        b[1] = np.float32(k / 4000)
        cos = 1.0 / np.sqrt(1.0 + float(b[1]) ** 2)
        want = bool(cos >= 0.999)
        assert cosine_at_least(a.tobytes(), b.tobytes(), 0.999) == want or abs(cos - 0.999) < 1e-12
        assert cosine_at_least(a.tobytes(), b.tobytes(), 0.999) == cosine_at_least(b.tobytes(), a.tobytes(), 0.999)
    assert not cosine_at_least(a.tobytes(), a.tobytes()[:-4], 0.0)
    nan = a.copy()
    nan[3] = np.nan
    assert not cosine_at_least(a.tobytes(), nan.tobytes(), 0.0)


results_st = st.sampled_from(["good", "zero", "other", "good2"])
PAYLOAD = {"good": GOOD, "good2": GOOD_ROUNDED, "zero": ZERO, "other": OTHER}


@settings(max_examples=400, deadline=None)
@given(replicas=st.integers(2, 5), data=st.data())
def test_one_hostile_peer_never_gets_a_wrong_result_accepted(replicas: int, data: st.DataObject) -> None:
    """Whatever slots one hostile peer holds and whatever it returns, with honest peers all
    returning the right answer, an accepted result is always a right one, agreed by at least
    two distinct peers."""
    n = slots_for(replicas)
    views_: list[SlotView] = []
    honest = iter(f"P{i}" for i in range(n))
    for slot in range(n):
        kind = data.draw(st.sampled_from(["hostile", "honest", "pending"]), label=f"slot{slot}")
        if kind == "hostile":
            views_.append(v(slot, "H", PAYLOAD[data.draw(results_st)]))
        elif kind == "honest":
            views_.append(v(slot, next(honest), GOOD if slot % 2 else GOOD_ROUNDED))
        else:
            views_.append(SlotView())
    verdict = decide(replicas, views_)
    if verdict.accepted is not None:
        assert results_agree(verdict.accepted.result or {}, GOOD)
        assert len(set(verdict.peers)) >= 2
        assert "H" not in verdict.peers or results_agree(
            next(x.vote.result for x in views_ if x.vote and x.vote.peer == "H") or {}, GOOD)


# --------------------------------------------------------------------------------- the fold


def test_layout_replicas_get_slots_and_old_submits_stay_as_they_were() -> None:
    dag = Dag()
    dag.add("A", [submit(3, 2)], [])
    state = fold(dag, dag.events)
    wf = state.workflows[W]
    assert wf.replicas == 2 and wf.task_ids == [f"{W}/{i}" for i in range(3)]
    assert len([t for t in state.tasks if t.startswith(W)]) == 12  # 3 tasks x (2 + 2 reserves)
    assert [state.tasks[tid(3, 1, s)].replica for s in range(4)] == [0, 1, 2, 3]
    assert [state.task_status(state.tasks[tid(3, 1, s)]) for s in range(4)] == [
        TaskStatus.QUEUED, TaskStatus.QUEUED, TaskStatus.CANCELLED, TaskStatus.CANCELLED]  # reserves dormant
    st_ = status(state)
    assert st_["total"] == 3 and st_["replicas"] == 2 and st_["state"] == "pending"
    assert [t["state"] for t in st_["tasks"]] == ["queued"] * 3


def test_honest_replicas_agree_and_the_task_is_done_in_every_order() -> None:
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    b = dag.add("B", run(tid(1, 0, 0), GOOD), [s.idx])
    dag.add("C", run(tid(1, 0, 1), GOOD_ROUNDED), [s.idx])
    state = all_orders_agree(dag)
    st_ = status(state)
    assert st_["state"] == WorkflowStatus.COMPLETED.value and st_["completed"] == 1
    row = st_["tasks"][0]
    assert row["state"] == "done" and row["peer"] == "B" and row["peers"] == ["B", "C"] and "disputed_by" not in row
    assert len(row["result"]["embedding"]) == 16
    assert state.outvoted == {}
    del b


def test_a_wrong_result_is_outvoted_by_a_reserve_replica_in_every_order() -> None:
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    h = dag.add("H", run(tid(1, 0, 0), ZERO), [s.idx])
    c = dag.add("C", run(tid(1, 0, 1), GOOD), [s.idx])
    mid = fold(dag, dag.events)
    assert status(mid)["tasks"][0]["state"] == "running"
    assert mid.task_status(mid.tasks[tid(1, 0, 2)]) is TaskStatus.QUEUED  # the reserve opened
    assert mid.task_status(mid.tasks[tid(1, 0, 3)]) is TaskStatus.CANCELLED
    dag.add("D", run(tid(1, 0, 2), GOOD_ROUNDED), [h.idx, c.idx])
    state = all_orders_agree(dag)
    row = status(state)["tasks"][0]
    assert row["state"] == "done" and row["peer"] == "C" and row["peers"] == ["C", "D"] and row["disputed_by"] == ["H"]
    assert np.allclose(row["result"]["embedding"], BASE)
    assert state.outvoted == {"H": 1}
    assert state.task_status(state.tasks[tid(1, 0, 3)]) is TaskStatus.CANCELLED


def test_no_majority_fails_the_task_with_the_peers_named() -> None:
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    h = dag.add("H", run(tid(1, 0, 0), ZERO), [s.idx])
    c = dag.add("C", run(tid(1, 0, 1), GOOD), [s.idx])
    d = dag.add("D", run(tid(1, 0, 2), OTHER), [h.idx, c.idx])
    dag.add("E", run(tid(1, 0, 3), emb(RNG.standard_normal(16))), [d.idx])
    state = all_orders_agree(dag)
    st_ = status(state)
    row = st_["tasks"][0]
    assert st_["state"] == "failed" and row["state"] == "failed"
    assert row["error"].startswith("replicas disagree") and all(p in row["error"] for p in "HCDE")
    assert sorted(row["disputed_by"]) == ["C", "D", "E", "H"]
    assert state.outvoted == {}  # nobody was outvoted: there was no majority


def test_a_result_on_a_dormant_reserve_counts_for_nothing_until_it_opens() -> None:
    """H pre-claims a reserve slot and writes a result there: the honest open slots agree, so
    the reserve never opens and H's result is not a vote."""
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    dag.add("H", run(tid(1, 0, 3), ZERO), [s.idx])
    dag.add("B", run(tid(1, 0, 0), GOOD), [s.idx])
    dag.add("C", run(tid(1, 0, 1), GOOD), [s.idx])
    state = all_orders_agree(dag)
    row = status(state)["tasks"][0]
    assert row["state"] == "done" and row["peers"] == ["B", "C"] and "disputed_by" not in row


def test_a_cancel_after_every_task_was_decided_is_late() -> None:
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    b = dag.add("B", run(tid(1, 0, 0), GOOD), [s.idx])
    c = dag.add("C", run(tid(1, 0, 1), GOOD), [s.idx])
    dag.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [b.idx, c.idx])
    state = all_orders_agree(dag)
    assert status(state)["state"] == "completed" and state.workflows[W].late_cancels == 1


def test_a_cancel_while_replicas_run_cancels_the_task() -> None:
    dag = Dag()
    s = dag.add("A", [submit(2, 2)], [])
    b = dag.add("B", run(tid(2, 0, 0), GOOD), [s.idx])
    dag.add("A", [{"op": "workflow.cancel", "workflow_id": W}], [b.idx])
    state = all_orders_agree(dag)
    st_ = status(state)
    assert st_["state"] == "cancelled" and [t["state"] for t in st_["tasks"]] == ["cancelled", "cancelled"]


def test_seals_name_slots_by_their_task_index() -> None:
    """The submitter seals each slot's result like any task's (index = the slot's task index)."""
    dag = Dag()
    s = dag.add("A", [submit(2, 2)], [])
    b = dag.add("B", run(tid(2, 1, 0), GOOD), [s.idx])
    c = dag.add("C", run(tid(2, 1, 1), GOOD), [s.idx])
    # each author's first event starts with its advert: the done op is at index 3
    seal = {"op": "workflow.accept", "workflow_id": W, "results": [[1, b.cid, 3], [3, c.cid, 3]]}
    dag.add("A", [seal], [b.idx, c.idx])
    state = all_orders_agree(dag)
    assert state.tasks[tid(2, 1, 0)].sealed() is not None and state.tasks[tid(2, 1, 1)].sealed() is not None
    assert status(state)["tasks"][1]["peers"] == ["B", "C"]


def claim_only(task: str, attempt: int = 1) -> list[dict[str, Any]]:
    return run(task, GOOD, attempt)[:1]


def test_claims_on_a_dormant_reserve_or_a_second_slot_do_not_count() -> None:
    """H pre-claims both reserves the moment the submit arrives, and takes slot 0 with a wrong
    vector; honest C runs slot 1. Its reserve claims were written before those slots opened: they
    do not count, so when slot 2 opens an honest peer takes it and the majority outvotes H. B,
    holding slot 0 of task 1, then claims slot 1 too: refused (one slot per peer)."""
    dag = Dag()
    s = dag.add("A", [submit(2, 2)], [])
    h = dag.add("H", claim_only(tid(2, 0, 2)) + claim_only(tid(2, 0, 3)) + run(tid(2, 0, 0), ZERO), [s.idx])
    c = dag.add("C", run(tid(2, 0, 1), GOOD), [s.idx])
    b = dag.add("B", run(tid(2, 1, 0), GOOD), [s.idx])
    dag.add("B", claim_only(tid(2, 1, 1)), [b.idx])
    mid = fold(dag, dag.events)
    assert mid.task_status(mid.tasks[tid(2, 0, 2)]) is TaskStatus.QUEUED  # opened, and H's claim void
    assert mid.task_status(mid.tasks[tid(2, 1, 1)]) is TaskStatus.QUEUED  # B's second slot void
    refused = sorted((r.author, r.reason.split(",")[0]) for r in mid.refused())
    assert refused == [("B", "claim on replica slot 1 by a peer holding slot 0 of the same task"),
                       ("H", "claim on replica slot 2"), ("H", "claim on replica slot 3")]
    dag.add("D", run(tid(2, 0, 2), GOOD), [h.idx, c.idx])
    state = all_orders_agree(dag)
    row = status(state)["tasks"][0]
    assert row["state"] == "done" and row["peers"] == ["C", "D"] and row["disputed_by"] == ["H"]
    assert state.outvoted == {"H": 1}


def test_a_peer_that_only_lost_a_race_on_one_slot_may_take_another() -> None:
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    dag.add("B", claim_only(tid(1, 0, 0)), [s.idx])
    dag.add("C", claim_only(tid(1, 0, 0)), [s.idx])  # concurrent: one of them loses the race
    state = fold(dag, dag.events)
    owner = state.tasks[tid(1, 0, 0)].owner()
    assert owner is not None
    loser = "C" if owner.peer == "B" else "B"
    dag.add(loser, run(tid(1, 0, 1), GOOD), [e.idx for e in dag.events])
    state = fold(dag, dag.events)
    assert state.tasks[tid(1, 0, 1)].owner().peer == loser and not [r for r in state.refused() if r.author == loser]


def test_a_losing_claimants_result_is_not_a_vote_so_a_verdict_never_flips() -> None:
    """H wins slot 1's race and holds back; C, which lost the race but ran the slot, reports.
    Only the owner's result is the slot's vote: the task waits for H (or for H's attempt to be
    recorded lost), instead of completing on C's result and flipping back when H reports."""
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    b = dag.add("B", run(tid(1, 0, 0), GOOD), [s.idx])
    task1 = tid(1, 0, 1)
    h = dag.add("H", claim_only(task1), [s.idx])
    c = dag.add("C", run(task1, GOOD), [s.idx])
    state = fold(dag, dag.events)
    if state.tasks[task1].owner().peer != "H":  # make H the winner whatever the hash order
        dag.events.pop()
        dag.events.pop()
        dag.last_of.pop("H")
        dag.last_of.pop("C")
        h = dag.add("H", claim_only(task1), [s.idx])
        c = dag.add("C", [{**run(task1, GOOD)[0], "capacity": 0.01}] + run(task1, GOOD)[1:], [s.idx])
        state = fold(dag, dag.events)
    assert state.tasks[task1].owner().peer == "H"
    assert status(state)["state"] == "running"
    dag.add("H", [{"op": "task.start", "task_id": task1, "attempt": 1},
                  {"op": "task.done", "task_id": task1, "attempt": 1, "result": ZERO}], [h.idx, c.idx, b.idx])
    state = all_orders_agree(dag)
    assert status(state)["tasks"][0]["state"] == "running"  # disagreement: a reserve opens
    assert state.task_status(state.tasks[tid(1, 0, 2)]) is TaskStatus.QUEUED


def test_a_seal_touches_every_slot_of_its_task() -> None:
    from p2p.scheduler.state import apply_event

    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    b = dag.add("B", run(tid(1, 0, 0), GOOD), [s.idx])
    state = fold(dag, dag.events)
    seal = dag.add("A", [{"op": "workflow.accept", "workflow_id": W, "results": [[0, b.cid, 3]]}], [b.idx])
    touched = apply_event(state, seal.cid, "A", seal.height, seal.ops, parents=[dag.events[p].cid for p in seal.parents], seq=seal.seq)
    assert {tid(1, 0, k) for k in range(4)} <= touched


def test_a_cached_result_is_no_replica() -> None:
    """B answered slot 0 from the result cache (any member can seal an entry, so nobody vouches
    for it) and H returned the same wrong vector on slot 1: no agreement; a reserve opens."""
    dag = Dag()
    s = dag.add("A", [submit(1, 2)], [])
    dag.add("B", run(tid(1, 0, 0), ZERO)[:2] + [{**run(tid(1, 0, 0), ZERO)[2], "cached": True}], [s.idx])
    dag.add("H", run(tid(1, 0, 1), ZERO), [s.idx])
    state = all_orders_agree(dag)
    assert status(state)["tasks"][0]["state"] == "running"
    assert state.task_status(state.tasks[tid(1, 0, 2)]) is TaskStatus.QUEUED and state.outvoted == {}


def test_a_submit_over_the_slot_bound_is_malformed() -> None:
    from pydantic import ValidationError

    from p2p.scheduler.ops import MAX_TASKS, parse_op

    op = submit(MAX_TASKS // 6, 5)
    try:
        parse_op(op)
    except ValidationError as exc:
        assert "replica slots" in str(exc)
    else:
        raise AssertionError("a submit of 7 x 16,666 slots was accepted")
    parse_op(submit(MAX_TASKS // 7, 5))


# ------------------------------------------------------------------------------ the policy


def _caps(*names: str) -> list[PeerCaps]:
    return [PeerCaps(n, 1.0, frozenset({"m"}), ()) for n in names]


def test_each_slot_has_a_different_top_peer_and_a_peer_busy_on_one_slot_is_out_of_the_others() -> None:
    dag = Dag()
    dag.add("A", [submit(20, 2)], [])
    state = fold(dag, dag.events)
    wf = state.workflows[W]
    policy = AssignmentPolicy("A", SchedulerConfig(), lambda p: True, siblings=state.siblings)
    live = _caps("A", "B", "C", "D")
    for i in range(20):
        tops = [policy.ranking(state.tasks[tid(20, i, s)], wf, live)[0] for s in range(2)]
        assert len(set(tops)) == 2
    # B claims slot 1 of task 0 (say it ranked top there): it is out of slot 0's ranking
    t0 = state.tasks[tid(20, 0, 0)]
    top1 = policy.ranking(state.tasks[tid(20, 0, 1)], wf, live)[0]
    dag.add(top1, [{"op": "task.claim", "task_id": tid(20, 0, 1), "attempt": 1, "capacity": 1.0}], [0])
    state = fold(dag, dag.events)
    t0 = state.tasks[tid(20, 0, 0)]
    policy = AssignmentPolicy("A", SchedulerConfig(), lambda p: True, siblings=state.siblings)
    assert top1 not in policy.ranking(t0, state.workflows[W], live)


def test_a_peer_outvoted_too_often_gets_no_work_from_this_node() -> None:
    dag = Dag()
    dag.add("A", [submit(1, 1)], [])
    state = fold(dag, dag.events)
    counts = {"H": 4}
    policy = AssignmentPolicy("A", SchedulerConfig(max_outvoted=3), lambda p: True, outvoted=lambda p: counts.get(p, 0))
    ranking = policy.ranking(state.tasks[f"{W}/0"], state.workflows[W], _caps("A", "B", "H"))
    assert "H" not in ranking and set(ranking) == {"A", "B"}


# ------------------------------------------------------------------ convergence (hypothesis)

AUTHORS = ["B", "C", "D", "E", "H"]


@st.composite
def replica_dags(draw: Any) -> Dag:
    """Replicated workflows under honest runs, duplicate claims, failures, expiries, a peer on
    two slots, seals and a cancel, over random DAG shapes: the corners the rule has."""
    n = draw(st.sampled_from([1, 1, 2]))
    replicas = draw(st.integers(2, 3))
    dag = Dag()
    dag.add("A", [submit(n, replicas)], [])
    slots = slots_for(replicas)
    for _ in range(draw(st.integers(2, 16))):
        author = draw(st.sampled_from(AUTHORS + ["A"]))
        slot = draw(st.sampled_from([0, 0, 1, 1, 2, 2, *range(3, slots)]))
        task = tid(n, draw(st.integers(0, n - 1)), slot)
        kind = draw(st.sampled_from(["run"] * 6 + ["claim", "fail", "fail_final", "expire", "seal", "seal", "cancel"]))
        attempt = draw(st.sampled_from([1, 1, 1, 2]))
        if kind == "run":
            ops = run(task, [GOOD, GOOD_ROUNDED, GOOD, ZERO, OTHER][draw(st.integers(0, 4))], attempt)
        elif kind == "claim":
            ops = run(task, GOOD, attempt)[:1]
        elif kind in ("fail", "fail_final"):
            ops = [{"op": "task.fail", "task_id": task, "attempt": attempt, "error": "boom", "retryable": kind == "fail"}]
        elif kind == "expire":
            ops = [{"op": "task.fail", "task_id": task, "attempt": attempt, "error": "silent", "expired": True}]
        elif kind == "cancel":
            ops = [{"op": "workflow.cancel", "workflow_id": W}]
        else:
            dones = [(e, i, op) for e in dag.events for i, op in enumerate(e.ops) if op.get("op") == "task.done"]
            if not dones:
                continue
            e, i, op = draw(st.sampled_from(dones))
            ops = [{"op": "workflow.accept", "workflow_id": W, "results": [[int(op["task_id"].split("/")[1]), e.cid, i]]}]
        parents = draw(st.lists(st.integers(0, len(dag.events) - 1), max_size=3)) + [0]
        dag.add(author, ops, parents)
    return dag


@settings(max_examples=300, deadline=None)
@given(replica_dags(), st.randoms(use_true_random=False))
def test_every_order_of_replicated_events_gives_the_same_answers(dag: Dag, rnd: random.Random) -> None:
    orders = causal_orders(dag, rnd, 3)
    states = [fold(dag, o) for o in orders]
    ref_snap, ref_status = states[0].snapshot(), status(states[0])
    for state in states:
        wf = state.workflows[W]
        assert state.counts(wf) == state.recount(wf)
        for i in range(len(wf.task_ids)):
            verdict = state.verdict(wf, i)
            if verdict.accepted is not None:  # at least two distinct peers' results agree on it
                assert len(set(verdict.peers)) >= 2 and verdict.accepted.peer in verdict.peers
                assert verdict.accepted.result is not None
            slots = state.slots_of(wf, i)
            for t in slots:
                assert state.task_status(t) is state._slot_status(t, wf, state.group_verdict(wf, slots))
        assert state.snapshot() == ref_snap
        got = status(state)
        for key in ref_status:
            assert got[key] == ref_status[key], key
