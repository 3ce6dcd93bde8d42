"""kill -9 peers mid-transfer, in a loop, while the others keep running (issue 7, item 1).

A hub and two steady peers run for the whole test. Six times over, a fresh peer joins the hub,
starts big transfers both ways (a 2 MiB request to the hub, a 2 MiB request from the hub to it,
a 600 KiB gossip message) and is killed with SIGKILL a random few milliseconds later, in the
middle of them. After each kill the hub's own request to the dead peer must end with an error
reply (not a hang, not a crash), and the steady peers must still exchange requests and gossip
through the hub.
"""

from __future__ import annotations

import random
import secrets
from pathlib import Path

import pytest
import trio
from netproc import PeerProc, spawn_peer
from peer_proc import PING_TOPIC

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAME = str(4 << 20)
ROUNDS = 6


def _connected(peer: str):  # noqa: ANN202
    return lambda e: e["event"] == "connected" and e["peer"] == peer


async def _request_ok(src: PeerProc, dst: PeerProc, rid: str, size: int) -> None:
    data = secrets.token_bytes(size).hex()
    since = len(src.events)
    await src.send({"cmd": "request", "id": rid, "peer": dst.peer_id, "data": data})
    ev = await src.wait_for(lambda e: e["event"] == "reply" and e["id"] == rid, 60, since)
    assert ev["ok"] and ev["data"] == data, ev


async def _gossip_flows(src: PeerProc, dst: PeerProc, timeout: float = 60) -> None:
    """``src`` publishes until ``dst`` hears one of its messages (meshes may be re-forming)."""
    with trio.fail_after(timeout):
        while True:
            data = secrets.token_bytes(16).hex()
            since = len(dst.events)
            await src.send({"cmd": "publish", "topic": PING_TOPIC, "data": data})
            with trio.move_on_after(1.0):
                await dst.wait_for(lambda e: e["event"] == "gossip" and e["data"] == data, 1.0, since)
                return


async def test_kill_9_peers_mid_transfer_in_a_loop(tmp_path: Path) -> None:
    rng = random.Random(9)
    async with spawn_peer(tmp_path, "--max-frame-bytes", FRAME, name="hub") as hub:
        steady = ["--bootstrap", hub.addr, "--max-frame-bytes", FRAME]
        async with spawn_peer(tmp_path, *steady, name="s1") as s1, spawn_peer(tmp_path, *steady, name="s2") as s2:
            await hub.wait_for(_connected(s1.peer_id), 60)
            await hub.wait_for(_connected(s2.peer_id), 60)
            await _gossip_flows(s1, s2)
            for i in range(ROUNDS):
                async with spawn_peer(tmp_path, *steady, name=f"victim{i}") as victim:
                    since = len(hub.events)
                    await hub.wait_for(_connected(victim.peer_id), 60)
                    big = secrets.token_bytes(2 << 20).hex()
                    await victim.send({"cmd": "request", "id": f"v{i}", "peer": hub.peer_id, "data": big})
                    await victim.send({"cmd": "publish", "topic": PING_TOPIC, "data": secrets.token_bytes(600 << 10).hex()})
                    await hub.send({"cmd": "request", "id": f"h{i}", "peer": victim.peer_id, "data": big})
                    await trio.sleep(rng.uniform(0.0, 0.4))  # chaos: the kill lands somewhere mid-transfer
                    victim.kill()
                    # the hub's request to the dead peer ends (ok if it beat the kill), never hangs
                    await hub.wait_for(lambda e: e["event"] == "reply" and e["id"] == f"h{i}", 60, since)
                    await hub.wait_for(lambda e: e["event"] == "disconnected" and e["peer"] == victim.peer_id, 60, since)
                for p in (hub, s1, s2):
                    assert p.proc.returncode is None, f"{p.name} exited:\n{p.log_text()[-3000:]}"
                await _request_ok(s1, hub, f"s1-{i}", 256 << 10)
                await _request_ok(hub, s2, f"hub-{i}", 256 << 10)
                await _gossip_flows(s1, s2)
            for p in (hub, s1, s2):
                assert "Traceback" not in p.log_text(), p.log_text()[-3000:]
