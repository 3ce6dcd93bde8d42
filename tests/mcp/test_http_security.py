"""The HTTP transport's guards, against the real `ipfs-accelerate mcp serve` process: no public
bind without a bearer token, the token checked on every request, and DNS-rebinding protection
(Host / Origin) on the default loopback server. Loopback addresses only."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.procs import CLI, cli_env, free_port, start, stop, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TOKEN = "secret"
# A JSON-RPC request the server would otherwise accept (Content-Type and Accept as the spec asks),
# so a refusal can only come from the guard under test.
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def _serve_args(data_dir: Path, host: str, port: int) -> list[str]:
    return ["--log-level", "warning", "mcp", "serve", "--transport", "http", "--host", host, "--port", str(port),
            "--data-dir", str(data_dir), "--no-network"]


def _env(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = cli_env(cache_dir, **extra)
    if "IPFS_ACCELERATE_MCP__AUTH_TOKEN" not in extra:
        env.pop("IPFS_ACCELERATE_MCP__AUTH_TOKEN", None)
    return env


def _wait_host_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """tests.procs.wait_port, for a host other than 127.0.0.1."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"{host}:{port} never opened:\n{log.read_text()[-4000:]}")


def test_public_bind_without_a_token_is_refused(tmp_path: Path, shared_cache_dir: Path) -> None:
    # 0.0.0.0 is only named, never bound: the server must refuse before it listens.
    proc = subprocess.run([CLI, *_serve_args(tmp_path / "node", "0.0.0.0", free_port())],
                          env=_env(shared_cache_dir), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "bearer token" in lines[0].lower() and lines[0].startswith("error:"), lines[0]


async def test_bearer_token_on_a_non_default_loopback_address(tmp_path: Path, shared_cache_dir: Path) -> None:
    host, port, log = "127.0.0.2", free_port(), tmp_path / "auth.log"
    env = _env(shared_cache_dir, IPFS_ACCELERATE_MCP__AUTH_TOKEN=TOKEN)
    proc = start(_serve_args(tmp_path / "node", host, port), env, log)
    try:
        _wait_host_port(host, port, proc, log)
        url = f"http://{host}:{port}/mcp"
        async with httpx.AsyncClient(timeout=30) as http:
            missing = await http.post(url, json=INIT, headers=HEADERS)
            wrong = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": "Bearer wrong"})
            not_bearer = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": TOKEN})
            get = await http.get(url, headers={"Accept": "text/event-stream"})
        for r in (missing, wrong, not_bearer, get):
            assert r.status_code == 401, (r.request.headers.get("authorization"), r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.headers.get("connection") == "close"  # body unread: the connection is not reused
            assert TOKEN not in r.text

        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as authed:
            async with Client(streamable_http_client(url, http_client=authed)) as client:
                tools = await client.list_tools()
                info = await client.call_tool("get_node_info", {})
        names = {t.name for t in tools.tools}
        assert {"submit_workflow", "wait_for_workflow", "get_node_info"} <= names, names
        assert not info.is_error and info.structured_content["peer_id"]

        # the SDK client without the header is refused too (it reports a generic error: record the status)
        statuses: list[int] = []

        async def record(response: httpx2.Response) -> None:
            statuses.append(response.status_code)

        async with httpx2.AsyncClient(timeout=30, event_hooks={"response": [record]}) as anon:
            with pytest.raises(Exception):
                async with Client(streamable_http_client(url, http_client=anon)) as client:
                    await client.list_tools()
        assert statuses and set(statuses) == {401}, statuses

        # the right token does not lift the Host check: a rebound name is still refused
        async with httpx.AsyncClient(timeout=30) as http:
            rebound = await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {TOKEN}",
                                                               "Host": f"evil.example:{port}"})
        assert rebound.status_code == 421, (rebound.status_code, rebound.text)
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text(errors="replace")


async def test_dns_rebinding_is_refused_on_another_loopback_address_without_a_token(
    tmp_path: Path, shared_cache_dir: Path
) -> None:
    """A loopback bind needs no token, so there the Host/Origin check is the only guard. The SDK
    turns it on by itself only for 127.0.0.1/localhost/::1; 127.0.0.2 must get it too."""
    host, port, log = "127.0.0.2", free_port(), tmp_path / "lo2.log"
    proc = start(_serve_args(tmp_path / "node", host, port), _env(shared_cache_dir), log)
    try:
        _wait_host_port(host, port, proc, log)
        url = f"http://{host}:{port}/mcp"
        async with httpx.AsyncClient(timeout=30) as http:
            evil_host = await http.post(url, json=INIT, headers={**HEADERS, "Host": f"evil.example:{port}"})
            evil_origin = await http.post(url, json=INIT, headers={**HEADERS, "Origin": "http://evil.example"})
            ok = await http.post(url, json=INIT, headers={**HEADERS, "Origin": f"http://{host}:{port}"})
        assert evil_host.status_code == 421, (evil_host.status_code, evil_host.text)
        assert evil_origin.status_code == 403, (evil_origin.status_code, evil_origin.text)
        assert ok.status_code == 200, (ok.status_code, ok.text)
        async with Client(url) as client:
            assert (await client.call_tool("get_node_info", {})).structured_content["peer_id"]
    finally:
        stop(proc)


async def test_dns_rebinding_is_refused_on_the_default_loopback_server(tmp_path: Path, shared_cache_dir: Path) -> None:
    port, log = free_port(), tmp_path / "local.log"
    args = ["--log-level", "warning", "mcp", "serve", "--transport", "http", "--port", str(port),
            "--data-dir", str(tmp_path / "node"), "--no-network"]  # default host: 127.0.0.1
    proc = start(args, _env(shared_cache_dir), log)
    try:
        wait_port(port, proc, log)
        url = f"http://127.0.0.1:{port}/mcp"
        async with httpx.AsyncClient(timeout=30) as http:
            evil_host = await http.post(url, json=INIT, headers={**HEADERS, "Host": "evil.example"})
            evil_host_port = await http.post(url, json=INIT, headers={**HEADERS, "Host": f"evil.example:{port}"})
            evil_origin = await http.post(url, json=INIT, headers={**HEADERS, "Origin": "http://evil.example"})
            look_alike = await http.post(url, json=INIT, headers={**HEADERS, "Origin": f"http://127.0.0.1.evil.example:{port}"})
            ok = await http.post(url, json=INIT, headers={**HEADERS, "Origin": f"http://localhost:{port}"})
        assert evil_host.status_code == 421, (evil_host.status_code, evil_host.text)
        assert evil_host_port.status_code == 421, (evil_host_port.status_code, evil_host_port.text)
        assert evil_origin.status_code == 403, (evil_origin.status_code, evil_origin.text)
        assert look_alike.status_code == 403, (look_alike.status_code, look_alike.text)
        # the same request from an allowed Host/Origin goes through: the refusals above are the guard's
        assert ok.status_code == 200, (ok.status_code, ok.text)
        async with Client(url) as client:
            assert (await client.call_tool("get_node_info", {})).structured_content["peer_id"]
    finally:
        stop(proc)
