"""Bulk both ways on one connection never stalls it (found chasing issue 7's control-load failures).

Two peers send each other many large requests at once, each echoed back, so both directions
of the one yamux connection are full for a while. py-libp2p 0.8.1's yamux reader wrote its
control frames (the ACK of every new inbound stream, pongs, resets) itself: when both sides'
socket buffers were full, each reader waited to write, neither read, and the connection hung
for good (pings unanswered, peers judged silent, the link finally dropped). Every request must
come back, and a small one sent in the middle must come back promptly.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import trio
from netproc import PeerProc, spawn_peer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAME = str(8 << 20)
SIZE = 2 << 20
CONCURRENT = 12
ROUNDS = 3


async def _request(src: PeerProc, dst: PeerProc, rid: str, data: str, timeout: float) -> None:
    since = len(src.events)
    await src.send({"cmd": "request", "id": rid, "peer": dst.peer_id, "data": data})
    ev = await src.wait_for(lambda e: e["event"] == "reply" and e["id"] == rid, timeout, since)
    assert ev["ok"] and ev["data"] == data, {k: v for k, v in ev.items() if k != "data"}


async def test_many_large_requests_both_ways_at_once_all_return(tmp_path: Path) -> None:
    async with spawn_peer(tmp_path, "--max-frame-bytes", FRAME, name="a") as a:
        async with spawn_peer(tmp_path, "--bootstrap", a.addr, "--max-frame-bytes", FRAME, name="b") as b:
            await a.wait_for(lambda e: e["event"] == "connected" and e["peer"] == b.peer_id, 60)
            payload = secrets.token_bytes(SIZE).hex()
            for r in range(ROUNDS):
                async with trio.open_nursery() as nursery:
                    for i in range(CONCURRENT):
                        nursery.start_soon(_request, a, b, f"a{r}.{i}", payload, 120.0)
                        nursery.start_soon(_request, b, a, f"b{r}.{i}", payload, 120.0)
                    await trio.sleep(0.5)
                    await _request(a, b, f"small{r}", "00" * 16, 30.0)
