"""A write given up half-way (a timeout, a cancelled task) never breaks the connection under it.

Found chasing issue 7's control-load failures. A busy or paused peer stops reading its socket;
the sender's socket buffer fills; a write on that connection then waits inside trio's
``send_all``. When the writer's timeout fires there, only part of the frame has left, and every
stream of the connection is ruined: the noise nonce and the swarm key's stream cipher are now
ahead of the bytes the peer got, so the peer reads garbage lengths and waits for bytes that mean
nothing (pings unanswered, window updates never seen, peers judged silent). The full CI-like runs
showed exactly that: a worker busy folding a 10,000-task submit, the submitter's 1.3 MB block
fetches and pushes timing out, then both directions of both connections dead for a minute.

Here one peer is frozen (SIGSTOP) for a few seconds while the other sends it many 1 MiB requests
with a shorter timeout, so writes are given up while the socket is full. After the peer resumes, the same
connection must carry requests both ways, with and without a swarm key.
"""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

import pytest
import trio
from netproc import PeerProc, spawn_peer

from p2p.net.psk import generate_swarm_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FRAME = str(8 << 20)
SIZE = 1 << 20
ABANDONED = 80
SHORT_TIMEOUT_S = 1.5
FROZEN_S = 4.0


async def _request(src: PeerProc, dst: PeerProc, rid: str, data: str, timeout: float) -> dict:
    since = len(src.events)
    await src.send({"cmd": "request", "id": rid, "peer": dst.peer_id, "data": data, "timeout": timeout})
    return await src.wait_for(lambda e: e["event"] == "reply" and e["id"] == rid, timeout + 30, since)


@pytest.mark.parametrize("swarm_key", [True, False], ids=["psk", "no-psk"])
async def test_writes_abandoned_on_a_full_socket_leave_the_connection_usable(tmp_path: Path, swarm_key: bool) -> None:
    key_args: list[str] = []
    if swarm_key:
        key = tmp_path / "swarm.key"
        generate_swarm_key(key)
        key_args = ["--psk-file", str(key)]
    async with spawn_peer(tmp_path, "--max-frame-bytes", FRAME, *key_args, name="a") as a:
        async with spawn_peer(tmp_path, "--bootstrap", a.addr, "--max-frame-bytes", FRAME, *key_args, name="b") as b:
            await a.wait_for(lambda e: e["event"] == "connected" and e["peer"] == b.peer_id, 60)
            small = "00" * 16
            assert (await _request(a, b, "before", small, 30.0))["ok"]
            payload = secrets.token_bytes(SIZE).hex()
            mark = len(a.events)
            try:
                async with trio.open_nursery() as nursery:
                    for i in range(ABANDONED):
                        nursery.start_soon(_request, a, b, f"big{i}", payload, SHORT_TIMEOUT_S)
                    # freeze b once the streams are open and the payloads are flowing (a stream
                    # cannot be opened to a frozen peer: multistream-select waits for its answer),
                    # for longer than the requests' timeout, then let it run (a laptop lid
                    # opened again); every request then ends, most of them timed out
                    await a.wait_for(lambda e: e["event"] == "reply", SHORT_TIMEOUT_S + 30, mark)
                    b.kill(signal.SIGSTOP)
                    await trio.sleep(FROZEN_S)
                    b.kill(signal.SIGCONT)
            finally:
                b.kill(signal.SIGCONT)
            assert any(not e["ok"] for e in a.events[mark:] if e["event"] == "reply"), "no request was abandoned"
            mark = len(a.events)
            # the connection that carried the abandoned writes must still work, both ways
            after_a = await _request(a, b, "after-a", small, 30.0)
            after_b = await _request(b, a, "after-b", small, 30.0)
            assert after_a["ok"] and after_a["data"] == small, after_a
            assert after_b["ok"] and after_b["data"] == small, after_b
            drops = [e for e in a.events[mark:] if e["event"] == "disconnected" and e.get("peer") == b.peer_id]
            assert not drops, f"the connection was dropped after the abandoned writes: {drops}"
