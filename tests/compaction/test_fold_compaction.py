"""The fold's compaction rule (docs/compaction.md §4): the submitter's ``workflow.compact`` on a
finished workflow freezes it at the op's cut, the same on every peer whatever the arrival order;
ops about it that are not before the cut stop counting; a compaction of a running workflow, or
by another peer, freezes nothing.

The scenarios are the fold's own generators (every op field, forks, replicas, seals, result
blocks) closed by runs, then compacted by the submitter over all or some heads, then followed by
more random ops: late claims, results, cancels and reprioritises, concurrent or not."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2p.compaction.pages import SnapshotPages, dropped_from_snapshot, status_of
from p2p.compaction.snapshot import FoldInput, build_snapshot, snapshot_at
from p2p.clock.cids import block_cid, cid_raw
from p2p.scheduler.dropped import Dropped
from p2p.scheduler import views
from p2p.scheduler.state import State, TaskStatus, apply_event
from tests.compaction.test_snapshot import CHUNK, MAX_ATTEMPTS, _finished, _inputs, _past, finishing
from tests.scheduler.test_fold_agreement import (
    CIDS,
    SUBMITTERS,
    WA,
    WD,
    WORKERS,
    Dag,
    answers,
    _load_block,
    _seal,
    _submit,
    causal_orders,
    fold,
    op_for,
)

SUBMITTER_OF = {WA: "peerA", WD: "peerD"}


def _compact(wid: str, snapshot: Any = None) -> dict[str, Any]:
    return {"op": "workflow.compact", "workflow_id": wid, "snapshot": snapshot or CIDS[1]}


def _late_ops(draw: Any, dag: Dag, state: State, *, forkers: list[str], extra_fields: bool) -> None:
    """Up to six late events, written over all heads or a few events, by any peer: the fold's
    random ops, runs, duplicate submits and seals; ``forkers`` may fork (two events with one
    seq: a sibling a compact op never saw is outside its cut even when its seq is covered);
    with ``extra_fields``, some ops carry an extra field naming another workflow or task
    (parsing ignores it, and so must everything that reads ops before parsing)."""
    n_tasks = {wid: len(wf.physical_ids()) for wid, wf in state.workflows.items()}
    n_tasks.setdefault(WA, 1)
    n_tasks.setdefault(WD, 1)
    for _ in range(draw(st.integers(0, 6))):
        author = draw(st.sampled_from(SUBMITTERS + WORKERS))
        ops: list[Any] = []
        for _ in range(draw(st.integers(1, 3))):
            op = draw(op_for(n_tasks))
            if isinstance(op, dict) and "run" in op:
                ops.extend(op["run"])
            elif isinstance(op, dict) and op.get("resubmit"):  # a duplicate submit, by whoever
                wid = draw(st.sampled_from([WA, WD]))
                ops.append(_submit(wid, n_tasks[wid] + 1, "again", compact=draw(st.booleans())))
            elif isinstance(op, dict) and op.get("accept"):
                ops.append(_seal(draw, dag, op["wid"]))
            else:
                ops.append(op)
        if extra_fields:
            for op in ops:
                if isinstance(op, dict) and draw(st.integers(0, 3)) == 0:
                    op[draw(st.sampled_from(["workflow_id", "task_id"]))] = draw(st.sampled_from([WA, WD, f"{WA}/0", f"{WD}/0"]))
        parents = dag.heads() if draw(st.booleans()) else draw(st.lists(st.sampled_from(range(len(dag.events))), max_size=3))
        fork = author in forkers and author in dag.last_of and draw(st.integers(0, 3)) == 0
        if fork:
            event("a fork after the compaction")
        dag.add(author, ops, parents, fork=fork)


@st.composite
def compacting(draw: Any) -> Dag:
    dag = draw(finishing())
    state = fold(dag, dag.events)
    for wid, author in SUBMITTER_OF.items():
        if wid not in state.workflows or not draw(st.integers(0, 3)):
            continue
        # over every head (it had seen all), or over a few events (concurrent ops exist), or by
        # another peer (never counts)
        parents = dag.heads() if draw(st.booleans()) else draw(st.lists(st.sampled_from(range(len(dag.events))), max_size=3))
        who = author if draw(st.integers(0, 4)) else draw(st.sampled_from(WORKERS))
        dag.add(who, [_compact(wid)], parents)
    _late_ops(draw, dag, state, forkers=SUBMITTERS + WORKERS, extra_fields=False)
    return dag


def _cut_index(dag: Dag, state: State, wid: str) -> int:
    cid = state.workflows[wid].compacted.where.stamp[1]
    return next(e.idx for e in dag.events if e.cid == cid)


@settings(max_examples=200, deadline=None)
@given(compacting(), st.randoms(use_true_random=False))
def test_every_order_agrees_and_a_compacted_workflow_reads_as_its_cut(dag: Dag, rnd: random.Random) -> None:
    orders = causal_orders(dag, rnd, 3)
    states = [fold(dag, o, read_between=(i == 0)) for i, o in enumerate(orders)]
    first_snap, first_answers = states[0].snapshot(), answers(states[0])
    for state in states[1:]:
        assert state.snapshot() == first_snap
        got = answers(state)
        assert got.keys() == first_answers.keys()
        for wid in got:
            for part in ("status", "summary", "paged"):
                for key in first_answers[wid][part]:
                    assert got[wid][part][key] == first_answers[wid][part][key], (wid, part, key)
        for wid in state.workflows:
            a, b = state.workflows[wid].compacted, states[0].workflows[wid].compacted
            assert (a and a.stamp) == (b and b.stamp)
    state = states[0]
    for wid, wf in sorted(state.workflows.items()):
        if wf.compacted is None:
            continue
        event("a workflow compacted")
        # every field a tool shows is the fold of the cut alone: the compact op's past, which
        # holds the ops before it in its own event too
        at = _cut_index(dag, state, wid)
        op_index = wf.compacted.where.stamp[2]
        own = dag.events[at]
        cut = [e for e in dag.events if e.idx in _past(dag, at) - {at}]
        inputs = _inputs(dag, cut) + [FoldInput(own.cid, own.author, own.height, own.ops[:op_index],
                                                [dag.events[p].cid for p in own.parents], own.seq)]
        at_cut = snapshot_at(inputs, wid, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)
        assert build_snapshot(state, wid, max_chunk_bytes=CHUNK).root_cid == at_cut.root_cid
        assert wid in _finished(state)
        assert wf.compacted.where.who == wf.submitter


# ------------------------------------------------------------------------------ concrete cases


def _done_workflow() -> Dag:
    """peerA submits 2 tasks, peerB runs both: completed."""
    dag = Dag()
    sub = dag.add("peerA", [{"op": "workflow.submit", "workflow_id": WA, "name": "w", "priority": 5,
                             "tag": "p2p-eligible", "created_at": 1000.0,
                             "tasks": [{"model": "m", "input": f"t{i}"} for i in range(2)]}], [])
    ops = []
    for i in range(2):
        ops += [{"op": "task.claim", "task_id": f"{WA}/{i}", "attempt": 1, "capacity": 1.0},
                {"op": "task.start", "task_id": f"{WA}/{i}", "attempt": 1},
                {"op": "task.done", "task_id": f"{WA}/{i}", "attempt": 1, "result": {"v": i}}]
    dag.add("peerB", ops, [sub.idx])
    return dag


def _view(state: State) -> dict[str, Any]:
    return views.workflow_status(state, state.workflows[WA], include_results=True, offset=0, limit=100,
                                 load_block=lambda c: None)


def test_ops_after_the_cut_stop_counting_and_before_it_they_do() -> None:
    dag = _done_workflow()
    before = fold(dag, dag.events)
    assert before.workflow_status(before.workflows[WA]).value == "completed"
    # a concurrent higher-scoring claim and its result on task 0 (written over the submit only),
    # a cancel and a reprioritise by the submitter, after the compaction
    late_claim = dag.add("peerC", [{"op": "task.claim", "task_id": f"{WA}/0", "attempt": 1, "capacity": 1e6},
                                   {"op": "task.start", "task_id": f"{WA}/0", "attempt": 1},
                                   {"op": "task.done", "task_id": f"{WA}/0", "attempt": 1, "result": {"v": 99}}], [0])
    compact = dag.add("peerA", [_compact(WA)], [1])  # over peerB's results, not peerC's
    dag.add("peerA", [{"op": "workflow.reprioritize", "workflow_id": WA, "priority": 1},
                      {"op": "workflow.cancel", "workflow_id": WA}], [compact.idx, late_claim.idx])
    for order in causal_orders(dag, random.Random(1), 6):
        state = fold(dag, order)
        wf = state.workflows[WA]
        assert wf.compacted is not None and wf.compacted.where.stamp[1] == compact.cid
        view = _view(state)
        assert view["state"] == "completed" and view["priority"] == 5, view
        assert [t["result"] for t in view["tasks"]] == [{"v": 0}, {"v": 1}]
        assert {t["peer"] for t in view["tasks"]} == {"peerB"}
        assert state.task_status(state.tasks[f"{WA}/0"]) is TaskStatus.DONE
    # without the compaction, the late claim's result would have changed task 0 (it outscores)
    # or not; either way the compacted answer equals the cut's
    at_cut = snapshot_at(_inputs(dag, dag.events[:2]), WA, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)
    assert build_snapshot(fold(dag, dag.events), WA, max_chunk_bytes=CHUNK).root_cid == at_cut.root_cid


def test_a_compaction_by_another_peer_or_of_a_running_workflow_freezes_nothing() -> None:
    dag = _done_workflow()
    dag.add("peerB", [_compact(WA)], [1])  # not the submitter
    state = fold(dag, dag.events)
    assert state.workflows[WA].compacted is None
    assert any("only the workflow's submitter" in r.reason for r in state.rejected)

    running = Dag()
    sub = running.add("peerA", [{"op": "workflow.submit", "workflow_id": WA, "name": "w", "priority": 5,
                                 "tag": "p2p-eligible", "created_at": 1000.0,
                                 "tasks": [{"model": "m", "input": "t0"}]}], [])
    early = running.add("peerA", [_compact(WA)], [sub.idx])  # nothing has run yet
    running.add("peerB", [{"op": "task.claim", "task_id": f"{WA}/0", "attempt": 1, "capacity": 1.0},
                          {"op": "task.start", "task_id": f"{WA}/0", "attempt": 1},
                          {"op": "task.done", "task_id": f"{WA}/0", "attempt": 1, "result": {"v": 7}}], [early.idx])
    state = fold(running, running.events)
    assert state.workflows[WA].compacted is None
    assert _view(state)["state"] == "completed"  # the results after it count: it froze nothing


def test_a_forking_submitters_two_compactions_resolve_alike_in_every_order() -> None:
    """Two compact ops by one submitter with one seq (a fork), at different cuts, with a late
    result between them: the smaller stamp is in force on every peer, whatever came first."""
    dag = _done_workflow()
    late = dag.add("peerC", [{"op": "task.claim", "task_id": f"{WA}/1", "attempt": 1, "capacity": 1e6},
                             {"op": "task.start", "task_id": f"{WA}/1", "attempt": 1},
                             {"op": "task.done", "task_id": f"{WA}/1", "attempt": 1, "result": {"v": 50}}], [0])
    one = dag.add("peerA", [_compact(WA, block_cid(b"one"))], [1])
    two = dag.add("peerA", [_compact(WA, block_cid(b"two"))], [1, late.idx], fork=True)
    answers_by_order = []
    winners = set()
    for order in causal_orders(dag, random.Random(7), 8):
        state = fold(dag, order)
        winners.add(state.workflows[WA].compacted.where.stamp)
        answers_by_order.append((state.snapshot(), answers(state)))
    assert winners == {min((one.height, one.cid, 0), (two.height, two.cid, 0))}, winners
    assert all(a == answers_by_order[0] for a in answers_by_order)


def _fork_history(fork_ops: list[dict[str, Any]], fork_parent: str, at_e2: bool = False) -> tuple[Dag, dict[str, Any]]:
    """peerA submits one task; peerB advertises (e1), runs it (e2) and writes e3; peerA
    compacts over e2; then peerB forks: an event with e3's seq (e2's with ``at_e2``, written
    before e3) over ``fork_parent`` (``"submit"`` or ``"e1"``) holding ``fork_ops``."""
    dag = Dag(advertisers=set())
    sub = dag.add("peerA", [{"op": "workflow.submit", "workflow_id": WA, "name": "w", "priority": 5,
                             "tag": "p2p-eligible", "created_at": 1000.0, "tasks": [{"model": "m", "input": "t0"}]}], [])
    e1 = dag.add("peerB", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [sub.idx])
    e2 = dag.add("peerB", [{"op": "task.claim", "task_id": f"{WA}/0", "attempt": 1, "capacity": 1.0},
                           {"op": "task.start", "task_id": f"{WA}/0", "attempt": 1},
                           {"op": "task.done", "task_id": f"{WA}/0", "attempt": 1, "result": {"v": 1}}], [e1.idx])
    compact = dag.add("peerA", [_compact(WA)], [e2.idx])
    parent = sub.idx if fork_parent == "submit" else e1.idx
    fork = dag.add("peerB", fork_ops, [parent], fork=True) if at_e2 else None
    e3 = dag.add("peerB", [{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}], [e2.idx])
    if fork is None:
        fork = dag.add("peerB", fork_ops, [parent], fork=True)
    return dag, {"sub": sub, "e1": e1, "e2": e2, "compact": compact, "e3": e3, "fork": fork}


def _orders_agree(dag: Dag, orders: list[list[Any]]) -> State:
    states = [fold(dag, o) for o in orders]
    for state in states[1:]:
        assert state.snapshot() == states[0].snapshot()
        assert answers(state) == answers(states[0])
        assert (state.workflows[WA].compacted is None) == (states[0].workflows[WA].compacted is None)
    return states[0]


def test_a_forked_claim_with_a_smaller_stamp_does_not_hide_the_one_in_the_cut() -> None:
    """peerB's forked claim on the same attempt (lower height, so a smaller stamp) is not in
    the compaction's cut; the claim that is must still count there, whether the fork arrived
    before the compact op or after it."""
    claim = [{"op": "task.claim", "task_id": f"{WA}/0", "attempt": 1, "capacity": 1.0}]
    dag, ev = _fork_history(claim, "submit")
    assert ev["fork"].height < ev["e2"].height
    early = [ev[k] for k in ("sub", "e1", "e2", "fork", "compact", "e3")]
    late = [ev[k] for k in ("sub", "e1", "e2", "compact", "e3", "fork")]
    state = _orders_agree(dag, [early, late])
    assert state.workflows[WA].compacted is not None
    assert _view(state)["state"] == "completed"


def test_a_forked_advert_under_a_claim_does_not_change_the_compaction() -> None:
    """peerB forks an advert for another model at e2's seq: it is not in e2's past, so e2's
    claim and the compaction still count (causality is exact); every arrival order agrees."""
    for capacity in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0):  # a fork whose stamp sorts before e2's
        advert = [{"op": "peer.advertise", "capacity": capacity, "models": ["other"]}]
        dag, ev = _fork_history(advert, "e1", at_e2=True)
        if ev["fork"].cid < ev["e2"].cid:
            break
    assert ev["fork"].seq == ev["e2"].seq and (ev["fork"].height, ev["fork"].cid) < (ev["e2"].height, ev["e2"].cid)
    orders = [[ev[k] for k in ("sub", "e1", "e2", "compact", "e3", "fork")],
              [ev[k] for k in ("sub", "e1", "fork", "e2", "compact", "e3")],
              [ev[k] for k in ("sub", "e1", "e2", "fork", "compact", "e3")]]
    assert _orders_agree(dag, orders).is_compacted(WA)


def test_ops_about_a_compacted_workflow_cost_what_they_change(monkeypatch: Any) -> None:
    """Ops about a compacted workflow never re-derive it unless they can change its view: a
    stranger's control ops are refused outright, the submitter's late ones wait, task ops go
    to the full records; compact ops on a running workflow are judged once each."""
    import p2p.scheduler.state as state_mod

    calls = {"thaw": 0, "view": 0}
    real_thaw, real_view = state_mod._thaw, state_mod._view_at

    def thaw(*a: Any) -> Any:
        calls["thaw"] += 1
        return real_thaw(*a)

    def view(*a: Any) -> Any:
        calls["view"] += 1
        return real_view(*a)

    monkeypatch.setattr(state_mod, "_thaw", thaw)
    monkeypatch.setattr(state_mod, "_view_at", view)
    dag = _done_workflow()
    compact = dag.add("peerA", [_compact(WA)], [1])
    before = _view(fold(dag, dag.events))
    dag.add("peerB", [{"op": "workflow.cancel", "workflow_id": WA}] * 3
            + [{"op": "workflow.compact", "workflow_id": WA, "snapshot": CIDS[0]}] * 3, [compact.idx])
    dag.add("peerA", [{"op": "workflow.reprioritize", "workflow_id": WA, "priority": 2},
                      {"op": "workflow.cancel", "workflow_id": WA}, _compact(WA)], [compact.idx])
    dag.add("peerC", [{"op": "task.claim", "task_id": f"{WA}/0", "attempt": 2, "capacity": 1.0}], [compact.idx])
    calls.update(thaw=0, view=0)
    state = fold(dag, dag.events)
    assert calls == {"thaw": 0, "view": 1}, calls  # the compaction judged once, nothing thawed
    assert _view(state) == before | {"compacted": _view(state)["compacted"]}
    assert sum("only the workflow's submitter" in r.reason for r in state.rejected) == 6
    assert state.late_for_compacted == 4  # the submitter's three ops wait, peerC's claim is kept aside

    running = Dag()
    sub = running.add("peerA", [{"op": "workflow.submit", "workflow_id": WA, "name": "w", "priority": 5,
                                 "tag": "p2p-eligible", "created_at": 1000.0,
                                 "tasks": [{"model": "m", "input": f"t{i}"} for i in range(50)]}], [])
    last = sub.idx
    for _ in range(20):  # the submitter compacts its running workflow again and again
        last = running.add("peerA", [_compact(WA)], [last]).idx
    calls.update(thaw=0, view=0)
    state = fold(running, running.events)
    assert state.workflows[WA].compacted is None and calls["view"] == 20, calls  # once each, not 20 x 20


# ------------------------------------------------------------------ dropping records (§5)


def _answers_with(state: State, pages: SnapshotPages) -> dict[str, Any]:
    """``answers``, through the reader a node uses: the fold, or a dropped workflow's snapshot."""
    out: dict[str, Any] = {}
    for wid, wf in sorted(state.workflows.items()):
        out[wid] = {
            "status": status_of(state, wf, pages, include_results=True, offset=0, limit=10**6, load_block=_load_block),
            "summary": views.workflow_summary(state, wf),
            "paged": status_of(state, wf, pages, include_results=False, offset=1, limit=2, load_block=_load_block),
            "state": state.workflow_status(wf), "counts": state.counts(wf),
        }
    return out


