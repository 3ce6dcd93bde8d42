"""A finished workflow's snapshot (docs/compaction.md §3): a pure function of the events it
summarises, byte for byte, that shows every field a tool shows, and that a peer holding the
same events re-derives to catch a forgery.

The scenarios are the fold's own hypothesis generators (tests/scheduler/test_fold_agreement.py:
forks, concurrent claims, replicas, seals, result blocks, every op field), folded in several
causal orders."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2p.clock import codec
from p2p.clock.cids import block_cid
from p2p.compaction.snapshot import (
    FoldInput,
    Snapshot,
    SnapshotError,
    build_snapshot,
    decode_snapshot,
    snapshot_at,
    verify_snapshot,
)
from p2p.scheduler import views
from p2p.scheduler.state import TERMINAL_TASK, TERMINAL_WORKFLOW
from tests.scheduler.test_fold_agreement import WA, WORKERS, Dag, causal_orders, fold, scenarios

CHUNK = 2 * 1024 * 1024
MAX_ATTEMPTS = 3


def _inputs(dag: Dag, order: list[Any]) -> list[FoldInput]:
    return [FoldInput(e.cid, e.author, e.height, e.ops, [dag.events[p].cid for p in e.parents], e.seq) for e in order]


def _past(dag: Dag, idx: int) -> set[int]:
    """Indices of the events in event ``idx``'s past, itself included."""
    seen, stack = set(), [idx]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(dag.events[i].parents)
    return seen


def _finished(state: Any) -> list[str]:
    return [wid for wid, wf in sorted(state.workflows.items()) if state.workflow_status(wf) in TERMINAL_WORKFLOW]


def _no_block(_cid: Any) -> None:
    return None


@st.composite
def finishing(draw: Any) -> Dag:
    """The fold's scenarios, then up to three closing events by workers over every head: each
    runs every unfinished task to a result or a final failure (when its claim counts), so many
    workflows end completed or failed, not only cancelled."""
    dag = draw(scenarios())
    for _ in range(draw(st.integers(0, 3))):
        state = fold(dag, dag.events)
        ops: list[dict[str, Any]] = []
        for wid, wf in sorted(state.workflows.items()):
            for tid in (wf.physical_ids() if wf.replicas > 1 else wf.task_ids):
                t = state.task(tid)
                if state.task_status(t) in TERMINAL_TASK:
                    continue
                a = max(t.attempt, 1)
                end = ({"op": "task.done", "task_id": tid, "attempt": a, "result": {"v": draw(st.integers(0, 1))}}
                       if draw(st.integers(0, 3)) else
                       {"op": "task.fail", "task_id": tid, "attempt": a, "error": "bad input", "retryable": False})
                ops += [{"op": "task.claim", "task_id": tid, "attempt": a, "capacity": 1.0},
                        {"op": "task.start", "task_id": tid, "attempt": a}, end]
        if not ops:
            break
        dag.add(draw(st.sampled_from(WORKERS)), ops[:240], dag.heads())
    return dag


@settings(max_examples=150, deadline=None)
@given(finishing(), st.randoms(use_true_random=False))
def test_every_causal_order_builds_the_same_blocks_and_every_field_a_tool_shows(dag: Dag, rnd: random.Random) -> None:
    orders = causal_orders(dag, rnd, 3)
    states = [fold(dag, o) for o in orders]
    event(f"finished workflows: {len(_finished(states[0]))}")  # `pytest --hypothesis-show-statistics`
    for wid in _finished(states[0]):
        snaps = [build_snapshot(s, wid, max_chunk_bytes=CHUNK) for s in states]
        assert len({bytes(s.root_cid) for s in snaps}) == 1
        assert all(s.blocks() == snaps[0].blocks() for s in snaps)
        for cid, data in snaps[0].blocks():
            assert block_cid(data) == cid and len(data) <= CHUNK
        # re-folding the same events, in another order, verifies it
        assert verify_snapshot(snaps[0].root_cid, _inputs(dag, orders[-1]), wid, max_attempts=MAX_ATTEMPTS,
                               max_chunk_bytes=CHUNK)

        # what it holds is what the tools show: the summary, and each task's fields
        got = decode_snapshot(snaps[0].root, [data for _, data in snaps[0].chunks])
        state, wf = states[0], states[0].workflows[wid]
        assert got["workflow"] == {k: v for k, v in views.workflow_summary(state, wf).items() if k != "compacted"}
        page = views.workflow_status(state, wf, include_results=False, offset=0, limit=10**6, load_block=_no_block)
        assert len(got["tasks"]) == len(page["tasks"]) == len(wf.task_ids)
        for record, view in zip(got["tasks"], page["tasks"]):
            shown = {k: v for k, v in record.items() if k not in ("input", "input_ref", "result", "result_cid")}
            assert shown == {k: v for k, v in view.items() if k != "waiting"}, (record, view)
            task = state.task(view["task_id"])
            if task.spec.ref is None:
                assert record["input"] == task.spec.input and "input_ref" not in record
            else:  # a chunked submit's input stays in its chunk: the record names it
                assert record["input_ref"] == [task.spec.ref[0], task.spec.ref[1]] and "input" not in record
            with_result = views.task_view(state, task, True, lambda c: None)
            if "result" in record:
                assert "result" in with_result
            if "result_cid" in record:
                assert with_result.get("result_cid") == str(record["result_cid"])


