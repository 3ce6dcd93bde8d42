"""Inputs in content-addressed chunks (issue 12 item 1; p2p/content/inputs.py).

Packing is lossless and bounded; a chunk from a peer is used only when it hashes to its CID and
is a chunk; a wrong block is refused and the next peer asked; a chunk nobody serves is a clear
error; a submit op holds exactly one of its three forms; and a node that submits a chunked
workflow runs, exports and compacts it with the same answers as an inline one while its
submit event carries no input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from p2p.clock import MerkleClock, codec
from p2p.clock.cids import block_cid
from p2p.content.inputs import (
    BadChunkError,
    InputChunks,
    InputUnavailableError,
    chunk_block,
    decode_chunk,
    pack_inputs,
)
from p2p.identity import Identity
from p2p.replication import BlockServer
from p2p.replication.dagservice import LocalDAGService
from p2p.scheduler.ops import MAX_CHUNK_INPUTS, MAX_LAZY_TASKS, MAX_TASKS, SubmitOp, submitter_prefix
from p2p.scheduler.state import State, TaskStatus, WorkflowStatus, apply_event

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(texts, min_size=1, max_size=200), st.integers(16, 4096), st.integers(1, 50))
def test_packing_keeps_every_input_in_order_within_the_bounds(inputs: list[str], max_bytes: int, max_count: int) -> None:
    groups = pack_inputs(inputs, max_bytes=max_bytes, max_count=max_count)
    assert [s for g in groups for s in g] == inputs
    for g in groups:
        assert 1 <= len(g) <= max_count
        size = sum(len(s.encode()) + 5 for s in g)
        assert size <= max_bytes or len(g) == 1  # only an input larger than a chunk stands alone
        assert decode_chunk(codec.encode(chunk_block(g))) == g


@pytest.mark.parametrize("obj, why", [
    ({"t": "other", "v": 1, "inputs": ["a"]}, "not an input chunk"),
    ({"t": "inputs", "v": 2, "inputs": ["a"]}, "not an input chunk"),
    ({"t": "inputs", "v": 1, "inputs": []}, "holds 1 to"),
    ({"t": "inputs", "v": 1, "inputs": ["a", 3]}, "strings of 1 to"),
    ({"t": "inputs", "v": 1, "inputs": ["a", ""]}, "strings of 1 to"),
    ({"t": "inputs", "v": 1, "inputs": ["a"] * (MAX_CHUNK_INPUTS + 1)}, "holds 1 to"),
    (["a", "b"], "not an input chunk"),
])
def test_a_block_that_is_not_a_chunk_is_refused(obj: Any, why: str) -> None:
    with pytest.raises(BadChunkError, match=why):
        decode_chunk(codec.encode(obj))
    with pytest.raises(BadChunkError, match="not a DAG-CBOR block"):
        decode_chunk(b"\xff\x00garbage")


def _op(**form: Any) -> dict[str, Any]:
    return {"op": "workflow.submit", "workflow_id": submitter_prefix("A") + "3" * 16, "name": "n", "priority": 5,
            "tag": "p2p-eligible", **form}


def _chunks(groups: list[list[str]]) -> list[dict[str, Any]]:
    return [{"cid": block_cid(codec.encode(chunk_block(g))), "count": len(g)} for g in groups]


def test_a_submit_holds_exactly_one_form() -> None:
    groups = [["a", "b"], ["c"]]
    ok = SubmitOp.model_validate(_op(template={"model": "m"}, chunks=_chunks(groups)))
    assert ok.count == 3 and ok.chunk_of(2) == (_chunks(groups)[1]["cid"], 0)
    bad = [
        (_op(template={"model": "m"}, chunks=_chunks(groups), inputs=["x"]), "either tasks"),
        (_op(tasks=[{"model": "m", "input": "x"}], chunks=_chunks(groups)), "either tasks"),
        (_op(chunks=_chunks(groups)), "either tasks"),  # no template: what would the tasks run?
        (_op(template={"model": "m"}, chunks=[{"cid": "bafy-not-a-cid", "count": 1}]), "must be a CID"),
        (_op(template={"model": "m"}, chunks=[{"cid": _chunks(groups)[0]["cid"], "count": 0}]), "greater than or equal"),
        (_op(template={"model": "m"}, chunks=[{"cid": _chunks(groups)[0]["cid"], "count": MAX_CHUNK_INPUTS + 1}]), "less than"),
        (_op(template={"model": "m"}, chunks=[{"cid": _chunks(groups)[0]["cid"], "count": MAX_CHUNK_INPUTS}] * (MAX_LAZY_TASKS // MAX_CHUNK_INPUTS + 1)),
         "a chunked submit may define"),
        (_op(template={"model": "m"}, replicas=2, chunks=[{"cid": _chunks(groups)[0]["cid"], "count": MAX_CHUNK_INPUTS}] * (MAX_TASKS // MAX_CHUNK_INPUTS)),
         "task slots"),  # replicated: the fold keeps every slot's record, so the eager bound
        (_op(template={"model": "m"}, chunks=[]), "at least 1"),
    ]
    for raw, why in bad:
        with pytest.raises(ValidationError, match=why):
            SubmitOp.model_validate(raw)


def test_the_fold_defines_each_task_by_its_chunk_and_position() -> None:
    inputs = [f"text {i}" for i in range(23)]
    groups = pack_inputs(inputs, max_count=5)
    op = _op(template={"model": "m", "task": "embedding"}, chunks=_chunks(groups))
    state = State()
    apply_event(state, b"e1", "A", 0, [op], parents=[], seq=1)
    wf = state.workflows[op["workflow_id"]]
    assert len(wf.task_ids) == 23 and not state.rejected
    # lazy: no task has a record until an op is about it, and each reads as a fresh one
    assert wf.lazy and wf.virtual == 23 and not state.tasks
    assert state.counts(wf)[TaskStatus.QUEUED] == 23 and state.workflow_status(wf) is WorkflowStatus.PENDING
    by_cid = {c["cid"]: g for c, g in zip(_chunks(groups), groups)}
    for i, tid in enumerate(wf.task_ids):
        spec = state.task(tid).spec
        assert spec.input == "" and spec.model == "m" and spec.task == "embedding"
        cid, pos = spec.ref
        assert by_cid[cid][pos] == inputs[i]
    assert state.task(f"{wf.workflow_id}/23") is None and state.task(f"{wf.workflow_id}/x") is None
    advert = {"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}
    apply_event(state, b"e2", "B", 1, [advert, {"op": "task.claim", "task_id": wf.task_ids[7], "attempt": 1, "capacity": 1.0}],
                parents=[b"e1"], seq=1)
    assert list(state.tasks) == [wf.task_ids[7]] and wf.virtual == 22
    counts = state.counts(wf)
    assert (counts[TaskStatus.QUEUED], counts[TaskStatus.CLAIMED]) == (22, 1) and counts == state.recount(wf)
    apply_event(state, b"e3", "A", 2, [{"op": "workflow.cancel", "workflow_id": wf.workflow_id}], parents=[b"e2"], seq=2)
    counts = state.counts(wf)
    assert counts[TaskStatus.CANCELLED] == 23 and counts == state.recount(wf)


# ------------------------------------------------------------------ fetching


class _Peer:
    def __init__(self, tmp: Path, name: str, dag: LocalDAGService) -> None:
        self.clock = MerkleClock.open(tmp / f"{name}.sqlite", Identity.generate())
        self.id = self.clock.peer_id
        dag.servers[self.id] = BlockServer(self.clock, lambda: [], max_blocks_per_request=64, max_frame_bytes=4 << 20)
        self.inputs = InputChunks(self.clock, dag, lambda: list(dag.servers), timeout_s=5)


class _Forger(BlockServer):
    """A peer that answers every block request with bytes of its choosing."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked = 0

    async def answer(self, req: Any) -> Any:
        from p2p.protocols.wire import BlocksReply

        self.asked += 1
        return BlocksReply(blocks=[(c, self.data) for c in req.cids])