def _adverts(state: State) -> dict[str, list[Any]]:
    """Every peer's adverts as ``list_peers`` and the claims' weights read them."""
    return {p: [(a.where.stamp, a.where.who, a.capacity, sorted(a.models), a.model_cids) for a in ads]
            for p, ads in state.adverts.items()}


@st.composite
def dropping(draw: Any) -> Dag:
    """Scenarios where compactions come into force and stay (the submitters never fork): the
    fold's scenarios run to their end, replicated ones too (each slot by another peer, results
    from few values so replicas agree or are outvoted), compacted by their submitters over every
    head, then late ops — forks by workers only, and ops carrying extra fields that name another
    workflow or task (parsing ignores them, so must skipping)."""
    dag = draw(finishing())
    runners = WORKERS + SUBMITTERS
    for _ in range(2):
        state = fold(dag, dag.events)
        per: dict[str, list[dict[str, Any]]] = {}
        for wid, wf in sorted(state.workflows.items()):
            if wf.replicas <= 1:
                continue
            for i in range(len(wf.task_ids)):
                for slot, tid in enumerate(wf.slot_ids(i)):
                    t = state.task(tid)
                    if state.task_status(t) in (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED):
                        continue
                    a = max(t.attempt, 1)
                    per.setdefault(runners[slot % len(runners)], []).extend([
                        {"op": "task.claim", "task_id": tid, "attempt": a, "capacity": 1.0},
                        {"op": "task.start", "task_id": tid, "attempt": a},
                        {"op": "task.done", "task_id": tid, "attempt": a, "result": {"v": draw(st.integers(0, 1))}}])
        if not per:
            break
        for who, ops in sorted(per.items()):
            dag.add(who, ops[:240], dag.heads())
    state = fold(dag, dag.events)
    for wid, author in SUBMITTER_OF.items():  # what would not finish, its submitter cancels
        if wid in state.workflows and wid not in _finished(state):
            dag.add(author, [{"op": "workflow.cancel", "workflow_id": wid}], dag.heads())
    state = fold(dag, dag.events)
    finished = _finished(state)
    for wid, author in SUBMITTER_OF.items():
        if wid in finished:
            dag.add(author, [_compact(wid)], dag.heads())
    _late_ops(draw, dag, state, forkers=WORKERS, extra_fields=True)
    return dag


