"""Nodes started inside network namespaces, each reachable over MCP through ``ns_forward.py``
(the partition and NAT tests). MCP servers bind 127.0.0.1 inside their namespaces; a relay
carries each one to a port in the test's namespace through a unix socket, so the usual
``tests.cluster`` helpers drive them."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

from tests.cluster import Peer
from tests.conftest import REPO, VENV_BIN
from tests.procs import CLI, cli_env, free_port, stop

NODE_MCP = 18766  # each namespace has its own port space
P2P_PORT = 4011
PYTHON = str(VENV_BIN / "python")
FORWARD = str(Path(__file__).with_name("ns_forward.py"))
PEER_ID = re.compile(r"^peer id: (\S+)", re.M)


class NsNodes:
    """Nodes started inside namespaces, each reachable over MCP through a relay."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root, self.cache_dir = root, cache_dir
        self.socks = Path(tempfile.mkdtemp(prefix="h5ns"))  # unix paths must stay short
        self.procs: list[subprocess.Popen[bytes]] = []
        self.peers: list[Peer] = []
        self._launch: dict[str, tuple[list[str], dict[str, str]]] = {}  # name -> (command, env)

    def start(self, name: str, ns: str, ip: str, bootstrap: list[Peer], *, extra: list[str] = (),
              env: dict[str, str] | None = None) -> Peer:
        env = cli_env(self.cache_dir, IPFS_ACCELERATE_NETWORK__HEARTBEAT_S="0.5",
                      IPFS_ACCELERATE_NETWORK__REANNOUNCE_S="1", IPFS_ACCELERATE_SCHEDULER__LEASE_S="3", **(env or {}))
        data, log = self.root / name, self.root / f"{name}.log"
        args = ["p2p", "start", "--node-id", name, "--data-dir", str(data), "--listen", f"/ip4/{ip}/tcp/{P2P_PORT}",
                "--no-mdns", "--mcp-port", str(NODE_MCP)]
        for b in bootstrap:
            args += ["--bootstrap", b.addr]
        args += list(extra)
        command = ["ip", "netns", "exec", ns, CLI, *args]
        self._launch[name] = (command, env)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sock, port = self.socks / f"{name}.sock", free_port()
        relays = [subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, FORWARD, "unix2tcp", str(sock), str(NODE_MCP)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                  subprocess.Popen([PYTHON, FORWARD, "tcp2unix", str(port), str(sock)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.procs += relays
        peer = Peer(name, data, port, args, log, proc)
        self.peers.append(peer)
        self._await_up(peer, ip, starts=1)
        return peer

    def restart(self, peer: Peer, ip: str) -> None:
        """Start ``peer`` again after it died (same data dir, identity, addresses and MCP port;
        the MCP relays keep working)."""
        assert peer.proc is not None and peer.proc.poll() is not None, "restart a node that is not running"
        command, env = self._launch[peer.name]
        starts = peer.log_text().count("MCP (streamable HTTP)") + 1
        with open(peer.log, "ab") as fh:
            peer.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self._await_up(peer, ip, starts=starts)

    def _await_up(self, peer: Peer, ip: str, starts: int) -> None:
        proc = peer.proc
        assert proc is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{peer.name} exited with {proc.returncode}:\n{peer.log_text()[-3000:]}")
            text = peer.log_text()
            ids = PEER_ID.findall(text)
            if ids and text.count("MCP (streamable HTTP)") >= starts:
                peer.peer_id = ids[-1]
                peer.addr = f"/ip4/{ip}/tcp/{P2P_PORT}/p2p/{peer.peer_id}"
                return
            time.sleep(0.1)
        raise AssertionError(f"{peer.name} not up:\n{peer.log_text()[-3000:]}")

    def stop_all(self) -> None:
        for p in self.peers:
            if p.proc is not None:
                try:
                    stop(p.proc, timeout=20)
                except AssertionError:
                    pass
                p.proc = None
        for r in self.procs:
            r.kill()
            r.wait()