@settings(max_examples=100, deadline=None)
@given(finishing(), st.randoms(use_true_random=False), st.data())
def test_a_snapshot_at_a_cut_is_the_fold_of_that_cut_alone(dag: Dag, rnd: random.Random, data: Any) -> None:
    """The cut is an event's past (the compact op's): built from the past alone and verified by
    re-folding it in another causal order, with chunks of any size."""
    n = len(dag.events)  # the closing events are the last: cut there as often as anywhere else
    idx = data.draw(st.one_of(st.integers(0, n - 1), st.integers(max(0, n - 3), n - 1)))
    past = _past(dag, idx)
    sub = [e for e in dag.events if e.idx in past]  # dag order: parents first
    state = fold(dag, sub)
    for wid in _finished(state):
        chunk = data.draw(st.sampled_from([300, 600, CHUNK]))
        try:
            snap = build_snapshot(state, wid, max_chunk_bytes=chunk)
        except SnapshotError as exc:  # one record over a small chunk: every peer abstains alike
            assert "over a chunk" in str(exc)
            with pytest.raises(SnapshotError):
                verify_snapshot(b"", _inputs(dag, sub), wid, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=chunk)
            event("a record over the chunk size")
            continue
        event(f"chunks: {'one' if len(snap.chunks) == 1 else 'several'}")
        shuffled = [e for o in causal_orders(dag, rnd, 1) for e in o if e.idx in past]
        assert verify_snapshot(snap.root_cid, _inputs(dag, shuffled), wid, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=chunk)
        got = decode_snapshot(snap.root, [d for _, d in snap.chunks])
        assert [t["task_id"] for t in got["tasks"]] == list(state.workflows[wid].task_ids)


# ------------------------------------------------------------------------------ a concrete history

WID = WA
N = 4


def _history() -> Dag:
    """peerA submits 4 tasks; peerB runs 0 and 1; task 2 fails once on peerC (retryable) and
    peerB runs it; task 3's result is a result block. Completed."""
    dag = Dag()
    sub = dag.add("peerA", [{"op": "workflow.submit", "workflow_id": WID, "name": "snap", "priority": 5,
                             "tag": "p2p-eligible", "created_at": 1000.0,
                             "tasks": [{"model": "m", "input": f"text {i}"} for i in range(N)]}], [])
    runs = []
    for i in (0, 1):
        runs += [{"op": "task.claim", "task_id": f"{WID}/{i}", "attempt": 1, "capacity": 1.0},
                 {"op": "task.start", "task_id": f"{WID}/{i}", "attempt": 1},
                 {"op": "task.done", "task_id": f"{WID}/{i}", "attempt": 1, "result": {"v": i, "b": b"\x00\x01"},
                  "stats": {"ms": 3}}]
    b = dag.add("peerB", runs, [sub.idx])
    c = dag.add("peerC", [{"op": "task.claim", "task_id": f"{WID}/2", "attempt": 1, "capacity": 1.0},
                          {"op": "task.start", "task_id": f"{WID}/2", "attempt": 1},
                          {"op": "task.fail", "task_id": f"{WID}/2", "attempt": 1, "error": "oom", "retryable": True}], [sub.idx])
    dag.add("peerB", [{"op": "task.claim", "task_id": f"{WID}/2", "attempt": 2, "capacity": 1.0},
                      {"op": "task.start", "task_id": f"{WID}/2", "attempt": 2},
                      {"op": "task.done", "task_id": f"{WID}/2", "attempt": 2, "result": {"v": 2}},
                      {"op": "task.claim", "task_id": f"{WID}/3", "attempt": 1, "capacity": 1.0},
                      {"op": "task.start", "task_id": f"{WID}/3", "attempt": 1},
                      {"op": "task.done", "task_id": f"{WID}/3", "attempt": 1, "result_cid": block_cid(b"a result")}],
            [b.idx, c.idx])
    return dag


