"""A cluster of real peers: `ipfs-accelerate p2p start` processes on loopback, driven over MCP."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio
from mcp import Client

from tests.procs import cli_env, free_port, start, stop, wait_port

PEER_ID = re.compile(r"^peer id: (\S+)", re.M)
ADDR = re.compile(r"^  (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)", re.M)


@dataclass
class Peer:
    name: str
    data_dir: Path
    mcp_port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    peer_id: str = ""
    addr: str = ""
    listen_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mcp_port}/mcp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    root: Path
    cache_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "IPFS_ACCELERATE_NETWORK__HEARTBEAT_S": "0.5",
            "IPFS_ACCELERATE_NETWORK__REANNOUNCE_S": "1",
            "IPFS_ACCELERATE_SCHEDULER__LEASE_S": "3",
        }
        return cli_env(self.cache_dir, **{**base, **self.env_extra, **extra})

    def start(self, name: str, *, bootstrap: list[Peer] = (), extra: list[str] = (), env: dict[str, str] | None = None,
              mdns: bool = False, port: int = 0) -> Peer:
        peer = self.peers.get(name)
        if peer is None:
            data = self.root / name
            args = ["p2p", "start", "--node-id", name, "--data-dir", str(data),
                    "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--mdns" if mdns else "--no-mdns",
                    "--mcp-port", str(free_port())]
            for b in bootstrap:
                args += ["--bootstrap", b.addr]
            args += list(extra)
            peer = Peer(name, data, int(args[args.index("--mcp-port") + 1]), args, self.root / f"{name}.log")
            self.peers[name] = peer
        peer.proc = start(peer.args, self.env(**(env or {})), peer.log)
        self._await_up(peer)
        return peer

    def _await_up(self, peer: Peer, timeout: float = 120) -> None:
        assert peer.proc is not None
        wait_port(peer.mcp_port, peer.proc, peer.log, timeout)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = peer.log_text()
            ids, addrs = PEER_ID.findall(text), ADDR.findall(text)
            if ids and addrs:
                peer.peer_id, peer.addr = ids[-1], addrs[-1]
                peer.listen_port = int(peer.addr.split("/tcp/")[1].split("/")[0])
                return
            time.sleep(0.05)
        raise AssertionError(f"{peer.name} printed no peer id/addr:\n{peer.log_text()[-3000:]}")

    def pin_port(self, peer: Peer) -> None:
        """Restart on the same libp2p port (so bootstrap addresses stay valid)."""
        i = peer.args.index("--listen")
        peer.args[i + 1] = f"/ip4/127.0.0.1/tcp/{peer.listen_port}"

    def kill(self, peer: Peer, sig: int = signal.SIGKILL) -> int:
        assert peer.proc is not None
        code = stop(peer.proc, sig)
        peer.proc = None
        return code

    def stop_all(self) -> None:
        for p in self.peers.values():
            if p.proc is not None:
                try:
                    stop(p.proc, signal.SIGTERM, timeout=15)
                except AssertionError:
                    pass
                p.proc = None


async def call(peer: Peer, tool: str, /, **args: Any) -> Any:
    async with Client(peer.url) as client:
        res = await client.call_tool(tool, args)
    assert not res.is_error, f"{tool} on {peer.name}: {res.content}"
    return res.structured_content


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2) -> None:
    with trio.move_on_after(timeout):
        while True:
            if await check():
                return
            await trio.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")


async def wait_peers(peer: Peer, others: list[Peer], timeout: float = 60) -> None:
    want = {o.peer_id for o in others}

    async def seen() -> bool:
        listed = await call(peer, "list_peers")
        return want <= {p["peer_id"] for p in listed["peers"] if p["models"]}

    await eventually(seen, timeout, f"{peer.name} to see {[o.name for o in others]}")
