"""A 25,000-task workflow submitted inline in one MCP call (issue 12 item 1): the tasks share
model, task and params, so the submit names its inputs' content-addressed chunks (a few KiB
of event instead of ~1 MiB gossiped to every peer); a peer folds the same 25,000 tasks from
it and fetches a chunk only when it needs an input, and a restart folds it again from disk.
The compact inline form (template + inputs in one 2 MiB block) is checked too, with chunking
turned off. Real nodes with the real default model; the workflow is cancelled at once
(running 25,000 embeddings is not the point here)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import Client

from mcp_server.server import build_server
from p2p.config import NodeConfig
from p2p.node import Node
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 25_000


def _config(tmp: Path, cache: Path, name: str, **sched: Any) -> NodeConfig:
    raw = make_node_config(tmp / name, cache, name=name, network=True, **sched).model_dump()
    raw["network"]["heartbeat_s"] = 0.5
    return NodeConfig.model_validate(raw)


def _submit_block(node: Node, wid: str) -> tuple[int, dict[str, Any]]:
    """The size of the clock block that holds ``wid``'s submit, and that op as stored."""
    for ev in node.clock.events():
        for op in ev.ops:
            if op.get("op") == "workflow.submit" and op.get("workflow_id") == wid:
                return len(ev.data), op
    raise AssertionError("the submit's event was not found")


@pytest.mark.parametrize("chunked", [True, False], ids=["chunks", "inline"])
async def test_a_25000_task_workflow_inline_in_one_call(tmp_path: Path, shared_cache_dir: Path, chunked: bool) -> None:
    tasks = [{"model": DEFAULT_MODEL, "input": f"Sentence {i} about a cat on a mat."} for i in range(N)]
    sched = {} if chunked else {"inline_inputs_bytes": 1 << 30}
    async with Node.open(_config(tmp_path, shared_cache_dir, "a", **sched)) as a, \
            Node.open(_config(tmp_path, shared_cache_dir, "b")) as b:
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(60):
            while b.peer_id not in {r.heartbeat.peer_id for r in a.peers.records()}:
                await trio.sleep(0.05)
        async with Client(build_server(a), read_timeout_seconds=300) as client:
            t0 = time.perf_counter()
            res = await client.call_tool("submit_workflow", {"name": "big", "tasks": tasks, "tag": "local-only"})
            submit_s = time.perf_counter() - t0
            assert not res.is_error, res.content
            wid = res.structured_content["workflow_id"]
            assert res.structured_content["total"] == N
            cancel = await client.call_tool("cancel_workflow", {"workflow_id": wid})
            assert not cancel.is_error and cancel.structured_content["state"] == "cancelled", cancel.content
            page = (await client.call_tool("get_workflow_status", {"workflow_id": wid, "offset": N - 3, "limit": 3})).structured_content
            assert [t["task_id"] for t in page["tasks"]] == [f"{wid}/{i}" for i in range(N - 3, N)]

        size, op = _submit_block(a, wid)
        if chunked:
            assert "template" in op and "inputs" not in op and sum(c["count"] for c in op["chunks"]) == N, sorted(op)
            assert size < 16_384, size  # the chunks' CIDs, not ~1 MiB of inputs
        else:
            assert "template" in op and len(op["inputs"]) == N and "tasks" not in op, sorted(op)
            assert size <= a.config.clock.max_block_bytes, size
        print(f"25,000-task submit ({'chunks' if chunked else 'inline'}): {submit_s:.2f} s over MCP, clock block {size} bytes")

        # the peer folds the same 25,000 tasks from that one block
        with trio.fail_after(120):
            while wid not in b.scheduler.state.workflows or b.clock_info()["hash"] != a.clock_info()["hash"]:
                await trio.sleep(0.1)
        sa, sb = a.workflow_summary(wid), b.workflow_summary(wid)
        assert sa == sb and sb["total"] == N and sb["state"] == "cancelled", (sa, sb)
        last = b.workflow_status(wid, False, N - 1, 1)["tasks"][0]
        assert last["task_id"] == f"{wid}/{N - 1}"
        spec = b.scheduler.state.task(f"{wid}/{N - 1}").spec
        if chunked:  # the peer holds no input until it needs one; then it fetches that chunk alone
            assert spec.input == "" and not b.clock.has(spec.ref[0])
            assert await b.inputs.input_of(spec.ref, a.peer_id) == f"Sentence {N - 1} about a cat on a mat."
            assert b.inputs.fetched == 1 and not any(b.clock.has(c["cid"]) for c in op["chunks"][:-1])
        else:
            assert spec.input == f"Sentence {N - 1} about a cat on a mat."
        summary = sa

    # a restart folds it again from disk
    async with Node.open(_config(tmp_path, shared_cache_dir, "a", **sched)) as again:
        assert again.workflow_summary(wid) == summary
        spec = again.scheduler.state.task(f"{wid}/{N // 2}").spec
        text = again.inputs.input_local(spec.ref) if chunked else spec.input
        assert text == f"Sentence {N // 2} about a cat on a mat." and spec.model == DEFAULT_MODEL and spec.model_cid