async def test_a_chunk_comes_from_a_peer_checked_and_a_forged_one_is_refused(tmp_path: Path) -> None:
    dag = LocalDAGService({})
    a, b = _Peer(tmp_path, "a", dag), _Peer(tmp_path, "b", dag)
    chunk = ["first input", "second input", "third"]
    cid = a.clock.put_block(chunk_block(chunk))
    # a forger that answers first: its bytes do not hash to the CID; then one whose bytes do
    # hash (a chunk it made itself) but under another CID is simply not what was asked
    liar = _Forger(codec.encode(chunk_block(["poisoned"] * 3)))
    dag.servers = {"liar": liar, **dag.servers}
    try:
        assert await b.inputs.input_of((cid, 1), "liar") == "second input"
        assert liar.asked == 1 and b.inputs.refused == 1 and b.inputs.fetched == 1
        assert b.clock.get_block(cid) == a.clock.get_block(cid)  # kept: the chunk's other tasks read it here
        assert await b.inputs.input_of((cid, 2), "liar") == "third" and liar.asked == 1  # no second fetch
        with pytest.raises(BadChunkError, match="holds 3 inputs; the task names position 3"):
            await b.inputs.input_of((cid, 3), a.id)
        # a chunk nobody holds: a clear error naming who was asked
        other = block_cid(codec.encode(chunk_block(["nobody has this"])))
        dag.servers.pop("liar")
        with pytest.raises(InputUnavailableError, match="served by none of the peers asked"):
            await b.inputs.input_of((other, 0), a.id)
        # the block a peer serves under a chunk's CID but that is not a chunk is refused
        junk = a.clock.put_block({"t": "not-inputs"})
        with pytest.raises(InputUnavailableError):
            await b.inputs.input_of((junk, 0), a.id)
        assert b.inputs.refused == 2 and b.clock.get_block(junk) is None
    finally:
        a.clock.close()
        b.clock.close()


