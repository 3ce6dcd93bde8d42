"""`ipfs-accelerate peers` and `workflow list|status|watch` as an operator runs them: real CLI
processes against a real two-node network (n2 joins n1 over libp2p), checked against the MCP
tools' own answers. One network for the whole flow: a node start is the slow part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from typing import Any

import pytest
import trio

from tests.cluster import Cluster, call, wait_all_peers
from tests.conftest import DEFAULT_MODEL, REPO
from tests.procs import CLI, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N = 20
SUMMARY = ("workflow_id", "name", "state", "priority", "tag", "submitter", "created_at", "replicas", "cache",
           "total", "completed", "failed", "cancelled", "running", "pending")


class Cli:
    """One CLI process; its stdout and stderr are drained by threads so a test can wait on a
    stderr line (``following ...``: the watch is connected and its SIGINT handler is in place)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([CLI, "--log-level", "warning", *args], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = "", ""
        self.following = threading.Event()
        self._threads = [threading.Thread(target=self._drain_out, daemon=True),
                         threading.Thread(target=self._drain_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _drain_out(self) -> None:
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read()

    def _drain_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err += line
            if line.startswith("following "):
                self.following.set()

    async def wait_following(self, timeout: float = 120) -> None:
        if not await trio.to_thread.run_sync(self.following.wait, timeout):
            self.proc.kill()
            raise AssertionError(f"no 'following' line after {timeout:g} s; stderr:\n{self.err}")

    async def finish(self, timeout: float = 180) -> int:
        try:
            rc = await trio.to_thread.run_sync(lambda: self.proc.wait(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the CLI did not exit within {timeout:g} s; stderr:\n{self.err}") from None
        for t in self._threads:
            await trio.to_thread.run_sync(t.join, 10)
        return rc


async def run_cli(env: dict[str, str], *args: str) -> Cli:
    cli = Cli(list(args), env)
    await cli.finish()
    return cli


def one_json(cli: Cli) -> dict[str, Any]:
    """stdout is exactly one JSON object."""
    assert cli.proc.returncode == 0, cli.err
    return json.loads(cli.out)


def one_line_error(cli: Cli, contains: str) -> None:
    assert cli.proc.returncode == 1, (cli.proc.returncode, cli.out, cli.err)
    lines = [ln for ln in cli.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], cli.err
    assert "Traceback" not in cli.err and cli.out == ""


async def test_views_of_a_two_node_network(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    env = cluster.env()
    # p2p-only on a lone submitter: the workflow waits for a worker, so the watches below are
    # connected and following before any task can run, and n2's arrival is what they see
    sub = await call(n1, "submit_workflow", name="views", tag="p2p-only",
                     tasks=[{"model": DEFAULT_MODEL, "input": f"Terminal view sentence {i}."} for i in range(N)])
    wid = sub["workflow_id"]
    human = Cli(["workflow", "watch", wid, "--url", n1.url], env)
    as_json = Cli(["workflow", "watch", wid, "--json", "--url", n1.url], env)
    stopped = Cli(["workflow", "watch", wid, "--url", n1.url], env)
    for w in (human, as_json, stopped):
        await w.wait_following()

    # Ctrl-C: exit 130, a short note, no traceback, nothing on stdout; the workflow goes on
    stopped.proc.send_signal(signal.SIGINT)
    assert await stopped.finish(60) == 130, stopped.err
    assert "stopped following" in stopped.err and "Traceback" not in stopped.err, stopped.err
    assert (await call(n1, "get_workflow_status", workflow_id=wid, limit=0))["state"] == "pending"

    n2 = cluster.start("n2", bootstrap=[n1])
    assert await as_json.finish() == 0, as_json.err
    assert await human.finish() == 0, human.err
    final = one_json(as_json)
    assert final["state"] == "completed" and final["completed"] == N and final["total"] == N, final
    assert final["per_peer"] == [{"peer_id": n2.peer_id, "name": "n2", "done": N, "share": 1.0}], final
    assert f"{wid[:12]}…" in human.out and "100%" in human.out and f"{N}/{N}" in human.out, human.out
    assert "n2" in human.out, human.out

    # status: the same counts as get_workflow_status, read in pages of 7 tasks
    truth = await call(n1, "get_workflow_status", workflow_id=wid, limit=0)
    st = one_json(await run_cli(env, "workflow", "status", wid, "--page-size", "7", "--json", "--url", n1.url))
    assert {k: st[k] for k in SUMMARY} == {k: truth[k] for k in SUMMARY}
    assert sum(p["done"] for p in st["per_peer"]) == N and st["self"] == n1.peer_id, st
    text = await run_cli(env, "workflow", "status", wid, "--url", n1.url)
    assert text.proc.returncode == 0 and "100%" in text.out and "n2" in text.out and wid in text.out, text.out

    # list
    listed = one_json(await run_cli(env, "workflow", "list", "--json", "--url", n1.url))
    assert wid in [w["workflow_id"] for w in listed["workflows"]], listed
    text = await run_cli(env, "workflow", "list", "--state", "completed", "--url", n1.url)
    assert text.proc.returncode == 0 and wid in text.out and "100%" in text.out, text.out

    # peers: this node with its workers, and n2 as list_peers gives it
    await wait_all_peers([n1, n2])
    peers = one_json(await run_cli(env, "peers", "--json", "--url", n1.url))
    assert peers["self"]["peer_id"] == n1.peer_id and peers["self"]["name"] == "n1", peers["self"]
    assert peers["self"]["workers"]["mode"] in {"in-process", "pool"}, peers["self"]
    assert n2.peer_id in [p["peer_id"] for p in peers["peers"]], peers
    text = await run_cli(env, "peers", "--url", n1.url)
    assert text.proc.returncode == 0 and "n1 (self)" in text.out and "n2" in text.out, text.out
    assert n2.peer_id[-8:] in text.out and DEFAULT_MODEL in text.out, text.out
    assert "direct" in text.out, text.out  # n2's connection (loopback), as list_peers gives it

    # bad input: one clear line, exit 1, nothing on stdout
    for cmd in ("status", "watch"):
        one_line_error(await run_cli(env, "workflow", cmd, "0" * 32, "--json", "--url", n1.url), "unknown workflow id")


@pytest.mark.parametrize("args", [["peers"], ["workflow", "list", "--json"], ["workflow", "watch", "0" * 32]])
async def test_an_unreachable_node_is_one_clear_error(args: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    one_line_error(await run_cli({**os.environ, "HF_HUB_OFFLINE": "1"}, *args, "--url", url),
                   f"cannot reach the node at {url}")
