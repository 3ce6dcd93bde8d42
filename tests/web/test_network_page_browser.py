"""The network page in a real browser (issue 13 item 4): two real `ipfs-accelerate p2p start`
processes (n2 joins n1 over libp2p), headless Chromium on n1's page (``network_page.mjs``,
playwright-core driving the Debian chromium). The page must list both peers, then — live, with
no reload — show a workflow submitted after it loaded go to 100% with each peer's share. The
screenshot is kept at ``tests/web/artifacts/network-page.png`` (git-ignored).

Skips, saying why, without /usr/bin/chromium (``make test`` installs it: apt-get install -y
chromium), without Node, or without tests/web/node_modules (``make web``: npm ci)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import trio

from tests.cluster import Cluster, call, wait_peers
from tests.conftest import DEFAULT_MODEL, REPO

WEB = REPO / "tests" / "web"
CHROMIUM = os.environ.get("IPFS_ACCELERATE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACT = WEB / "artifacts" / "network-page.png"
N = 24


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found: `make test` installs it (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node not found (Node >= 20 drives Chromium through playwright-core)"
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        return "tests/web/node_modules missing: run `make web` (npm ci in tests/web)"
    return None


WHY_NOT = _missing()  # checked before any fixture starts a node
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


class Browser:
    """The Node script in a child process; stdout read by a thread (READY, then one JSON line)."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(["node", str(WEB / "network_page.mjs"), *args], cwd=WEB, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.err = ""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "READY":
                self.ready.set()
        self.ready.set()  # exited: let a waiter see it

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()

    def result(self) -> dict[str, object]:
        assert self.lines, f"the browser script printed nothing; stderr:\n{self.err[-3000:]}"
        return json.loads(self.lines[-1])


async def test_the_page_shows_both_peers_and_a_workflow_reaching_100_percent(
        cluster: Cluster, exported_default_model: Path) -> None:
    n1 = cluster.start("n1")
    n2 = cluster.start("n2", bootstrap=[n1])
    await wait_peers(n1, [n2])

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shot = cluster.root / "network-page.png"
    name = "page-live"
    browser = Browser(["--url", f"http://127.0.0.1:{n1.mcp_port}/", "--peers", f"{n1.peer_id},{n2.peer_id}",
                       "--workflow", name, "--screenshot", str(shot), "--chromium", CHROMIUM, "--timeout", "180"])
    try:
        await trio.to_thread.run_sync(browser.ready.wait, 120)
        assert browser.lines and browser.lines[0] == "READY", (browser.lines, browser.err[-3000:])
        # submitted only now: the page already open must pick it up by itself
        sub = await call(n1, "submit_workflow", name=name, tag="p2p-eligible",
                         tasks=[{"model": DEFAULT_MODEL, "input": f"Network page sentence {i}."} for i in range(N)])
        rc = await trio.to_thread.run_sync(lambda: browser.proc.wait(240))
    finally:
        if browser.proc.poll() is None:
            browser.proc.kill()
            browser.proc.wait()
    if shot.exists():
        shutil.copyfile(shot, ARTIFACT)
        print(f"\nnetwork page screenshot: {ARTIFACT}")
    out = browser.result()
    assert rc == 0 and out["ok"] is True, {k: v for k, v in out.items() if k != "html"} | {"html": out.get("html", "")[:1500]}

    truth = await call(n1, "get_workflow_status", workflow_id=sub["workflow_id"], limit=0)
    assert truth["state"] == "completed" and truth["completed"] == N, truth
    wf = out["workflow"]
    assert wf["id"] == sub["workflow_id"] and wf["value"] == wf["max"] == N, wf
    assert f"{N} of {N} tasks finished (100%)" in wf["label"], wf
    assert "n1" in wf["text"] or "n2" in wf["text"], wf  # the share line names who ran the tasks
    assert out["h1"] == "The network" and {"Peers", "Workflows"} <= set(out["h2"]), out
    listed = {p["id"]: p["name"] for p in out["peers"]}
    assert listed[n1.peer_id] == "n1 (this node)" and listed[n2.peer_id] == "n2", listed
    conns = {p["id"]: p["connection"] for p in out["peers"]}
    # how n2 is reached, as list_peers' connection says it (loopback: a direct connection)
    assert conns[n1.peer_id] == "this node" and conns[n2.peer_id].startswith("direct"), conns
    assert out["dagEvents"] >= 1 and "Clock DAG" in out["dagLabel"], out
    # the chart was drawn from the node's figures (its static title says only "Throughput"), and
    # counts at least the workflow's results, all folded in the last minutes
    counted = re.match(r"Throughput chart: (\d+) task results in the last", out["throughputLabel"] or "")
    assert counted and int(counted.group(1)) >= N, out["throughputLabel"]
    assert not out["problem"], out
    assert ARTIFACT.stat().st_size > 10_000
