"""The network page's routes (issue 13 item 4) over a real in-process node, served by the real
transport (``http_app`` + hypercorn on loopback): the bearer-token and Host rules, the browser's
token-to-cookie step, and the shape of ``/api/state`` after a real workflow ran."""

from __future__ import annotations

import base64

from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import trio

from mcp_server.dashboard import COOKIE_PREFIX, RECENT_EVENTS, NetworkPage
from mcp_server.server import build_server
from mcp_server.transports import http_app, serve_http
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.timeout(300)]

TOKEN = "page-secret"
N = 6


async def _serve(node: Any, nursery: trio.Nursery, bind_as: str, token: str) -> tuple[str, NetworkPage]:
    """The HTTP app as ``mcp serve --host bind_as`` builds it, listening on 127.0.0.1 (the
    token and Host rules follow ``bind_as``: 0.0.0.0 is the non-loopback case)."""
    page = await nursery.start(NetworkPage(node).run)
    app = http_app(build_server(node), "http", bind_as, 0, token, page=page)
    binds = await nursery.start(serve_http, app, "127.0.0.1", 0)
    return binds[0], page


@pytest.fixture
async def public(node: Any) -> AsyncIterator[str]:
    """A node served as on a public bind (0.0.0.0), so behind the bearer token."""
    async with trio.open_nursery() as nursery:
        base, _ = await _serve(node, nursery, "0.0.0.0", TOKEN)
        yield base
        nursery.cancel_scope.cancel()