def _count_asks(dag: LocalDAGService) -> list[str]:
    """The peers ``dag`` is asked for blocks, in order (each request takes 50 ms, so that
    concurrent tasks overlap it)."""
    asked: list[str] = []
    real = dag.get_blocks

    async def counting(peer: str, cids: list[bytes], ancestors: int = 0) -> Any:
        asked.append(peer)
        await trio.sleep(0.05)
        return await real(peer, cids, ancestors)

    dag.get_blocks = counting  # type: ignore[method-assign]
    return asked


async def test_concurrent_tasks_of_one_chunk_fetch_it_once(tmp_path: Path) -> None:
    dag = LocalDAGService({})
    a, b = _Peer(tmp_path, "a", dag), _Peer(tmp_path, "b", dag)
    chunk = [f"input {i}" for i in range(50)]
    cid = a.clock.put_block(chunk_block(chunk))
    asked = _count_asks(dag)
    got: dict[int, str] = {}

    async def one(i: int) -> None:
        got[i] = await b.inputs.input_of((cid, i), a.id)

    try:
        async with trio.open_nursery() as n:
            for i in range(50):
                n.start_soon(one, i)
        assert got == dict(enumerate(chunk)) and asked == [a.id]
    finally:
        a.clock.close()
        b.clock.close()


# ------------------------------------------------------------------ on a node