@settings(max_examples=200, deadline=None)
@given(st.one_of(dropping(), dropping(), compacting()), st.randoms(use_true_random=False))
def test_dropping_a_verified_compaction_changes_no_answer_and_a_restart_skips_it(dag: Dag, rnd: random.Random) -> None:
    """A peer that drops each compacted workflow's records as soon as its compaction is in force
    (its snapshot verified: here, built from this very state), then folds the rest of the
    history, answers every field as a peer that never dropped anything; so does a restart that
    files the dropped workflows first and folds every event again in another order, and it
    holds none of their tasks. Not for a forking submitter's workflows: a fork can move the cut
    after the records are gone (docs/compaction.md §7), the price the forker pays alone."""
    whole = fold(dag, dag.events)
    forked = set(whole.forked_authors())
    first, second = causal_orders(dag, rnd, 2)
    state = State(max_attempts=MAX_ATTEMPTS)
    blocks: dict[bytes, bytes] = {}
    gone: list[Any] = []
    for ev in first:
        apply_event(state, ev.cid, ev.author, ev.height, ev.ops, parents=[dag.events[p].cid for p in ev.parents], seq=ev.seq)
        for wid, wf in list(state.workflows.items()):
            if wid in state.dropped or wf.compacted is None or wf.submitter in forked:
                continue
            snap = build_snapshot(state, wid, max_chunk_bytes=CHUNK)
            blocks.update((cid_raw(c), d) for c, d in snap.blocks())
            g = dropped_from_snapshot(state, wid, snap)
            state.drop(g)
            gone.append(g)
            event("a replicated workflow dropped" if wf.replicas > 1 else "a workflow dropped")
    event(f"workflows dropped: {len(gone)}")
    pages = SnapshotPages(blocks.get)
    expected = _answers_with(whole, pages)
    assert _answers_with(state, pages) == expected
    assert state.outvoted == whole.outvoted
    assert _adverts(state) == _adverts(whole)
    restarted = State(max_attempts=MAX_ATTEMPTS)
    for g in gone:
        restarted.restore_dropped(Dropped.decode(g.encode()))
    for ev in second:
        apply_event(restarted, ev.cid, ev.author, ev.height, ev.ops, parents=[dag.events[p].cid for p in ev.parents],
                    seq=ev.seq)
    assert _answers_with(restarted, pages) == expected
    assert restarted.outvoted == whole.outvoted
    assert _adverts(restarted) == _adverts(whole)
    assert [w.workflow_id for w in restarted.listed()] == [w.workflow_id for w in whole.listed()]
    for g in gone:
        assert not any(t.startswith(g.workflow_id + "/") for t in [*restarted.tasks, *restarted.undefined])