async def test_public_bind_needs_the_token_for_the_page_and_its_state(public: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for path in ("/", "/api/state", "/?token=wrong"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                r = await http.get(public + path, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert TOKEN not in r.text and "<html" not in r.text

        auth = {"Authorization": f"Bearer {TOKEN}"}
        page = await http.get(public + "/", headers=auth)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "<h1>The network</h1>" in page.text and "<h2" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere
        assert (await http.get(public + "/api/state", headers=auth)).status_code == 200
        assert (await http.post(public + "/api/state", headers=auth)).status_code == 405
        head = await http.head(public + "/", headers=auth)
        assert head.status_code == 200 and head.content == b""


async def test_a_browser_trades_the_token_for_a_cookie_on_the_page_paths_only(public: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(public + f"/?token={TOKEN}")
        assert r.status_code == 303 and r.headers["location"] == "/", (r.status_code, r.headers)
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(COOKIE_PREFIX) and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        assert TOKEN not in cookie and base64.urlsafe_b64encode(TOKEN.encode()).decode() not in cookie  # a MAC, not the token
        # the cookie's value is no bearer token: as one, MCP refuses it
        r = await http.post(public + "/mcp", headers={"Authorization": f"Bearer {value}", "Content-Type": "application/json",
                                                       "Accept": "application/json, text/event-stream"},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401, r.status_code
        jar = {"Cookie": cookie.split(";")[0]}
        assert (await http.get(public + "/", headers=jar)).status_code == 200
        assert (await http.get(public + "/api/state", headers=jar)).status_code == 200
        # the cookie never reaches the MCP endpoint or /metrics
        r = await http.post(public + "/mcp", headers={**jar, "Content-Type": "application/json",
                                                       "Accept": "application/json, text/event-stream"},
                            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert r.status_code == 401, r.status_code
        # a cookie holding a wrong token is refused like a wrong header
        name = cookie.split("=", 1)[0]
        assert (await http.get(public + "/api/state", headers={"Cookie": f"{name}=d3Jvbmc="})).status_code == 401


async def test_loopback_without_a_token_is_open_and_checks_the_host(node: Any) -> None:
    async with trio.open_nursery() as nursery:
        base, _ = await _serve(node, nursery, "127.0.0.1", "")
        port = base.rsplit(":", 1)[1]
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(base + "/")).status_code == 200
            assert (await http.get(base + "/api/state")).status_code == 200
            rebound = await http.get(base + "/api/state", headers={"Host": f"evil.example:{port}"})
            assert rebound.status_code == 421, rebound.status_code
            cross = await http.get(base + "/api/state", headers={"Origin": "http://evil.example"})
            assert cross.status_code == 403, cross.status_code
        nursery.cancel_scope.cancel()


async def test_state_after_a_workflow(node: Any, exported_default_model: Path) -> None:
    async with trio.open_nursery() as nursery:
        base, page = await _serve(node, nursery, "0.0.0.0", TOKEN)
        sub = await node.submit_workflow(name="page-state", tag="local-only",
                                         tasks=[{"model": DEFAULT_MODEL, "input": f"Page sentence {i}."} for i in range(N)])
        wid = sub["workflow_id"]
        with trio.fail_after(240):
            while node.workflow_summary(wid)["state"] != "completed":
                await trio.sleep(0.1)
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            r = await http.get(base + "/api/state")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        state = r.json()
        nursery.cancel_scope.cancel()

    assert set(state) == {"generated_at", "node", "peers", "workflows", "clock", "throughput"}
    me = state["node"]
    assert me["peer_id"] == node.peer_id and me["name"] == node.config.node_name and me["self"] is True
    assert me["models"] == [DEFAULT_MODEL] and me["hardware"]["cpus"] >= 1 and me["workers"]["mode"]
    assert state["peers"] == []  # networking off

    [wf] = [w for w in state["workflows"] if w["workflow_id"] == wid]
    assert wf["state"] == "completed" and wf["total"] == wf["completed"] == wf["finished"] == N
    assert wf["progress"] == 1.0 and wf["shares_counted"] == N
    assert wf["shares"] == [{"peer_id": node.peer_id, "name": node.config.node_name, "done": N, "share": 1.0}]

    clock = state["clock"]
    events = clock["events"]
    # the node runs on until the nursery is cancelled and may append (a flush) after the page
    # was built: the page's total is one the clock had, never more than it holds now
    assert 0 < len(events) <= RECENT_EVENTS and len(events) <= clock["total"] <= len(node.clock) and clock["heads"] >= 1
    cids = [e["cid"] for e in events]
    assert events[-1]["head"] is True  # the newest event applied is a head until a child names it
    for i, e in enumerate(events):  # oldest first: a parent shown comes before its child
        assert all(cids.index(p) < i for p in e["parents"] if p in cids), e
        assert e["author"] == node.peer_id and e["ops"] and e["seq"] >= 1
    assert sum(e["ops"].get("task.done", 0) for e in events) >= 1

    tp = state["throughput"]
    assert len(tp["buckets"]) == 60 and tp["interval_s"] == 5
    assert sum(b["done"] for b in tp["buckets"]) == N  # one result per task, all folded while the page listened
    assert page.state()["workflows"][0]["workflow_id"] == wid


async def test_a_restarted_page_reads_the_clock_history(node: Any, exported_default_model: Path) -> None:
    """Events applied before the page started come from the clock's heads (read once, off the loop)."""
    sub = await node.submit_workflow(name="before", tag="local-only",
                                     tasks=[{"model": DEFAULT_MODEL, "input": "Written before the page."}])
    with trio.fail_after(240):
        while node.workflow_summary(sub["workflow_id"])["state"] != "completed":
            await trio.sleep(0.1)
    async with trio.open_nursery() as nursery:
        page = await nursery.start(NetworkPage(node).run)
        with trio.fail_after(30):
            while not page.recent:
                await trio.sleep(0.05)
        clock = page.state()["clock"]
        nursery.cancel_scope.cancel()
    events = clock["events"]
    assert len(events) == min(clock["total"], RECENT_EVENTS), (len(events), clock["total"])
    assert events[-1]["head"] is True and events[0]["at"] is None
    assert sum(e["head"] for e in events) == clock["heads"]  # every head is among the newest events
    cids = [e["cid"] for e in events]
    for i, e in enumerate(events):  # oldest first here too
        assert all(cids.index(p) < i for p in e["parents"] if p in cids), e
