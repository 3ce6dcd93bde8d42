"""The real server in subprocesses, driven by the SDK's client: stdio and streamable HTTP,
submit → wait → results → restart (clean and kill -9) → results again."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import Client, StdioServerParameters

from tests.conftest import DEFAULT_MODEL
from tests.procs import CLI, cli_env, free_port, start, stop, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _tasks(n: int) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"Process test sentence {i} on the quiet mat."} for i in range(n)]


async def _call(client: Client, name: str, /, **args: Any) -> dict[str, Any]:
    res = await client.call_tool(name, args)
    assert not res.is_error, res.content
    return res.structured_content


def _stdio(data_dir: Path, cache_dir: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=CLI,
        args=["--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data_dir), "--no-network"],
        env=cli_env(cache_dir),
    )


async def test_stdio_submit_wait_restart(tmp_path: Path, shared_cache_dir: Path) -> None:
    data = tmp_path / "stdio-node"
    async with Client(_stdio(data, shared_cache_dir)) as client:
        sub = await _call(client, "submit_workflow", name="stdio", tasks=_tasks(8))
        wid = sub["workflow_id"]
        st = await _call(client, "wait_for_workflow", workflow_id=wid, timeout_s=300, include_results=True, format="floats")
        assert st["state"] == "completed" and st["completed"] == 8
        first = [t["result"]["embedding"] for t in st["tasks"]]
        info = await _call(client, "get_node_info")
        assert info["workers"]["mode"] in {"in-process", "pool"}, info["workers"]
        assert sum(w["items"] for w in info["workers"]["workers"]) >= 8, info["workers"]
    # The client closed stdin: the server exited. Start it again on the same data dir.
    async with Client(_stdio(data, shared_cache_dir)) as client:
        again = await _call(client, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
        info2 = await _call(client, "get_node_info")
    assert again["state"] == "completed" and [t["result"]["embedding"] for t in again["tasks"]] == first
    assert info2["peer_id"] == info["peer_id"]  # the identity key is reused
    assert info2["clock"]["hash"] == info["clock"]["hash"]


async def _http_session(url: str, fn: Any) -> Any:
    async with Client(url) as client:
        return await fn(client)


async def test_http_submit_sigterm_restart(tmp_path: Path, shared_cache_dir: Path) -> None:
    data, log, port = tmp_path / "http-node", tmp_path / "http.log", free_port()
    args = ["mcp", "serve", "--transport", "http", "--port", str(port), "--data-dir", str(data), "--no-network"]
    env = cli_env(shared_cache_dir)
    proc = start(args, env, log)
    try:
        wait_port(port, proc, log)
        url = f"http://127.0.0.1:{port}/mcp"

        async def run(client: Client) -> tuple[str, list[Any]]:
            sub = await _call(client, "submit_workflow", name="http", tasks=_tasks(6))
            st = await _call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=300, include_results=True, format="floats")
            assert st["state"] == "completed"
            return sub["workflow_id"], [t["result"] for t in st["tasks"]]

        wid, results = await _http_session(url, run)
    finally:
        code = stop(proc, signal.SIGTERM)
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()

    proc = start(args, env, log)
    try:
        wait_port(port, proc, log)

        async def read(client: Client) -> dict[str, Any]:
            return await _call(client, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")

        st = await _http_session(f"http://127.0.0.1:{port}/mcp", read)
    finally:
        stop(proc)
    assert st["state"] == "completed" and [t["result"] for t in st["tasks"]] == results


async def test_kill_9_mid_workflow_loses_nothing(tmp_path: Path, shared_cache_dir: Path) -> None:
    """Accepted work survives kill -9: queued and running tasks run again and complete."""
    data, log, port = tmp_path / "k9-node", tmp_path / "k9.log", free_port()
    args = ["mcp", "serve", "--transport", "http", "--port", str(port), "--data-dir", str(data), "--no-network"]
    env = cli_env(shared_cache_dir, IPFS_ACCELERATE_SCHEDULER__MAX_INFLIGHT="2")
    proc = start(args, env, log)
    n = 150
    try:
        wait_port(port, proc, log)
        url = f"http://127.0.0.1:{port}/mcp"

        async def submit(client: Client) -> str:
            sub = await _call(client, "submit_workflow", name="k9", tasks=_tasks(n))
            # let some, not all, tasks finish
            with trio.move_on_after(60):
                while (await _call(client, "get_workflow_status", workflow_id=sub["workflow_id"], limit=1))["completed"] < 5:
                    await trio.sleep(0.05)
            return sub["workflow_id"]

        wid = await _http_session(url, submit)
    finally:
        stop(proc, signal.SIGKILL)

    proc = start(args, env, log)
    try:
        wait_port(port, proc, log)

        async def finish(client: Client) -> dict[str, Any]:
            before = await _call(client, "get_workflow_status", workflow_id=wid)
            assert before["total"] == n and before["completed"] < n, "killed too late to test anything"
            return await _call(client, "wait_for_workflow", workflow_id=wid, timeout_s=600, include_results=True, limit=1000, format="floats")

        st = await _http_session(f"http://127.0.0.1:{port}/mcp", finish)
    finally:
        stop(proc)
    assert st["state"] == "completed" and st["completed"] == n
    assert all(len(t["result"]["embedding"]) == 384 for t in st["tasks"])


def test_inspector_cli_lists_tools_and_submits(tmp_path: Path, shared_cache_dir: Path) -> None:
    """The MCP Inspector CLI against the stdio server (needs npm; the package comes from npm)."""
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx (Node.js/npm) is not installed, so the MCP Inspector CLI can't run")
    data = tmp_path / "inspector-node"
    env = cli_env(shared_cache_dir)
    base = [npx, "-y", "@modelcontextprotocol/inspector@2.12.0", "--cli", CLI,
            "--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data), "--no-network"]
    try:
        listed = subprocess.run([*base, "--method", "tools/list"], env=env, capture_output=True, timeout=400)
    except subprocess.TimeoutExpired:
        pytest.skip("the MCP Inspector could not be fetched from npm in time")
    if listed.returncode != 0 and b"ENOTFOUND" in listed.stderr + listed.stdout:
        pytest.skip("the npm registry is unreachable, so the MCP Inspector can't be fetched")
    assert listed.returncode == 0, listed.stderr.decode()[-3000:]
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert {"submit_workflow", "get_workflow_status", "wait_for_workflow", "list_peers"} <= names
    called = subprocess.run(
        [*base, "--method", "tools/call", "--tool-name", "submit_workflow", "--tool-arg", "name=inspector",
         "--tool-arg", json.dumps({"model": DEFAULT_MODEL, "input": "hello from the inspector"}, separators=(",", ":")).join(["tasks=[", "]"])],
        env=env, capture_output=True, timeout=300,
    )
    assert called.returncode == 0, called.stderr.decode()[-3000:]
    out = json.loads(called.stdout)
    assert not out.get("isError"), out
    assert out["structuredContent"]["total"] == 1 and out["structuredContent"]["workflow_id"]


async def test_sse_transport(tmp_path: Path, shared_cache_dir: Path) -> None:
    from mcp.client.sse import sse_client

    data, log, port = tmp_path / "sse-node", tmp_path / "sse.log", free_port()
    proc = start(["mcp", "serve", "--transport", "sse", "--port", str(port), "--data-dir", str(data), "--no-network"],
                 cli_env(shared_cache_dir), log)
    try:
        wait_port(port, proc, log)
        async with Client(sse_client(f"http://127.0.0.1:{port}/sse"), mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"submit_workflow", "wait_for_workflow"} <= names
            sub = await _call(client, "submit_workflow", name="sse", tasks=_tasks(3))
            st = await _call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=300, include_results=True, format="floats")
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    assert st["state"] == "completed" and all(len(t["result"]["embedding"]) == 384 for t in st["tasks"])
    assert f"http://127.0.0.1:{port}/sse" in log.read_text()  # the how-to-connect text names the URL
