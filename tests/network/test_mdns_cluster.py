"""Three real `ipfs-accelerate p2p start` nodes that find each other by mDNS alone (no bootstrap)
and share a p2p-only workflow.

zeroconf multicasts on every interface it finds, so the nodes must not run in the test's own
network namespace (mDNS would go out of the machine's real interfaces). Each node gets a
namespace of its own with one veth into a fourth namespace that holds a Linux bridge: a private
switched LAN, 10.77.0.0/24, that exists only inside namespaces this test creates and deletes.
Each node's MCP server binds 127.0.0.1 inside its namespace, so the test drives it with
``tests/network/mcp_call.py`` run through ``ip netns exec``. Skips, saying why, where namespaces
cannot be made (not Linux, not root, no iproute2)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEFAULT_MODEL, REPO, VENV_BIN
from tests.netns import bridged_lan
from tests.procs import CLI, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUBNET = "10.77.0"  # only ever configured inside the namespaces below
NODES = 3
MCP_PORT = 18765  # each namespace has its own port space
PYTHON = str(VENV_BIN / "python")
MCP_CALL = str(Path(__file__).with_name("mcp_call.py"))
PEER_ID = re.compile(r"^peer id: (\S+)", re.M)


@pytest.fixture
def lan() -> Iterator[list[str]]:
    """NODES namespaces, each with ``veth0`` at 10.77.0.(i+1)/24 bridged to the others."""
    with bridged_lan("mdns", NODES, SUBNET) as nodes:
        yield nodes


@dataclass
class NsNode:
    name: str
    ns: str
    ip: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    peer_id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{MCP_PORT}/mcp"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def call(self, tool: str, /, timeout: float = 60, **args: Any) -> Any:
        """One MCP tool call from inside the node's namespace; its structured result."""
        cmd = ["ip", "netns", "exec", self.ns, PYTHON, MCP_CALL, self.url, tool, json.dumps(args)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{tool} on {self.name}: no answer in {timeout:g} s\n{self.tail()}") from exc
        lines = r.stdout.strip().splitlines()
        out = json.loads(lines[-1]) if lines else {"ok": False, "error": r.stderr[-2000:]}
        assert r.returncode == 0 and out["ok"], f"{tool} on {self.name} (rc {r.returncode}): {out}\n{r.stderr[-2000:]}"
        return out["result"]

    def tail(self) -> str:
        return f"--- {self.name} log ---\n{self.log_text()[-3000:]}"


def _start(node: NsNode, env: dict[str, str], timeout: float = 180) -> None:
    args = ["p2p", "start", "--node-id", node.name, "--data-dir", str(node.data_dir),
            "--listen", f"/ip4/{node.ip}/tcp/0", "--mdns", "--mcp-port", str(MCP_PORT)]
    with open(node.log, "ab") as fh:
        node.proc = subprocess.Popen(["ip", "netns", "exec", node.ns, CLI, *args], cwd=REPO, env=env,
                                     stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ready = f"MCP (streamable HTTP): {node.url}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise AssertionError(f"{node.name} exited with {node.proc.returncode}\n{node.tail()}")
        text = node.log_text()
        ids = PEER_ID.findall(text)
        if ids and ready in text:
            node.peer_id = ids[-1]
            return
        time.sleep(0.1)
    raise AssertionError(f"{node.name} not up after {timeout:g} s\n{node.tail()}")


def _stop(node: NsNode) -> None:
    if node.proc is None:
        return
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
    node.proc = None


def _eventually(check: Callable[[], bool], timeout: float, what: str, nodes: list[NsNode], every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}\n" + "\n".join(n.tail() for n in nodes))


def test_three_nodes_find_each_other_by_mdns_and_share_a_workflow(
    tmp_path: Path, shared_cache_dir: Path, lan: list[str]
) -> None:
    env = cli_env(
        shared_cache_dir,
        IPFS_ACCELERATE_NETWORK__HEARTBEAT_S="0.5",
        IPFS_ACCELERATE_NETWORK__REANNOUNCE_S="1",
        IPFS_ACCELERATE_SCHEDULER__LEASE_S="3",
    )
    nodes = [NsNode(f"n{i + 1}", ns, f"{SUBNET}.{i + 1}", tmp_path / f"n{i + 1}", tmp_path / f"n{i + 1}.log")
             for i, ns in enumerate(lan)]
    n1, n2, n3 = nodes
    try:
        for n in nodes:  # one at a time: the first may export the model into the shared cache
            _start(n, env)
        assert len({n.peer_id for n in nodes}) == NODES

        def sees_all(n: NsNode) -> Callable[[], bool]:
            want = {o.peer_id for o in nodes if o is not n}

            def check() -> bool:
                listed = n.call("list_peers")["peers"]
                return want <= {p["peer_id"] for p in listed if p["models"]}

            return check

        for n in nodes:  # no --bootstrap anywhere: only mDNS on the bridged LAN can do this
            _eventually(sees_all(n), 180, f"{n.name} to see the other two nodes", nodes)
        for p in n1.call("list_peers")["peers"]:
            assert any(a.startswith(f"/ip4/{SUBNET}.") for a in p["addrs"]), p

        tasks = [{"model": DEFAULT_MODEL, "input": f"mDNS sentence {i} about a dog on a log."} for i in range(30)]
        sub = n1.call("submit_workflow", name="mdns-spread", tasks=tasks, tag="p2p-only")
        wid = sub["workflow_id"]
        st = n1.call("wait_for_workflow", timeout=400, workflow_id=wid, timeout_s=300, include_results=True, format="floats")
        assert st["state"] == "completed" and st["completed"] == 30, {k: v for k, v in st.items() if k != "tasks"}
        used = {t["peer"] for t in st["tasks"]}
        assert used == {n2.peer_id, n3.peer_id}, "both workers are used and never the submitter"
        assert all(len(t["result"]["embedding"]) == 384 for t in st["tasks"])

        def same_clock() -> bool:
            h1 = n1.call("get_node_info")["clock"]["hash"]
            h3 = n3.call("get_node_info")["clock"]["hash"]
            return bool(h1) and h1 == h3

        _eventually(same_clock, 60, "n3 to report n1's clock hash", nodes)
        on3 = n3.call("get_workflow_status", workflow_id=wid, include_results=True, format="floats")
        assert on3["state"] == "completed"
        assert [t["result"] for t in on3["tasks"]] == [t["result"] for t in st["tasks"]]
    finally:
        for n in nodes:
            _stop(n)
    for n in nodes:
        assert "Traceback" not in n.log_text(), n.tail()