async def test_a_chunked_workflow_runs_exports_and_compacts_like_an_inline_one(tmp_path: Path, shared_cache_dir: Path) -> None:
    from p2p.export import export_workflow_results
    from p2p.node import Node
    from tests.conftest import DEFAULT_MODEL, make_node_config

    tasks = [{"model": DEFAULT_MODEL, "input": f"Sentence {i}: a cat sat on mat number {i}."} for i in range(40)]
    cfg = make_node_config(tmp_path / "n", shared_cache_dir, inline_inputs_bytes=256)
    async with Node.open(cfg) as node:
        chunked = (await node.submit_workflow("chunked", tasks))["workflow_id"]
        inline = (await node.submit_workflow("inline", tasks[:3]))["workflow_id"]  # under 256 bytes: inline
        ops = {op["workflow_id"]: (op, len(ev.data)) for ev in node.clock.events() for op in ev.ops
               if op.get("op") == "workflow.submit"}
        op, size = ops[chunked]
        assert "inputs" not in op and "tasks" not in op and sum(c["count"] for c in op["chunks"]) == 40
        assert not any(t["input"].encode() in ev.data for ev in node.clock.events() for t in tasks[3:])
        assert "inputs" in ops[inline][0]
        await node.wait_for_workflow(chunked, 240)
        await node.wait_for_workflow(inline, 240)
        status = node.workflow_status(chunked, include_results=True)
        assert status["state"] == "completed", status
        out = tmp_path / "out"
        out.mkdir()
        await export_workflow_results(node, chunked, out / "c.jsonl")
        rows = [json.loads(line) for line in (out / "c.jsonl").read_text().splitlines()]
        assert [r["input"] for r in rows] == [t["input"] for t in tasks]
        await export_workflow_results(node, inline, out / "i.jsonl")
        first = [json.loads(line) for line in (out / "i.jsonl").read_text().splitlines()]
        assert [r["output"] for r in first] == [r["output"] for r in rows[:3]]  # same inputs, same outputs

        # search reads vectors for its index and the hits' inputs from the chunks
        from p2p.search import SearchIndexes, search_workflow

        hits = await search_workflow(node, SearchIndexes(tmp_path / "search"), chunked, "a cat on a mat", k=3)
        assert hits["vectors"] == 40 and {h["input"] for h in hits["results"]} <= {t["input"] for t in tasks}

        # compacted and dropped, it answers alike: the snapshot names the chunks, not the inputs
        node.compactor.retention_s = 0
        for _ in range(2):
            await node.compactor.step()
        assert chunked in node.scheduler.state.dropped
        await export_workflow_results(node, chunked, out / "after.jsonl")
        assert (out / "after.jsonl").read_bytes() == (out / "c.jsonl").read_bytes()
        after = node.workflow_status(chunked, include_results=True)
        assert {k: v for k, v in after.items() if k != "compacted"} == {k: v for k, v in status.items() if k != "compacted"}


async def test_a_peer_runs_a_chunked_workflow_fetching_only_the_chunks_it_needs(tmp_path: Path, shared_cache_dir: Path) -> None:
    """p2p-only: the submitter may not run the tasks, so the other peer fetches their chunks over
    libp2p and runs them; its outputs equal the submitter's own run of the same inputs."""
    from p2p.config import NodeConfig
    from p2p.export import export_workflow_results
    from p2p.node import Node
    from tests.conftest import DEFAULT_MODEL, make_node_config

    def config(name: str) -> NodeConfig:
        raw = make_node_config(tmp_path / name, shared_cache_dir, name=name, network=True, inline_inputs_bytes=0).model_dump()
        raw["network"]["heartbeat_s"] = 0.5
        return NodeConfig.model_validate(raw)

    tasks = [{"model": DEFAULT_MODEL, "input": f"Remote sentence {i} about the sea."} for i in range(16)]
    async with Node.open(config("a")) as a, Node.open(config("b")) as b:
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(60):
            while b.peer_id not in {r.heartbeat.peer_id for r in a.peers.records()}:
                await trio.sleep(0.05)
        remote = (await a.submit_workflow("remote", tasks, tag="p2p-only"))["workflow_id"]
        local = (await a.submit_workflow("local", tasks, tag="local-only"))["workflow_id"]
        await a.wait_for_workflow(remote, 240)
        await a.wait_for_workflow(local, 240)
        sr = a.workflow_status(remote, include_results=True)
        sl = a.workflow_status(local, include_results=True)
        assert sr["state"] == sl["state"] == "completed", (sr, sl)
        assert {t["peer"] for t in sr["tasks"]} == {b.peer_id} and {t["peer"] for t in sl["tasks"]} == {a.peer_id}
        assert b.inputs.fetched >= 1 and b.inputs.refused == 0
        out = tmp_path / "out"
        out.mkdir()
        rows = {}
        for name, wid in (("r", remote), ("l", local)):
            await export_workflow_results(a, wid, out / f"{name}.jsonl")
            rows[name] = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [r["input"] for r in rows["r"]] == [t["input"] for t in tasks]
        for x, y in zip(rows["r"], rows["l"]):
            assert max(abs(p - q) for p, q in zip(x["output"]["embedding"], y["output"]["embedding"])) < 1e-4


