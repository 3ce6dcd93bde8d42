"""A cut link is noticed by the host itself, and the kept peer is back once the link is.

Two real peer processes (tests/net/peer_proc.py: a bare NetHost, no liveness, no scheduler), one
in each half of a split LAN (tests/netns.py): b keeps a (bootstrap). The trunk between the halves
goes down: nothing is sent back, no RST, so TCP on its own retransmits for many minutes and the
connection stays "up" all along (after a 30 s partition the halves resumed only at TCP's next
retransmission, ~30 s after healing: test_partition's failure). With TCP_USER_TIMEOUT and
keepalive on every connection (p2p.net.host.TCP_USER_TIMEOUT_S) both hosts drop it; once the
trunk is up again b's redial reconnects. Skips, saying why, where namespaces cannot be made."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2p.net.host import TCP_USER_TIMEOUT_S
from tests.netns import SplitLan, split_lan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "net"))
from netproc import spawn_peer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SUBNET = "10.81.0"  # only ever configured inside the namespaces below
PORT = 4021
# TCP_USER_TIMEOUT_S after the last ACK, plus the keepalive idle time when the link was idle,
# plus scheduling slack. TCP alone would take ~15 minutes (tcp_retries2).
NOTICE_S = TCP_USER_TIMEOUT_S + 25.0


@pytest.fixture
def lan() -> Iterator[SplitLan]:
    with split_lan("dlink", 1, 1, SUBNET) as l:
        yield l


async def test_a_cut_link_is_dropped_and_the_kept_peer_redialled_after_healing(tmp_path: Path, lan: SplitLan) -> None:
    a_addr = f"/ip4/{SUBNET}.1/tcp/{PORT}"
    async with spawn_peer(tmp_path, "--listen", a_addr, name="a", netns=lan.left[0]) as a:
        b_args = ("--listen", f"/ip4/{SUBNET}.2/tcp/{PORT}", "--bootstrap", f"{a_addr}/p2p/{a.peer_id}",
                  "--reconnect-max-backoff-s", "2")
        async with spawn_peer(tmp_path, *b_args, name="b", netns=lan.right[0]) as b:
            await b.wait_for(lambda e: e["event"] == "connected" and e["peer"] == a.peer_id, 60)
            await a.wait_for(lambda e: e["event"] == "connected" and e["peer"] == b.peer_id, 60)
            mark_a, mark_b = len(a.events), len(b.events)
            lan.cut()
            cut_at = trio.current_time()
            # some traffic in flight over the dead link, as heartbeats would be
            await b.send({"cmd": "request", "id": 1, "peer": a.peer_id, "data": b"over a dead link".hex()})
            await b.wait_for(lambda e: e["event"] == "disconnected" and e["peer"] == a.peer_id, NOTICE_S, since=mark_b)
            await a.wait_for(lambda e: e["event"] == "disconnected" and e["peer"] == b.peer_id, NOTICE_S, since=mark_a)
            noticed_s = trio.current_time() - cut_at
            mark_b = len(b.events)
            lan.heal()
            healed_at = trio.current_time()
            await b.wait_for(lambda e: e["event"] == "connected" and e["peer"] == a.peer_id, 60, since=mark_b)
            back_s = trio.current_time() - healed_at
            await b.send({"cmd": "request", "id": 2, "peer": a.peer_id, "data": b"after healing".hex()})
            reply = await b.wait_for(lambda e: e["event"] == "reply" and e["id"] == 2, 30)
            assert reply["ok"] and bytes.fromhex(reply["data"]) == b"after healing"
    print(f"\nFIGURE dead link: dropped_after_cut={noticed_s:.1f}s reconnected_after_heal={back_s:.1f}s")
    for p in (a, b):
        assert "Traceback" not in p.log_text()
