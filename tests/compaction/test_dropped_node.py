"""Dropping a compacted workflow's records on a real node (docs/compaction.md §5): after the
compaction the node answers status pages, exports and searches from the snapshot's blocks with
every field as before, holds none of the workflow's tasks, and a restart skips every op about
it — with the real default model, results stored as their own clock blocks, networking off."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_server.server import build_server

from p2p.export import export_workflow_results
from p2p.errors import NodeError
from p2p.node import Node
from p2p.search import SearchIndexes, search_workflow
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)

TEXTS = [f"Sentence {i}: {w}" for i, w in enumerate(
    ["the cat sat on the mat", "stock markets fell sharply", "a recipe for bread", "rain is expected tomorrow",
     "the team won the final", "a new phone was released", "the river flooded the town", "how to learn python",
     "the museum opened a new wing", "prices of houses keep rising", "a comet was seen last night",
     "the concert was sold out"])]


def _tasks() -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": t} for t in TEXTS]


async def _exports(node: Node, wid: str, out: Path) -> dict[str, bytes]:
    out.mkdir()
    got = {}
    for fmt in ("jsonl", "npy", "parquet"):
        r = await export_workflow_results(node, wid, out / f"r.{fmt}")
        assert r["rows"] == len(TEXTS) and r["with_output"] == len(TEXTS), r
        got[fmt] = (out / f"r.{fmt}").read_bytes()
    return got


async def _hits(node: Node, wid: str, directory: Path) -> list[tuple[str, str, float]]:
    out = await search_workflow(node, SearchIndexes(directory), wid, "financial news about the economy", k=4)
    assert out["index"] == "built"  # from this node's results: the fold's, or the snapshot's
    return [(h["task_id"], h["input"], h["score"]) for h in out["results"]]


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "kept"])
async def test_a_dropped_workflow_answers_alike_and_a_restart_skips_it(tmp_path: Path, shared_cache_dir: Path,
                                                                       prune: bool) -> None:
    """Dropped, a workflow answers every tool alike, and a restart skips it: with pruning on
    (the default) its events are stubs the restart replays without ops; with it off, the events
    stay whole and the restart skips each of their ops."""
    data = tmp_path / "node"
    cfg = make_node_config(data, shared_cache_dir, inline_result_bytes=0)  # every result its own block
    cfg.clock.prune_events = prune
    async with Node.open(cfg) as node:
        wid = (await node.submit_workflow("docs", _tasks()))["workflow_id"]
        other = (await node.submit_workflow("live", _tasks()[:2]))["workflow_id"]
        await node.wait_for_workflow(wid, 240)
        await node.wait_for_workflow(other, 240)
        before = node.workflow_status(wid, include_results=True)
        assert before["state"] == "completed" and all("result" in t for t in before["tasks"])
        page_before = node.workflow_status(wid, include_results=True, offset=5, limit=3)
        exports_before = await _exports(node, wid, tmp_path / "before")
        hits_before = await _hits(node, wid, tmp_path / "s1")
        listing_before = node.list_workflows()

        node.compactor.retention_s = 0  # compact what finished now
        for _ in range(2):
            await node.compactor.step()
        state = node.scheduler.state
        assert wid in state.dropped and other in state.dropped
        assert not any(t.startswith(wid + "/") for t in state.tasks)
        info = node.node_info()["compaction"]
        assert info["dropped"] == 2 and info["written"] == 2, info
        events = len(node.clock)
        heads = {bytes(h) for h in node.clock.heads()}
        stubs = [ev for ev in node.clock.events() if ev.vv is not None]
        if prune:  # every event but the heads and this node's adverts was about the two dropped workflows only
            kept = [ev for ev in node.clock.events() if ev.vv is None and bytes(ev.cid) not in heads]
            assert all(any(op.get("op") == "peer.advertise" for op in ev.ops) for ev in kept), kept
            assert info["pruned_events"] == info["stubs_held"] == len(stubs) == events - len(heads) - len(kept) > 0, info
            assert all(node.clock.get_block(ev.cid) is None and node.clock.stub(ev.cid) for ev in stubs)
            assert {bytes(ev.cid) for ev in stubs}.isdisjoint(heads)
        else:
            assert info["pruned_events"] == 0 and not stubs, info

        after = node.workflow_status(wid, include_results=True)
        assert after["compacted"]["by"] == node.peer_id
        assert {k: v for k, v in after.items() if k != "compacted"} == {k: v for k, v in before.items() if k != "compacted"}
        page = node.workflow_status(wid, include_results=True, offset=5, limit=3)
        assert page["tasks"] == page_before["tasks"] and page["has_more"] is True
        assert node.workflow_status(wid, limit=0)["tasks"] == []
        async with Client(build_server(node)) as client:  # through MCP: the chunks decoded off the loop first
            res = await client.call_tool("get_workflow_status", {"workflow_id": wid, "include_results": True,
                                                                 "offset": 5, "limit": 3, "format": "floats"})
            assert not res.is_error, res.content
            assert res.structured_content["tasks"] == page_before["tasks"]
            assert res.structured_content["compacted"] == after["compacted"]
        assert await _exports(node, wid, tmp_path / "after") == exports_before
        assert await _hits(node, wid, tmp_path / "s2") == hits_before
        assert [{k: v for k, v in w.items() if k != "compacted"} for w in node.list_workflows()] == \
            [{k: v for k, v in w.items() if k != "compacted"} for w in listing_before]

    async with Node.open(cfg) as node:  # a restart: filed first, every op about it skipped
        state = node.scheduler.state
        assert wid in state.dropped and not any(t.startswith(wid + "/") for t in state.tasks)
        assert len(node.clock) == events and state.events == events
        if prune:  # replayed as stubs: no op to skip but the heads'
            assert node.node_info()["compaction"]["stubs_held"] == len(stubs)
        else:
            assert node.node_info()["compaction"]["dropped_ops_skipped"] >= 3 * len(TEXTS)
        assert node.workflow_status(wid, include_results=True) == after
        assert await _exports(node, wid, tmp_path / "restarted") == exports_before
        assert await _hits(node, wid, tmp_path / "s3") == hits_before
        # still a finished workflow to every tool: no new work, and cancel changes nothing
        assert (await node.cancel_workflow(wid))["state"] == "completed"
        assert node.workflow_summary(wid)["total"] == len(TEXTS)

        # results.retention_s later the result blocks go (every result here is a block of its own):
        # pages show result_cid only, an export says the results expired, partial=true writes the rest
        node.expiry.retention_s = 0
        await node.compactor.step()
        assert node.node_info()["compaction"]["results_expired"] == 2  # both dropped workflows
        expired = node.workflow_status(wid, include_results=True)
        assert expired["compacted"]["results_expired"] is True
        assert all("result" not in t and t["result_cid"] for t in expired["tasks"])
        with pytest.raises(NodeError, match="expired on this peer"):
            await export_workflow_results(node, wid, tmp_path / "expired.jsonl")
        assert not (tmp_path / "expired.jsonl").exists()
        r = await export_workflow_results(node, wid, tmp_path / "expired.jsonl", partial=True)
        assert r["rows"] == len(TEXTS) and r["without_output"] == len(TEXTS), r

    async with Node.open(cfg) as node:  # expired stays expired
        assert node.workflow_status(wid, include_results=True) == expired


@pytest.mark.slow
async def test_a_node_killed_with_minus_9_after_dropping_answers_alike_on_restart(cluster: Any) -> None:
    """A real ``p2p start`` process with a retention of 0 s compacts and drops a finished
    workflow on its own; killed with -9 straight after, it comes back answering the same, the
    workflow still dropped (the record was committed after the snapshot's blocks)."""
    from tests.cluster import call, eventually, wait_done

    env = {"IPFS_ACCELERATE_CLOCK__RETENTION_S": "0"}
    node = cluster.start("n", env=env)
    wid = (await call(node, "submit_workflow", name="docs", tasks=_tasks()))["workflow_id"]
    await wait_done(node, wid)

    async def dropped() -> bool:
        return (await call(node, "get_node_info"))["compaction"]["dropped"] == 1

    await eventually(dropped, 60, "the finished workflow to be compacted and dropped")
    before = await call(node, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    cluster.kill(node, signal.SIGKILL)
    node = cluster.start("n", env=env)
    info = (await call(node, "get_node_info"))["compaction"]
    # its ops skipped on the restart, or (pruned before the kill) their events replayed as stubs
    assert info["dropped"] == 1 and (info["dropped_ops_skipped"] >= 3 * len(TEXTS) or info["stubs_held"] > 0), info
    after = await call(node, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    assert after == before and after["compacted"]["by"] == node.peer_id


@pytest.mark.slow
async def test_a_fresh_peer_joins_a_pruned_node_over_libp2p_and_answers_alike(cluster: Any) -> None:
    """Real processes: ``p2p start`` with a retention of 0 s compacts, drops and prunes a finished
    workflow on its own (no other live peer holds anything back); a fresh peer bootstrapped to
    it gets stubs where the blocks were, adopts the compacted workflow and its snapshot, and
    answers every field alike; so it does after a kill -9 and a restart."""
    from tests.cluster import call, eventually, wait_done

    env = {"IPFS_ACCELERATE_CLOCK__RETENTION_S": "0"}
    n1 = cluster.start("n1", env=env)
    wid = (await call(n1, "submit_workflow", name="docs", tasks=_tasks()))["workflow_id"]
    await wait_done(n1, wid)

    async def pruned() -> bool:
        info = (await call(n1, "get_node_info"))["compaction"]
        return info["dropped"] == 1 and info["stubs_held"] > 0

    await eventually(pruned, 60, "the finished workflow to be compacted, dropped and pruned")
    before = await call(n1, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    listing = await call(n1, "list_workflows")
    n2 = cluster.start("n2", bootstrap=[n1], env=env)

    async def joined() -> bool:
        return (await call(n2, "get_node_info"))["compaction"]["joined"]["adopted"] == 1

    await eventually(joined, 60, "the fresh peer to adopt the compacted workflow")
    info = (await call(n2, "get_node_info"))
    assert info["compaction"]["dropped"] == 1 and info["replication"]["stubs_adopted"] > 0, info["compaction"]
    assert await call(n2, "get_workflow_status", workflow_id=wid, include_results=True, format="floats") == before
    assert await call(n2, "list_workflows") == listing
    cluster.kill(n2, signal.SIGKILL)
    n2 = cluster.start("n2", bootstrap=[n1], env=env)
    assert await call(n2, "get_workflow_status", workflow_id=wid, include_results=True, format="floats") == before
    assert (await call(n2, "get_node_info"))["compaction"]["stubs_held"] > 0
