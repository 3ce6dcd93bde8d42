"""Bad input over MCP (issue 7): JSON-RPC ids MCP forbids get an error on every transport, a NaN,
infinite or negative timeout gets a message that names it, and a status page never exceeds what
the SDK's client accepts in one reply (1 MiB), however large the workflow and its results.

Real node, real model, the real transports (hypercorn on loopback, the stdio CLI process)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import trio
from mcp import Client

from mcp_server.server import MAX_REPLY_BYTES, build_server, fit_page, reply_cost
from mcp_server.transports import bad_jsonrpc_id, http_app, serve_http
from tests.conftest import DEFAULT_MODEL, make_node_config
from tests.procs import CLI, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
BAD_IDS = {"an object": {"x": 1}, "an array": [1], "a fractional number": 1.5, "a boolean": True, "null": None}


def _ids_refused(reply: dict[str, Any], kind: str) -> None:
    assert reply["jsonrpc"] == "2.0" and reply["id"] is None, reply
    assert reply["error"]["code"] == -32600, reply
    assert f"got {kind}" in reply["error"]["message"], reply


def test_which_ids_are_refused() -> None:
    for kind, rid in BAD_IDS.items():
        assert f"got {kind}" in (bad_jsonrpc_id({"jsonrpc": "2.0", "id": rid, "method": "tools/list"}) or ""), kind
    for rid in ("a", 0, -7, 2**53):
        assert bad_jsonrpc_id({"jsonrpc": "2.0", "id": rid, "method": "tools/list"}) is None
    assert bad_jsonrpc_id({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert bad_jsonrpc_id({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}) is None


async def _serve(node: Any, transport: str, nursery: trio.Nursery) -> str:
    app = http_app(build_server(node), transport, "127.0.0.1", 0, "")
    binds = await nursery.start(serve_http, app, "127.0.0.1", 0)
    return binds[0]


@pytest.fixture
async def http_url(node: Any) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        yield await _serve(node, "http", nursery) + "/mcp"
        nursery.cancel_scope.cancel()


def _sse_json(resp: httpx.Response) -> dict[str, Any]:
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    datas = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
    return json.loads([d for d in datas if d][-1])


async def test_streamable_http_refuses_ids_mcp_forbids(http_url: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        # before any session: the id is checked first
        for kind, rid in BAD_IDS.items():
            r = await http.post(http_url, headers=HEADERS, json={"jsonrpc": "2.0", "id": rid, "method": "tools/list"})
            assert r.status_code == 400, (kind, r.status_code, r.text)
            _ids_refused(r.json(), kind)
        # inside a session: still an error, never a silent 202, and the session keeps working
        r = await http.post(http_url, headers=HEADERS, json=INIT)
        assert r.status_code == 200, r.text
        session = {**HEADERS, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        r = await http.post(http_url, headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert r.status_code == 202  # a real notification is still accepted
        r = await http.post(http_url, headers=session, json={"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"})
        assert r.status_code == 400
        _ids_refused(r.json(), "an object")
        r = await http.post(http_url, headers=session, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert r.status_code == 200 and any(t["name"] == "get_node_info" for t in _sse_json(r)["result"]["tools"])
        # the literal NaN (Python's json writes it; pydantic's parser reads it) is named as NaN
        body = ('{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"wait_for_workflow",'
                '"arguments":{"workflow_id":"x","timeout_s":NaN}}}')
        r = await http.post(http_url, headers=session, content=body)
        reply = _sse_json(r)
        assert reply["id"] == 3 and reply["result"]["isError"] is True, reply
        assert "NaN" in reply["result"]["content"][0]["text"], reply
        # over the SDK's body limit: the guard does not buffer it all, the SDK refuses it (413)
        big = b'{"jsonrpc":"2.0","id":{"x":1},"method":"tools/list","pad":"' + b"a" * (5 << 20) + b'"}'
        # (the server answers before reading the whole body and drops the connection: don't reuse it)
        r = await http.post(http_url, headers={**session, "connection": "close"}, content=big)
        assert r.status_code == 413, (r.status_code, r.text[:200])
        # not JSON at all: the SDK's own parse error, untouched
        r = await http.post(http_url, headers=session, content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    async with Client(http_url) as client:  # an SDK client on the same server is unaffected
        assert not (await client.call_tool("get_node_info", {})).is_error


async def test_sse_refuses_ids_mcp_forbids(node: Any) -> None:
    async with trio.open_nursery() as nursery:
        base = await _serve(node, "sse", nursery)
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{base}/messages/?session_id=0123456789abcdef0123456789abcdef", headers=HEADERS,
                                json={"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"})
            assert r.status_code == 400, r.text
            _ids_refused(r.json(), "an object")
        from mcp.client.sse import sse_client

        async with Client(sse_client(f"{base}/sse"), mode="legacy") as client:
            assert not (await client.call_tool("get_node_info", {})).is_error
        nursery.cancel_scope.cancel()


def test_stdio_answers_ids_mcp_forbids_and_keeps_serving(tmp_path: Path, shared_cache_dir: Path) -> None:
    proc = subprocess.Popen(
        [CLI, "--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--no-network", "--data-dir", str(tmp_path / "n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=cli_env(shared_cache_dir), text=True)
    assert proc.stdin and proc.stdout

    def send(msg: Any) -> None:
        proc.stdin.write(json.dumps(msg) + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    try:
        send(INIT)
        assert json.loads(proc.stdout.readline())["id"] == 1
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"})
        _ids_refused(json.loads(proc.stdout.readline()), "an object")
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "wait_for_workflow", "arguments": {"workflow_id": "x", "timeout_s": "NaN"}}})
        reply = json.loads(proc.stdout.readline())
        assert reply["id"] == 2 and reply["result"]["isError"] and "NaN" in reply["result"]["content"][0]["text"]
        send({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
        assert json.loads(proc.stdout.readline())["id"] == 3
    finally:
        proc.stdin.close()
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_timeouts_that_are_not_numbers_of_seconds(node: Any) -> None:
    async with Client(build_server(node)) as client:
        sub = (await client.call_tool("submit_workflow", {"name": "t", "tag": "local-only",
                                                          "tasks": [{"model": DEFAULT_MODEL, "input": "x"}]})).structured_content
        cases = {"NaN": "NaN", "nan": "NaN", "Infinity": "infinite", "-inf": "-infinite", -1: "timeout_s is -1",
                 3601: "timeout_s is 3601"}
        for value, words in cases.items():
            res = await client.call_tool("wait_for_workflow", {"workflow_id": sub["workflow_id"], "timeout_s": value})
            text = " ".join(getattr(c, "text", "") for c in res.content)
            assert res.is_error and words in text, (value, text)
        res = await client.call_tool("wait_for_workflow", {"workflow_id": sub["workflow_id"], "timeout_s": 120})
        assert not res.is_error and res.structured_content["state"] == "completed"


def test_fit_page_keeps_paging_moving() -> None:
    head = {"workflow_id": "w", "offset": 0, "limit": 3, "has_more": False}
    huge = {"task_id": "w/0", "state": "done", "attempts": 1, "result": {"embedding": [0.123456789] * 200_000}}
    page = fit_page({**head, "tasks": [huge, {"task_id": "w/1", "state": "done", "attempts": 1}]})
    assert [t["task_id"] for t in page["tasks"]] == ["w/0"] and page["tasks"][0]["result_omitted"] is True
    assert "result" not in page["tasks"][0] and page["limit"] == 1 and page["has_more"] is True
    small = {**head, "tasks": [{"task_id": f"w/{i}", "state": "queued", "attempts": 0} for i in range(3)]}
    assert fit_page(small) == small
    assert reply_cost(small) < MAX_REPLY_BYTES


async def test_ten_thousand_task_pages_fit_one_reply(tmp_path: Path, shared_cache_dir: Path) -> None:
    """A 10,000-task workflow with results, read through the SDK's streamable-HTTP client (which
    refuses any event over 1 MiB) with limit=10,000: every page fits, paging by offset+limit
    returns every task exactly once with its 384-float embedding."""
    from p2p.node import Node

    n = 10_000
    cfg = make_node_config(tmp_path / "big", shared_cache_dir, max_tasks_per_workflow=n)
    async with Node.open(cfg) as node, trio.open_nursery() as nursery:
        url = await _serve(node, "http", nursery) + "/mcp"
        async with Client(url, read_timeout_seconds=300) as client:
            tasks = [{"model": DEFAULT_MODEL, "input": f"Sentence {i} about a cat on a mat."} for i in range(n)]
            sub = await client.call_tool("submit_workflow", {"name": "big", "tag": "local-only", "tasks": tasks})
            assert not sub.is_error, sub.content
            wid = sub.structured_content["workflow_id"]
            done = await client.call_tool("wait_for_workflow", {"workflow_id": wid, "timeout_s": 240, "include_results": True,
                                                                "limit": n, "format": "floats"})
            assert not done.is_error, done.content
            assert done.structured_content["state"] == "completed" and done.structured_content["has_more"] is True
            for include_results in (True, False):
                seen: list[str] = []
                sizes: list[int] = []
                offset = 0
                while True:
                    res = await client.call_tool("get_workflow_status", {"workflow_id": wid, "include_results": include_results,
                                                                         "offset": offset, "limit": n, "format": "floats"})
                    assert not res.is_error, res.content
                    page = res.structured_content
                    size = len(res.model_dump_json(by_alias=True, exclude_none=True))
                    assert size < MAX_REPLY_BYTES, size
                    sizes.append(size)
                    assert page["limit"] == len(page["tasks"]) or not page["has_more"]
                    for t in page["tasks"]:
                        assert t["state"] == "done"
                        assert (len(t["result"]["embedding"]) == 384) if include_results else ("result" not in t)
                    seen += [t["task_id"] for t in page["tasks"]]
                    if not page["has_more"]:
                        break
                    offset += page["limit"]
                assert seen == [f"{wid}/{i}" for i in range(n)]
                # the cut is by size, and not wasteful: every page but the last is over half full
                assert len(sizes) > 1 and min(sizes[:-1]) > MAX_REPLY_BYTES // 2, sizes
        nursery.cancel_scope.cancel()
