"""Prometheus metrics at /metrics on the MCP HTTP port (issue 9 item 6), against real
`ipfs-accelerate mcp serve` processes with networking on: A serves streamable HTTP on 0.0.0.0
behind a bearer token, B serves SSE on loopback and bootstraps to A. Scraped with a real HTTP
client, parsed with prometheus_client's own parser, checked against what the MCP tools say."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import eventually
from tests.conftest import DEFAULT_MODEL
from tests.procs import cli_env, free_port, start, stop, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TOKEN = "metrics-secret"
ADDR = re.compile(r"^  (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)", re.M)
P = "ipfs_accelerate_"


def _env(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = cli_env(cache_dir, IPFS_ACCELERATE_NETWORK__HEARTBEAT_S="0.5", IPFS_ACCELERATE_NETWORK__REANNOUNCE_S="1",
                  **extra)
    if "IPFS_ACCELERATE_MCP__AUTH_TOKEN" not in extra:
        env.pop("IPFS_ACCELERATE_MCP__AUTH_TOKEN", None)
    return env


def _args(transport: str, host: str, port: int, data: Path, *more: str) -> list[str]:
    return ["--log-level", "warning", "mcp", "serve", "--transport", transport, "--host", host, "--port", str(port),
            "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", *more]


def _libp2p_addr(log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ADDR.findall(log.read_text(errors="replace"))
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no libp2p address printed:\n{log.read_text()[-3000:]}")


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(sample name, sorted labels): value}, through prometheus_client's parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    key = (P + name, tuple(sorted(labels.items())))
    assert key in samples, f"{key} not scraped; have {sorted(k for k in samples if k[0].startswith(P + name))}"
    return samples[key]


def total(samples: dict[Any, float], name: str) -> float:
    """Sum of a sample over all its label sets (e.g. a histogram's _count over models)."""
    return sum(v for (n, _), v in samples.items() if n == P + name)


async def _scrape(http: httpx.AsyncClient, url: str, **headers: str) -> dict[Any, float]:
    r = await http.get(url, headers=headers)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return parse(r.text)


async def test_metrics_over_http_and_sse_match_the_tools(tmp_path: Path, shared_cache_dir: Path) -> None:
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start(_args("http", "0.0.0.0", port_a, tmp_path / "a"), _env(shared_cache_dir, IPFS_ACCELERATE_MCP__AUTH_TOKEN=TOKEN), log_a)
    b = None
    try:
        wait_port(port_a, a, log_a)
        addr_a = _libp2p_addr(log_a)
        b = start(_args("sse", "127.0.0.1", port_b, tmp_path / "b", "--bootstrap", addr_a), _env(shared_cache_dir), log_b)
        metrics_a, metrics_b = f"http://127.0.0.1:{port_a}/metrics", f"http://127.0.0.1:{port_b}/metrics"
        auth = {"Authorization": f"Bearer {TOKEN}"}

        async with httpx.AsyncClient(timeout=30) as http:
            # off loopback, /metrics takes the MCP bearer token: refused without it, or with a wrong one
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                r = await http.get(metrics_a, headers=headers)
                assert r.status_code == 401, (headers, r.status_code, r.text)
                assert TOKEN not in r.text and P not in r.text
            first = await _scrape(http, metrics_a, **auth)
            node_info = [dict(labels) for (n, labels), v in first.items() if n == P + "node_info" and v == 1]
            assert [i["peer_id"] for i in node_info] == [addr_a.rsplit("/", 1)[1]], node_info
            assert (await http.post(metrics_a, headers=auth)).status_code == 405

            async with httpx2.AsyncClient(headers=auth, timeout=60) as authed:
                async with Client(streamable_http_client(f"http://127.0.0.1:{port_a}/mcp", http_client=authed)) as client:
                    async def tool(tool_name: str, /, **args: Any) -> dict[str, Any]:
                        res = await client.call_tool(tool_name, args)
                        assert not res.is_error, res.content
                        return res.structured_content

                    tasks = [{"model": DEFAULT_MODEL, "input": f"Metrics test sentence {i}."} for i in range(8)]
                    sub = await tool("submit_workflow", name="metrics", tasks=tasks, tag="local-only")
                    done = await tool("wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=120)
                    assert done["state"] == "completed", done
                    st = await tool("get_workflow_status", workflow_id=sub["workflow_id"], limit=0)
                    before = await _scrape(http, metrics_a, **auth)
                    info = await tool("get_node_info")
                    after = await _scrape(http, metrics_a, **auth)

            # tasks by state: exactly the workflow's counts (the only workflow A holds)
            assert value(after, "tasks", state="done") == st["completed"] == 8
            assert value(after, "tasks", state="failed") == st["failed"]
            assert value(after, "tasks", state="cancelled") == st["cancelled"]
            assert value(after, "tasks", state="running") == st["running"]
            assert value(after, "tasks", state="queued") + value(after, "tasks", state="claimed") == st["pending"]
            assert value(after, "workflows", state="completed") == 1
            assert value(after, "queue_depth") == info["queue"] == 0
            # the batches that ran them: both histograms counted them, with every item (the model's
            # warm-up batch may land on either side of the first scrape, so only growth is bounded)
            assert total(after, "inference_batch_seconds_count") > total(first, "inference_batch_seconds_count")
            assert total(after, "inference_batch_size_count") == total(after, "inference_batch_seconds_count")
            assert total(after, "inference_batch_size_sum") - total(first, "inference_batch_size_sum") >= 8
            assert total(after, "inference_batch_size_sum") == value(after, "inference_items_total")
            assert total(after, "inference_batch_size_count") == value(after, "inference_batches_total")
            assert value(after, "inference_workers") >= 1
            # the clock, read between two scrapes
            assert value(before, "clock_events") <= info["clock"]["events"] <= value(after, "clock_events")
            assert value(after, "clock_heads") >= 1
            assert value(after, "direct_push_messages_total", direction="out") >= 0

            # B (SSE, loopback, no token) joins: A sees it alive and connected, B replicates the
            # workflow (its /metrics shows the same counts), bytes and gossip flowed both ways
            async def b_has_it() -> bool:
                try:
                    m = await _scrape(http, metrics_b)
                except httpx.TransportError:
                    return False
                return m.get((P + "tasks", (("state", "done"),))) == 8

            await eventually(b_has_it, 90, "B's /metrics to show the 8 done tasks it replicated")

            async def a_sees_b() -> bool:
                m = await _scrape(http, metrics_a, **auth)
                return value(m, "peers", state="alive") == 1 and value(m, "peers_connected") == 1

            await eventually(a_sees_b, 60, "A's /metrics to show B alive and connected")
            ma, mb = await _scrape(http, metrics_a, **auth), await _scrape(http, metrics_b)
            assert value(mb, "sync_events_total") > 0 and value(mb, "clock_events") >= value(after, "clock_events")
            assert value(mb, "sync_caught_up") in (0, 1)
            assert value(ma, "gossip_messages_total", direction="out") > 0
            assert value(mb, "gossip_messages_total", direction="in") > 0
            assert value(ma, "network_bytes_total", direction="out", channel="gossip") > 0
            assert value(mb, "network_bytes_total", direction="in", channel="gossip") > 0
            assert value(mb, "network_bytes_total", direction="in", channel="stream") > 0  # B fetched A's events
            assert value(ma, "network_bytes_total", direction="out", channel="stream") > 0
            assert total(mb, "inference_batch_size_count") == value(mb, "inference_batches_total")
            assert value(mb, "tasks", state="done") == 8 and value(mb, "peers", state="alive") == 1

            # B's loopback /metrics keeps the MCP endpoints' DNS-rebinding guard
            rebound = await http.get(metrics_b, headers={"Host": f"evil.example:{port_b}"})
            assert rebound.status_code == 421, (rebound.status_code, rebound.text)
    finally:
        codes = [stop(p) for p in (a, b) if p is not None]
    assert codes == [0, 0], (log_a.read_text()[-3000:], log_b.read_text()[-3000:])
    for log in (log_a, log_b):
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]

