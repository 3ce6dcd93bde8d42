"""mDNS discovery between two real processes, each in a network namespace of its own joined by
one bridged LAN (10.213.N.0/24, tests/netns.py). zeroconf multicasts on every interface it finds, so
running it in the test's own namespace would send mDNS out of the machine's real interfaces;
inside the namespaces only the veth pair (and lo) exist. Skips, saying why, where namespaces
cannot be made (not Linux, not root, no iproute2)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netproc import spawn_peer

from tests.netns import bridged_lan

pytestmark = pytest.mark.slow


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    with bridged_lan("net", 2, f"10.213.{10 + os.getpid() % 240}") as (a, b):
        yield a, b


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
