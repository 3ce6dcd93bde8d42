"""mDNS discovery between two real processes, each in a network namespace of its own joined by
a veth pair (10.213.N.1 <-> 10.213.N.2). zeroconf multicasts on every interface it finds, so
running it in the test's own namespace would send mDNS out of the machine's real interfaces;
inside the namespaces only the veth pair (and lo) exist. Skips, saying why, where namespaces
cannot be made (not Linux, not root, no iproute2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netproc import spawn_peer

pytestmark = pytest.mark.slow


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux-only")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    tag = os.getpid() % 100000
    net = 10 + os.getpid() % 240
    ns = (f"ipfsacc-{tag}-a", f"ipfsacc-{tag}-b")
    veth = (f"ia{tag}a", f"ia{tag}b")
    made: list[str] = []
    try:
        for n in ns:
            r = _ip("netns", "add", n)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
            made.append(n)
        steps = [
            ("link", "add", veth[0], "type", "veth", "peer", "name", veth[1]),
            ("link", "set", veth[0], "netns", ns[0]),
            ("link", "set", veth[1], "netns", ns[1]),
        ]
        for i, n in enumerate(ns):
            steps += [
                ("-n", n, "addr", "add", f"10.213.{net}.{i + 1}/24", "dev", veth[i]),
                ("-n", n, "link", "set", "lo", "up"),
                ("-n", n, "link", "set", veth[i], "up"),
                ("-n", n, "route", "add", "224.0.0.0/4", "dev", veth[i]),
            ]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot set up veth between namespaces ({' '.join(step)}): {r.stderr.strip()}")
        yield ns
    finally:
        for n in made:
            _ip("netns", "del", n)  # deleting a namespace deletes its veth end (and the pair)


async def test_mdns_peers_find_and_connect(tmp_path: Path, two_namespaces: tuple[str, str]) -> None:
    ns_a, ns_b = two_namespaces
    args = ("--listen", "/ip4/0.0.0.0/tcp/0", "--mdns")
    async with spawn_peer(tmp_path, *args, name="a", netns=ns_a) as a:
        async with spawn_peer(tmp_path, *args, name="b", netns=ns_b) as b:
            t = time.perf_counter()
            # wildcard listen addresses come back concrete: the veth address first
            assert a.addr.startswith("/ip4/10.213.") and b.addr.startswith("/ip4/10.213.")
            await a.wait_for(lambda e: e["event"] == "connected" and e["peer"] == b.peer_id, 60)
            await b.wait_for(lambda e: e["event"] == "connected" and e["peer"] == a.peer_id, 60)
            found_s = time.perf_counter() - t
            await a.send({"cmd": "request", "id": 7, "peer": b.peer_id, "data": b"over mdns".hex()})
            reply = await a.wait_for(lambda e: e["event"] == "reply" and e["id"] == 7, 30)
            assert reply["ok"] and bytes.fromhex(reply["data"]) == b"over mdns"
    for p in (a, b):
        assert "Traceback" not in p.log_text()
    print(f"\n[net] mDNS: both peers connected {found_s:.2f} s after the second was ready")
