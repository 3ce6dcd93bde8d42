"""Trust in the fold (issue 8, items 1 and 2): what one admitted, hostile peer can no longer do
to other peers' work, decided from the events alone, the same on every peer.

- only a workflow's submitter cancels or reprioritises it;
- an expiry counts only from the attempt's judge, or when a second peer concurs;
- a claim counts only after its author advertised the model (the pinned content id, when the
  task names one), weighs at most the capacity it advertised, and may take the next attempt
  only after the previous one failed or was expired;
- a claim written after another claimant started never displaces it; a completed workflow's
  results never change.
A hypothesis property closes it: whatever a hostile author writes after seeing a set of honest
events, no result that stood changes, nothing terminal changes, and nothing it had no right to
touch (a running task nobody suspected) fails or changes owner.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.scheduler import views
from p2p.scheduler.assignment import claim_beats, judge_of
from p2p.scheduler.ops import submitter_prefix
from p2p.scheduler.state import State, TaskStatus, WorkflowStatus

from test_fold_agreement import Dag, add_over, causal_orders, fold, scenarios  # noqa: E402
from test_fold_rules import T0, W, _submit, claim, done, expire, start  # noqa: E402

HOSTILE = "H"


def _status(state: State) -> dict[str, Any]:
    return views.workflow_status(state, state.workflows[W], include_results=True, offset=0, limit=100,
                                 load_block=lambda cid: None)


def _tid(i: int) -> str:
    return f"{W}/{i}"


# ------------------------------------------------------------------ control ops: submitter only


def test_a_foreign_cancel_or_reprioritise_changes_nothing_in_any_order() -> None:
    dag = Dag()
    s = dag.add("A", [_submit(3)], [])
    b = dag.add("B", [claim(1), start(1)], [s.idx])
    honest = fold(dag, dag.events)
    dag.add(HOSTILE, [{"op": "workflow.cancel", "workflow_id": W},
                      {"op": "workflow.reprioritize", "workflow_id": W, "priority": 10}], [b.idx])
    for order in causal_orders(dag, random.Random(1), 6):
        state = fold(dag, order)
        assert state.snapshot() == honest.snapshot() | {"_adverts": state.snapshot()["_adverts"]}
        assert _status(state) == _status(honest)
        assert sorted(r.reason for r in state.rejected) == [
            "only the workflow's submitter A may cancel it", "only the workflow's submitter A may reprioritize it"]


# ------------------------------------------------------------------------------ expiries


def test_an_expiry_flood_from_a_peer_that_judges_nothing_changes_nothing() -> None:
    """B owns and runs 30 tasks. H, which wrote nothing the owner's claims had seen (so it is
    nobody's judge), expires every attempt of every task: nothing counts, nothing changes, and
    every one is listed as refused with the judge's name."""
    n = 30
    dag = Dag()
    s = dag.add("A", [_submit(n)], [])
    ops = [op for i in range(n) for op in ({**claim(1), "task_id": _tid(i)}, {**start(1), "task_id": _tid(i)})]
    b = dag.add("B", ops, [s.idx])
    honest = fold(dag, dag.events)
    flood = [expire(a, "owner silent", _tid(i)) for i in range(n) for a in (1, 2, 3)]
    dag.add(HOSTILE, flood, [b.idx])
    state = fold(dag, dag.events)
    assert _status(state) == _status(honest)
    assert all(state.task_status(state.tasks[_tid(i)]) is TaskStatus.RUNNING for i in range(n))
    refused = [r for r in state.refused() if r.author == HOSTILE]
    assert len(refused) == n * 3
    assert all("judge is A" in r.reason or "nobody owned" in r.reason for r in refused), {r.reason for r in refused}


