"""Every MCP tool through the SDK's in-memory Client, on a real node with the real default model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_server.server import build_server
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(600)

TOOLS = {
    "submit_workflow", "get_workflow_status", "wait_for_workflow", "cancel_workflow",
    "set_workflow_priority", "list_workflows", "run_inference", "list_models", "list_peers",
    "get_node_info", "connect_peer", "export_workflow_results", "submit_workflow_file",
    "search_workflow", "compare_texts",
}


def _tasks(n: int, model: str = DEFAULT_MODEL) -> list[dict[str, Any]]:
    return [{"model": model, "input": f"Sentence number {i} about cats and dogs."} for i in range(n)]


async def _call(client: Client, name: str, /, **args: Any) -> dict[str, Any]:
    res = await client.call_tool(name, args)
    assert not res.is_error, res.content
    return res.structured_content


async def _error(client: Client, name: str, /, **args: Any) -> str:
    res = await client.call_tool(name, args)
    assert res.is_error, res.structured_content
    return " ".join(getattr(c, "text", "") for c in res.content)


async def test_every_tool_is_typed_and_described(node: Any) -> None:
    async with Client(build_server(node)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert TOOLS <= set(tools)
    for name in TOOLS:
        tool = tools[name]
        assert tool.description and len(tool.description) > 40, name
        assert tool.input_schema["type"] == "object", name
        assert tool.output_schema is not None and tool.output_schema.get("type") == "object", name
    assert tools["submit_workflow"].input_schema["properties"]["tag"]["enum"] == ["p2p-eligible", "p2p-only", "local-only"]


async def test_submit_wait_and_read_results(node: Any) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total))

    async with Client(build_server(node)) as client:
        sub = await _call(client, "submit_workflow", name="emb", tasks=_tasks(12), priority=2)
        wid = sub["workflow_id"]
        assert sub["total"] == 12 and sub["priority"] == 2 and sub["tag"] == "p2p-eligible"
        res = await client.call_tool("wait_for_workflow", {"workflow_id": wid, "timeout_s": 300, "include_results": True, "format": "floats"},
                                     progress_callback=on_progress)
        assert not res.is_error
        st = res.structured_content
    assert st["state"] == "completed" and st["completed"] == 12 == st["total"]
    assert [t["task_id"] for t in st["tasks"]] == [f"{wid}/{i}" for i in range(12)]
    for t in st["tasks"]:
        assert t["state"] == "done" and t["peer"] == node.peer_id and t["attempts"] == 1
        vec = t["result"]["embedding"]
        assert len(vec) == 384 and math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-4)
    assert progress and progress[-1] == (12, 12)


async def test_results_equal_run_inference(node: Any) -> None:
    async with Client(build_server(node)) as client:
        text = "A cat sits on the mat."
        direct = await _call(client, "run_inference", model=DEFAULT_MODEL, inputs=[text], format="floats")
        sub = await _call(client, "submit_workflow", name="one", tasks=[{"model": DEFAULT_MODEL, "input": text}])
        st = await _call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=120, include_results=True, format="floats")
    a = direct["outputs"][0]["embedding"]
    b = st["tasks"][0]["result"]["embedding"]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert direct["task"] == "embedding" and direct["model"] == DEFAULT_MODEL


async def test_bad_input_is_a_tool_error_and_writes_nothing(tmp_path: Any, shared_cache_dir: Any) -> None:
    from p2p.node import Node

    cfg = make_node_config(tmp_path / "n", shared_cache_dir, max_tasks_per_workflow=5, max_input_chars=50)
    async with Node.open(cfg) as node:
        async with Client(build_server(node)) as client:
            events = len(node.clock)
            cases = [
                ("get_workflow_status", {"workflow_id": "nope"}, "unknown workflow id"),
                ("cancel_workflow", {"workflow_id": "nope"}, "unknown workflow id"),
                ("set_workflow_priority", {"workflow_id": "nope", "priority": 3}, "unknown workflow id"),
                ("wait_for_workflow", {"workflow_id": "nope", "timeout_s": 1}, "unknown workflow id"),
                ("submit_workflow", {"name": "x", "tasks": _tasks(1, "no-such/model")}, "no-such/model"),
                ("submit_workflow", {"name": "x", "tasks": []}, "no tasks"),
                ("submit_workflow", {"name": "x", "tasks": _tasks(6)}, "too many tasks"),
                ("submit_workflow", {"name": "x", "tasks": [{"model": DEFAULT_MODEL, "input": "x" * 51}]}, "maximum is 50"),
                ("submit_workflow", {"name": "x", "tasks": [{"model": DEFAULT_MODEL, "input": "  "}]}, "empty input"),
                ("submit_workflow", {"name": "x", "tasks": _tasks(1), "priority": 0}, "priority"),
                ("submit_workflow", {"name": "x", "tasks": _tasks(1), "priority": 11}, "priority"),
                ("submit_workflow", {"name": "x", "tasks": _tasks(1), "tag": "everywhere"}, "tag"),
                ("run_inference", {"model": "no-such/model", "inputs": ["hi"]}, "no-such/model"),
                ("run_inference", {"model": DEFAULT_MODEL, "inputs": []}, "inputs"),
                ("list_workflows", {"state": "sleeping"}, "state"),
            ]
            for tool, args, needle in cases:
                msg = await _error(client, tool, **args)
                assert needle.lower() in msg.lower(), (tool, args, msg)
            unknown = await _error(client, "submit_workflow", name="x", tasks=_tasks(1, "no-such/model"))
            assert DEFAULT_MODEL in unknown  # lists what is available
            assert len(node.clock) == events
            assert (await _call(client, "list_workflows"))["workflows"] == []


async def test_cancel_priority_list_and_paging(tmp_path: Any, shared_cache_dir: Any) -> None:
    from p2p.node import Node

    # max_inflight=1 keeps most of the workflow queued long enough to cancel it.
    cfg = make_node_config(tmp_path / "n", shared_cache_dir, max_inflight=1)
    async with Node.open(cfg) as node:
        async with Client(build_server(node)) as client:
            a = await _call(client, "submit_workflow", name="a", tasks=_tasks(40), priority=9)
            b = await _call(client, "submit_workflow", name="b", tasks=_tasks(3), priority=5)
            pri = await _call(client, "set_workflow_priority", workflow_id=b["workflow_id"], priority=1)
            assert pri["priority"] == 1
            cancelled = await _call(client, "cancel_workflow", workflow_id=a["workflow_id"])
            assert cancelled["state"] == "cancelled"
            done_b = await _call(client, "wait_for_workflow", workflow_id=b["workflow_id"], timeout_s=120)
            assert done_b["state"] == "completed"
            st = await _call(client, "wait_for_workflow", workflow_id=a["workflow_id"], timeout_s=5)
            assert st["state"] == "cancelled"
            assert st["cancelled"] > 0 and st["completed"] + st["cancelled"] == 40
            page = await _call(client, "get_workflow_status", workflow_id=a["workflow_id"], offset=10, limit=5)
            assert [t["task_id"] for t in page["tasks"]] == [f"{a['workflow_id']}/{i}" for i in range(10, 15)]
            assert page["has_more"] is True
            last = await _call(client, "get_workflow_status", workflow_id=a["workflow_id"], offset=35, limit=10)
            assert len(last["tasks"]) == 5 and last["has_more"] is False
            listed = await _call(client, "list_workflows", state="cancelled")
            assert [w["workflow_id"] for w in listed["workflows"]] == [a["workflow_id"]]
            assert len((await _call(client, "list_workflows", limit=1))["workflows"]) == 1
            newest = [w["workflow_id"] for w in (await _call(client, "list_workflows"))["workflows"]]
            assert newest == [b["workflow_id"], a["workflow_id"]]
            await _check_counts_only(client, a["workflow_id"], 40)


def _tally(tasks: list[dict[str, Any]]) -> dict[str, int]:
    """A summary's counts, from its tasks' states."""
    states = [t["state"] for t in tasks]
    return {"completed": states.count("done"), "failed": states.count("failed"), "cancelled": states.count("cancelled"),
            "running": states.count("running"), "pending": states.count("queued") + states.count("claimed")}


async def _check_counts_only(client: Client, wid: str, total: int) -> None:
    """limit=0 (get_workflow_status and wait_for_workflow): the counts and state of a full page's
    tasks, and no task."""
    full = await _call(client, "get_workflow_status", workflow_id=wid, limit=total)
    assert len(full["tasks"]) == total and full["has_more"] is False
    for tool, extra in (("get_workflow_status", {}), ("wait_for_workflow", {"timeout_s": 0})):
        only = await _call(client, tool, workflow_id=wid, limit=0, **extra)
        assert only["tasks"] == [] and only["limit"] == 0 and only["total"] == total, tool
        assert {k: only[k] for k in _tally(full["tasks"])} == _tally(full["tasks"]), tool
        assert only["state"] == full["state"], tool
    assert "limit" in await _error(client, "get_workflow_status", workflow_id=wid, limit=-1)


async def test_wait_times_out_with_the_current_state(tmp_path: Any, shared_cache_dir: Any) -> None:
    from p2p.node import Node

    cfg = make_node_config(tmp_path / "n", shared_cache_dir)
    async with Node.open(cfg) as node:
        async with Client(build_server(node)) as client:
            # p2p-only on a lone node: no peer may run it, so it stays pending.
            sub = await _call(client, "submit_workflow", name="stuck", tasks=_tasks(2), tag="p2p-only")
            st = await _call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=0.5)
            assert st["state"] == "pending" and st["completed"] == 0 and st["pending"] == 2
            await _check_counts_only(client, sub["workflow_id"], 2)


async def test_node_info_peers_models_and_resources(node: Any) -> None:
    async with Client(build_server(node)) as client:
        info = await _call(client, "get_node_info")
        assert info["peer_id"] == node.peer_id and info["clock"]["events"] == 0
        sub = await _call(client, "submit_workflow", name="r", tasks=_tasks(2))
        await _call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=120)
        info = await _call(client, "get_node_info")
        assert info["clock"]["events"] >= 2 and len(info["clock"]["heads"]) == 1 and len(info["clock"]["hash"]) == 64
        db = Path(node.config.data_dir) / "clock.sqlite"
        on_disk = sum(p.stat().st_size for p in db.parent.glob("clock.sqlite*"))
        assert 0 < info["clock"]["db_bytes"] and abs(info["clock"]["db_bytes"] - on_disk) <= 1 << 20, (info["clock"], on_disk)
        assert "cpu" in json.dumps(info["hardware"]).lower()
        peers = await _call(client, "list_peers")
        assert peers["self"]["peer_id"] == node.peer_id and peers["peers"] == []
        assert DEFAULT_MODEL in peers["self"]["models"]
        models = await _call(client, "list_models")
        row = next(m for m in models["models"] if m["model"] == DEFAULT_MODEL)
        assert row["local"] and row["peers"] == [node.peer_id] and row["files"]
        assert row["cid"] == peers["self"]["model_cids"][DEFAULT_MODEL]
        assert all(f["cid"].startswith("baf") and f["size"] > 0 for f in row["files"])
        res = await client.read_resource("node://info")
        assert json.loads(res.contents[0].text)["peer_id"] == node.peer_id
        res = await client.read_resource(f"workflow://{sub['workflow_id']}")
        wf = json.loads(res.contents[0].text)
        assert wf["state"] == "completed" and len(wf["tasks"][0]["result"]["embedding"]) == 384
        templates = await client.list_resource_templates()
        assert any(t.uri_template == "workflow://{workflow_id}" for t in templates.resource_templates)