def test_duplicate_submits_of_a_lazy_workflow_cost_their_records_not_their_range() -> None:
    """A faulty submitter's second submit under a lazy workflow's id rebuilds the workflow from
    the records it has (a duplicate of a million tasks is a few bytes; visiting every index on
    every peer was a denial of service): the answers are the eager fold's, and no record is
    made for a task no op is about."""
    from unittest import mock

    big = [{"cid": block_cid(codec.encode(chunk_block(["x"]))), "count": MAX_CHUNK_INPUTS}] * (MAX_LAZY_TASKS // MAX_CHUNK_INPUTS)
    n = MAX_CHUNK_INPUTS * len(big)
    wid = submitter_prefix("A") + "4" * 16
    first = _op(template={"model": "m"}, chunks=big) | {"workflow_id": wid}
    claim = {"op": "task.claim", "task_id": f"{wid}/{n - 1}", "attempt": 1, "capacity": 1.0}
    advert = {"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}
    dups = [_op(template={"model": "m"}, chunks=big[:-1]) | {"workflow_id": wid, "name": f"d{k}"} for k in range(20)]
    eager = _op(tasks=[{"model": "m", "input": "e"}] * 3) | {"workflow_id": wid, "name": "eager"}
    state = State()
    apply_event(state, b"e1", "A", 0, [first], parents=[], seq=1)
    apply_event(state, b"e2", "B", 1, [advert, claim], parents=[b"e1"], seq=1)
    apply_event(state, b"e3", "A", 2, [*dups, eager], parents=[b"e2"], seq=2)
    wf = state.workflows[wid]
    assert wf.lazy and len(wf.task_ids) == n and not state.rejected
    assert set(state.tasks) == {f"{wid}/{n - 1}"} and wf.virtual == n - 1  # the claimed task alone
    assert sorted(state.undefined) == [] and len(wf.made) == 1
    counts = state.counts(wf)
    assert (counts[TaskStatus.QUEUED], counts[TaskStatus.CLAIMED]) == (n - 1, 1)
    # the same events folded eagerly: the same answers (a small one, so that it fits)
    small = [{"cid": big[0]["cid"], "count": 3}]
    for lazy in (True, False):
        with mock.patch.object(SubmitOp, "lazy", property(lambda self: lazy and self.chunks is not None)):
            s2 = State()
            apply_event(s2, b"e1", "A", 0, [first | {"chunks": small * 2}], parents=[], seq=1)
            apply_event(s2, b"e2", "B", 1, [advert, claim | {"task_id": f"{wid}/5"}], parents=[b"e1"], seq=1)
            apply_event(s2, b"e3", "A", 2, [*(d | {"chunks": small} for d in dups), eager], parents=[b"e2"], seq=2)
            if lazy:
                got = s2.snapshot()
            else:
                assert s2.snapshot() == got


async def test_tasks_waiting_on_a_fetch_no_peer_serves_share_its_failure(tmp_path: Path) -> None:
    """Fifty tasks of one chunk whose only holder is unreachable: one fetch, one answer for
    all (each waiting on a timeout in turn held the executor's slots for minutes)."""
    dag = LocalDAGService({})
    a, b = _Peer(tmp_path, "a", dag), _Peer(tmp_path, "b", dag)
    cid = a.clock.put_block(chunk_block([f"input {i}" for i in range(50)]))
    dag.down.add(a.id)
    asked = _count_asks(dag)
    failed = []

    async def one(i: int) -> None:
        try:
            await b.inputs.input_of((cid, i), a.id)
        except InputUnavailableError:
            failed.append(i)

    try:
        async with trio.open_nursery() as n:
            for i in range(50):
                n.start_soon(one, i)
        assert sorted(failed) == list(range(50)) and asked == [a.id]
        dag.down.discard(a.id)  # back: after the short memory of the failure, it is fetched
        b.inputs._failed.clear()
        assert await b.inputs.input_of((cid, 7), a.id) == "input 7"
    finally:
        a.clock.close()
        b.clock.close()