def _forge(snap: Snapshot, change: Any) -> Any:
    """The root CID of ``snap`` with ``change`` applied to its first chunk's task records."""
    part = codec.decode(snap.chunks[0][1])
    change(part["tasks"])
    data = codec.encode(part)
    head = codec.decode(snap.root)
    head["chunks"][0] = block_cid(data)
    return block_cid(codec.encode(head))


def test_the_concrete_history_and_every_forgery_of_a_field() -> None:
    dag = _history()
    events = _inputs(dag, dag.events)
    snap = snapshot_at(events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)
    got = decode_snapshot(snap.root, [d for _, d in snap.chunks])
    assert got["workflow"]["state"] == "completed" and got["workflow"]["completed"] == N
    tasks = got["tasks"]
    assert [t["input"] for t in tasks] == [f"text {i}" for i in range(N)]
    assert [t["peer"] for t in tasks] == ["peerB"] * N and [t["attempts"] for t in tasks] == [1, 1, 2, 1]
    assert tasks[2]["errors"] == [{"attempt": 1, "peer": "peerC", "error": "oom", "expired": False}]
    assert tasks[0]["result"] == {"v": 0, "b": b"\x00\x01"} and tasks[3]["result_cid"] == block_cid(b"a result")
    assert verify_snapshot(snap.root_cid, events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)

    forgeries = {
        "a result": lambda ts: ts[0].__setitem__("result", {"v": 9, "b": b"\x00\x01"}),
        "who ran it": lambda ts: ts[1].__setitem__("peer", "peerC"),
        "a state": lambda ts: ts[2].__setitem__("state", "failed"),
        "the attempts": lambda ts: ts[2].__setitem__("attempts", 1),
        "an error": lambda ts: ts[2]["errors"][0].__setitem__("error", "bad input"),
        "the errors' order": lambda ts: ts[2]["errors"].append(dict(ts[2]["errors"][0], attempt=2)),
        "a result block": lambda ts: ts[3].__setitem__("result_cid", block_cid(b"another")),
        "an input": lambda ts: ts[0].__setitem__("input", "text 9"),
        "a task left out": lambda ts: ts.pop(),
    }
    for what, change in forgeries.items():
        forged = _forge(snap, change)
        assert forged != snap.root_cid, what
        assert not verify_snapshot(forged, events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK), what
    # the summary forged: another name, another state
    head = codec.decode(snap.root)
    head["workflow"]["completed"] = N - 1
    assert not verify_snapshot(block_cid(codec.encode(head)), events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)


def test_unfinished_unknown_and_chunked() -> None:
    dag = _history()
    events = _inputs(dag, dag.events)
    # the cut before peerB's last event: tasks 2 and 3 are not done, so there is nothing to compact
    early = events[:-1]
    with pytest.raises(SnapshotError, match="not finished"):
        snapshot_at(early, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)
    whole = snapshot_at(events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)
    with pytest.raises(SnapshotError, match="not finished"):  # a peer that cannot build one abstains
        verify_snapshot(whole.root_cid, early, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)
    with pytest.raises(SnapshotError, match="unknown workflow"):
        snapshot_at(events, "f" * 32, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=CHUNK)

    # small chunks: each within the limit, the tasks read back in order
    want = decode_snapshot(whole.root, [d for _, d in whole.chunks])["tasks"]
    counts = []
    for limit in (250, 400, 1000):
        small = snapshot_at(events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=limit)
        assert all(len(d) <= limit for _, d in small.chunks)
        assert decode_snapshot(small.root, [d for _, d in small.chunks])["tasks"] == want
        counts.append(len(small.chunks))
    assert counts[0] >= N - 1 and counts == sorted(counts, reverse=True) and counts[-1] == 1, counts
    small = snapshot_at(events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=250)
    with pytest.raises(SnapshotError, match="over a chunk"):
        snapshot_at(events, WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=120)
    # chunks out of order, missing, or of another snapshot are refused on reading
    with pytest.raises(SnapshotError, match="not the one the root names"):
        decode_snapshot(small.root, [d for _, d in reversed(small.chunks)])
    with pytest.raises(SnapshotError, match="the root names"):
        decode_snapshot(small.root, [d for _, d in small.chunks[:-1]])
    other = snapshot_at(events[:-1] + [events[-1]], WID, max_attempts=MAX_ATTEMPTS, max_chunk_bytes=250)
    assert other.root_cid == small.root_cid  # the same events: the same snapshot
    forged = _forge(small, lambda ts: ts[0].__setitem__("peer", "peerC"))
    assert forged != small.root_cid
    part = codec.decode(small.chunks[0][1])
    part["tasks"][0]["peer"] = "peerC"
    with pytest.raises(SnapshotError, match="not the one the root names"):
        decode_snapshot(small.root, [codec.encode(part), *[d for _, d in small.chunks[1:]]])