def test_the_judge_alone_or_two_peers_that_agree_record_an_attempt_lost() -> None:
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    c = dag.add("C", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [s.idx])  # active since the submit
    b = dag.add("B", [claim(1)], [c.idx])
    task = fold(dag, dag.events).tasks[T0]
    judge = task.judge(1)
    assert judge == judge_of(T0, 1, {"A", "C"}) and judge in ("A", "C")
    other = "C" if judge == "A" else "A"
    # a lone suspicion from the other candidate does not count...
    lone = dag.add(other, [expire(1, "suspect")], [b.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.CLAIMED
    # ...until a second peer concurs, after it
    dag.add("D", [expire(1, "concur")], [lone.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.QUEUED
    assert [e["peer"] for e in state.tasks[T0].errors()] == ["D"]
    # the judge alone suffices
    dag2 = Dag()
    s = dag2.add("A", [_submit()], [])
    c = dag2.add("C", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [s.idx])
    b = dag2.add("B", [claim(1)], [c.idx])
    dag2.add(judge, [expire(1, "silent")], [b.idx])
    state = fold(dag2, dag2.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.QUEUED


def test_nobody_expires_an_attempt_nobody_claimed_or_its_own() -> None:
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    dag.add("A", [expire(1), expire(3)], [s.idx])  # the submitter, judge of everything, but nothing is owned
    b = dag.add("B", [claim(1)], [s.idx])
    dag.add("B", [expire(1)], [b.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.CLAIMED
    reasons = sorted(r.reason for r in state.refused())
    assert reasons == ["a peer does not expire its own attempt (it fails it)",
                       "expiry of attempt 1, which nobody owned before it",
                       "expiry of attempt 3, which nobody owned before it"]


# ------------------------------------------------------------------------------- claims


def test_a_claim_weighs_what_its_author_advertised_before_not_its_word() -> None:
    """Concurrent claims on attempt 1: H says capacity 1e6 but advertised 1.0, so the race is
    run at 1.0 against B's 1.0, and the rendezvous picks the same winner as it would."""
    dag = Dag(advertisers=set())
    s = dag.add("A", [_submit()], [])
    for who in ("B", HOSTILE):
        dag.add(who, [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]},
                      {**claim(1), "capacity": 1e6 if who == HOSTILE else 1.0}], [s.idx])
    want = HOSTILE if claim_beats(T0, (HOSTILE, 1.0), ("B", 1.0)) else "B"
    for order in causal_orders(dag, random.Random(2), 4):
        assert fold(dag, order).tasks[T0].owner().peer == want


def test_a_claim_without_an_advert_of_the_model_or_with_other_files_never_counts() -> None:
    pinned = {"op": "workflow.submit", "workflow_id": W, "name": "n", "priority": 5, "tag": "p2p-eligible",
              "tasks": [{"model": "m", "model_cid": "bafy-real", "input": "x"}]}
    dag = Dag(advertisers=set())
    s = dag.add("A", [pinned], [])
    dag.add("N", [claim(1)], [s.idx])  # never advertised
    dag.add("O", [{"op": "peer.advertise", "capacity": 1.0, "models": ["other"]}, claim(1)], [s.idx])
    dag.add(HOSTILE, [{"op": "peer.advertise", "capacity": 9.0, "models": ["m"], "model_cids": {"m": "bafy-finetune"}},
                      claim(1), done(1, "zeros")], [s.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.QUEUED
    assert sorted(r.author for r in state.refused()) == ["H", "N", "O"]
    honest = dag.add("B", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"], "model_cids": {"m": "bafy-real"}},
                           claim(1)], [s.idx])
    state = fold(dag, dag.events)
    assert state.tasks[T0].owner().peer == "B"
    del honest


def test_a_claim_written_after_a_start_never_displaces_the_owner() -> None:
    """B claimed and started; H outscores B but claims after seeing the start, and reports a
    result: B stays the owner and only B's result can stand."""
    b_peer, h_peer = ("B", HOSTILE)
    if not claim_beats(T0, (h_peer, 1.0), (b_peer, 1.0)):
        h_peer = next(p for p in ("H1", "H2", "H3", "H4", "H5") if claim_beats(T0, (p, 1.0), (b_peer, 1.0)))
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    b = dag.add(b_peer, [claim(1), start(1)], [s.idx])
    h = dag.add(h_peer, [claim(1), done(1, "zeros")], [b.idx])
    for order in causal_orders(dag, random.Random(3), 4):
        state = fold(dag, order)
        task = state.tasks[T0]
        assert task.owner().peer == b_peer
        assert state.task_status(task) is TaskStatus.RUNNING  # H's result is not the owner's: it waits
    dag.add(b_peer, [done(1, "honest")], [h.idx])
    state = fold(dag, dag.events)
    assert state.tasks[T0].result.result == {"v": "honest"}


def test_a_completed_workflow_cannot_be_rewritten() -> None:
    """After a workflow completed with B's results, H writes claims and zero results for every
    attempt of every task: nothing changes, in any order."""
    n = 5
    dag = Dag()
    s = dag.add("A", [_submit(n)], [])
    b = dag.add("B", [op for i in range(n) for op in ({**claim(1), "task_id": _tid(i)},
                                                        {**start(1), "task_id": _tid(i)},
                                                        {**done(1, f"honest {i}"), "task_id": _tid(i)})], [s.idx])
    honest = fold(dag, dag.events)
    assert honest.workflow_status(honest.workflows[W]) is WorkflowStatus.COMPLETED
    attack = []
    for i in range(n):
        for a in (1, 2, 3):
            attack += [{**claim(a), "task_id": _tid(i), "capacity": 1e6}, {**done(a, [0.0] * 8), "task_id": _tid(i)}]
    dag.add(HOSTILE, attack, [b.idx])
    for order in causal_orders(dag, random.Random(4), 4):
        state = fold(dag, order)
        assert state.workflow_status(state.workflows[W]) is WorkflowStatus.COMPLETED
        got = _status(state)
        want = _status(honest)
        assert [(t["peer"], t["result"]) for t in got["tasks"]] == [(t["peer"], t["result"]) for t in want["tasks"]]


# -------------------------------------------------------------------- the general property


@st.composite
def attacked(draw: Any) -> tuple[Dag, int]:
    """Honest events, then a hostile author's events written over all of them."""
    dag = draw(scenarios(min_events=3, max_events=25))
    cut = len(dag.events)
    add_over(draw, dag, cut, [HOSTILE], draw(st.integers(1, 8)), 4, 1)
    return dag, cut


def _expiries(state: State, tid: str) -> bool:
    return any(f.expired for f in state.task(tid).fails.values())


@settings(max_examples=200, deadline=None)
@given(attacked(), st.randoms(use_true_random=False))
def test_a_hostile_author_changes_nothing_it_has_no_right_to(case: tuple[Dag, int], rnd: random.Random) -> None:
    dag, cut = case
    before = fold(dag, dag.events[:cut])
    for order in causal_orders(dag, rnd, 2):
        after = fold(dag, order)
        for wid, wf in before.workflows.items():
            wf2 = after.workflows[wid]
            assert (wf2.priority, wf2.cancelled) == (wf.priority, wf.cancelled), wid  # not its workflow
            status = before.workflow_status(wf)
            if status in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
                assert after.workflow_status(wf2) is status, wid
            for tid in wf.task_ids:
                t1, t2 = before.task(tid), after.task(tid)
                s1, s2 = before.task_status(t1), after.task_status(t2)
                if s1 is TaskStatus.DONE:  # a result that stood never changes
                    r1, r2 = t1.result, t2.result
                    assert s2 is TaskStatus.DONE and (r2.peer, r2.attempt, r2.stamp) == (r1.peer, r1.attempt, r1.stamp), tid
                elif s1 is TaskStatus.FAILED:
                    assert s2 is TaskStatus.FAILED, tid
                elif s1 in (TaskStatus.CLAIMED, TaskStatus.RUNNING) and not _expiries(before, tid):
                    # an owned task nobody had suspected: H, never its judge, cannot take it or fail it
                    assert s2 is not TaskStatus.FAILED, tid
                    own1, own2 = t1.owner(), t2.owner()
                    assert own2 is not None and own2.peer == own1.peer and t2.attempt == t1.attempt, tid


def test_a_sealed_result_stands_even_against_a_backdated_claim() -> None:
    """H writes, over the submit alone (backdated, as if concurrent with everything), a claim
    that outscores the owner's and a zero result. Before the submitter sealed the honest result
    such a race is decided by score; once it sealed it, nothing changes it, in any order. A
    seal from anyone else, or of a result not in the seal's past, counts for nothing."""
    h_peer = next(p for p in ("H", "H1", "H2", "H3", "H4", "H5", "H6") if claim_beats(T0, (p, 1.0), ("B", 1.0)))
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    b = dag.add("B", [claim(1), start(1), done(1, "honest")], [s.idx])
    seal = {"op": "workflow.accept", "workflow_id": W, "results": [[0, b.cid, 3]]}  # op 0 is B's advert
    dag.add("M", [{"op": "workflow.accept", "workflow_id": W, "results": [[0, b.cid, 3]]}], [b.idx])
    dag.add(h_peer, [claim(1), done(1, "zeros")], [s.idx])  # backdated: its first event, over the submit
    unsealed = fold(dag, dag.events)
    assert unsealed.tasks[T0].result.result == {"v": "zeros"}  # the race it fakes, by score
    assert [r.reason for r in unsealed.rejected] == ["only the workflow's submitter A may accept the results of it"]
    dag.add("A", [seal], [b.idx])
    for order in causal_orders(dag, random.Random(6), 6):
        state = fold(dag, order)
        assert state.tasks[T0].result.result == {"v": "honest"} and state.tasks[T0].result.peer == "B"
    # a seal of a result that is not in its past names nothing
    dag2 = Dag()
    s = dag2.add("A", [_submit()], [])
    b = dag2.add("B", [claim(1), start(1), done(1, "honest")], [s.idx])
    dag2.add("A", [{"op": "workflow.accept", "workflow_id": W, "results": [[0, b.cid, 3]]}], [s.idx])
    dag2.add(h_peer, [claim(1), done(1, "zeros")], [s.idx])
    assert fold(dag2, dag2.events).tasks[T0].result.result == {"v": "zeros"}


# ------------------------------------------------------------- the reviewer's corners (issue 8)


def _two_candidates() -> tuple[Dag, Any, str, str]:
    """A submits, C is active since the submit, B owns attempt 1 and started: (dag, b-event,
    judge of attempt 1 among {A, C}, the other candidate)."""
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    c = dag.add("C", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [s.idx])
    b = dag.add("B", [claim(1), start(1)], [c.idx])
    judge = judge_of(T0, 1, {"A", "C"})
    return dag, b, judge, ("C" if judge == "A" else "A")


def test_an_expiry_saying_not_retryable_is_not_final() -> None:
    """An expiry is another peer's word about someone else's run: its judge cannot fail the
    task for good on attempt 1 by saying a retry cannot help."""
    dag, b, judge, _ = _two_candidates()
    dag.add(judge, [{**expire(1), "retryable": False}], [b.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.QUEUED  # lost, retried: not failed


def test_the_last_attempt_is_failed_only_by_two_peers_that_agree() -> None:
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    c = dag.add("C", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [s.idx])
    prev = c
    for a in (1, 2):  # B fails its own first two attempts (say, out of memory)
        prev = dag.add("B", [claim(a), {"op": "task.fail", "task_id": T0, "attempt": a, "error": "oom"}], [prev.idx])
    b3 = dag.add("B", [claim(3), start(3)], [prev.idx])
    judge = fold(dag, dag.events).tasks[T0].judge(3)
    assert judge in ("A", "C")
    lone = dag.add(judge, [expire(3)], [b3.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.RUNNING, "the judge alone failed the last attempt"
    other = "C" if judge == "A" else "A"
    dag.add(other, [expire(3)], [lone.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.FAILED


def test_the_submitter_records_an_attempt_lost_even_when_another_peer_judges() -> None:
    """A judge that is alive but never acts (hostile, or broken) cannot hold a task: the
    submitter, which steers its workflow anyway, records the loss alone."""
    judge = next(p for p in (f"C{i}" for i in range(200)) if judge_of(T0, 1, {"A", p}) == p)
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    c = dag.add(judge, [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [s.idx])
    b = dag.add("B", [claim(1), start(1)], [c.idx])
    assert fold(dag, dag.events).tasks[T0].judge(1) == judge != "A"
    dag.add("A", [expire(1)], [b.idx])
    state = fold(dag, dag.events)
    assert state.task_status(state.tasks[T0]) is TaskStatus.QUEUED


def test_a_backdated_copy_of_a_fail_does_not_reopen_finished_work() -> None:
    """H owned attempt 1 and failed it; P took attempt 2 and finished, and the submitter sealed
    it. H then writes the same fail again over its claim alone (a smaller stamp): every record
    is kept, so P's claim stays justified and the workflow stays completed."""
    dag = Dag()
    s = dag.add("A", [_submit()], [])
    h1 = dag.add(HOSTILE, [claim(1)], [s.idx])
    hf = dag.add(HOSTILE, [{"op": "task.fail", "task_id": T0, "attempt": 1, "error": "oom"}], [h1.idx])
    p2 = dag.add("P", [claim(2), start(2), done(2, "honest")], [hf.idx])
    dag.add("A", [{"op": "workflow.accept", "workflow_id": W, "results": [[0, p2.cid, 4]]}], [p2.idx])
    before = fold(dag, dag.events)
    assert before.workflow_status(before.workflows[W]) is WorkflowStatus.COMPLETED
    forked = Dag(events=list(dag.events), last_of=dict(dag.last_of))
    forked.add(HOSTILE, [{"op": "task.fail", "task_id": T0, "attempt": 1, "error": "again"}], [h1.idx], fork=True)
    for order in causal_orders(forked, random.Random(8), 4):
        state = fold(forked, order)
        assert state.workflow_status(state.workflows[W]) is WorkflowStatus.COMPLETED
        assert state.tasks[T0].result.result == {"v": "honest"}


def test_adverts_cost_no_re_derivation_honest_or_forked() -> None:
    """A peer re-advertising (capacity or models changed) does not make the fold re-derive
    every task it ever claimed: an advert folded after a claim is never before it, even from an
    author that forks (causality is exact), so nothing cached on the claims is dropped. A forked
    advert walks nothing either (it was folded after every claim: p2p/scheduler/causality.py)."""
    from p2p.scheduler.state import apply_event

    n = 50
    dag = Dag()
    s = dag.add("A", [_submit(n)], [])
    b = dag.add("B", [{**claim(1), "task_id": _tid(i)} for i in range(n)], [s.idx])
    state = fold(dag, dag.events)
    task = state.tasks[_tid(0)]
    assert task.attempt == 1 and task._memo  # derived and cached
    for fork in (False, True):
        dag.add("B", [{"op": "peer.advertise", "capacity": c, "models": ["m"]} for c in (1.0, 2.0, 3.0)],
                [] if fork else [b.idx], fork=fork)
        ev = dag.events[-1]
        touched = apply_event(state, ev.cid, ev.author, ev.height, ev.ops, parents=[dag.events[p].cid for p in ev.parents], seq=ev.seq)
        assert touched == set() and task._memo, fork
        assert state.latest_advert("B").capacity == 3.0
    assert "B" in state._causal.forked and not state._causal._memo  # noted as forked, and no walk
