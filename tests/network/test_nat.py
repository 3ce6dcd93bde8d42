"""A peer behind NAT takes work through a relay (issue 11, items 2 and 3), in network namespaces.

Topology (:func:`tests.netns.nat_lan`): ``a`` and the relay ``r`` share a public LAN. ``c`` sits
behind a NAT router (iptables MASQUERADE) whose firewall lets it open connections to ``r``
alone; nothing on the LAN can dial it (both checked with plain TCP connects from the
namespaces). Were ``c`` free to dial ``a``, it would, and they would be connected directly.
Real ``p2p start`` nodes, one network key:

- ``r`` runs ``--relay-service`` and serves no model, so it can take no task;
- ``c`` bootstraps to ``r``, sees (by identify) that ``r`` relays, reserves a slot and puts its
  address through ``r`` in its heartbeats;
- ``a`` bootstraps to ``r``, hears ``c``'s heartbeat through ``r``, fails to dial ``c``'s own
  address and dials the relayed one.

Then a ``p2p-only`` workflow submitted on ``a`` runs on ``c``, and ``list_peers`` on ``a`` shows
``c`` as ``relayed`` (``hole-punched`` would mean DCUtR got a direct connection; here the router
allows no other flow, so it does not). Then the relay is killed (-9): ``c`` drops its
reservation and stops advertising the address through it, ``a`` loses ``c``, both keep running;
the relay restarts, ``c`` reserves again, ``a`` reaches ``c`` again and another workflow runs
there. Skips, saying why, without namespaces or iptables.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import call, eventually, wait_done, wait_peers
from tests.conftest import DEFAULT_MODEL
from tests.netns import NatLan, nat_lan
from tests.network.nsnodes import P2P_PORT, PYTHON, NsNodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUBNET = "10.81.0"  # only ever configured inside the namespaces below
PRIVATE = "10.82.0"
TEXTS = [f"a sentence that crosses a NAT, number {i}." for i in range(8)]


@pytest.fixture
def lan() -> Iterator[NatLan]:
    with nat_lan("nat", 2, SUBNET, PRIVATE, reach=[2]) as l:  # c may open connections to r alone
        yield l


def _tcp_connect(ns: str, host: str, port: int) -> str:
    code = (f"import socket\ntry:\n socket.create_connection(('{host}', {port}), timeout=3).close(); print('ok')\n"
            f"except OSError as e:\n print(type(e).__name__)")
    r = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", code], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() or r.stderr.strip()


async def test_a_workflow_from_a_runs_on_a_natted_peer_through_a_relay(
        tmp_path: Path, shared_cache_dir: Path, lan: NatLan) -> None:
    nodes = NsNodes(tmp_path, shared_cache_dir)
    try:
        r = nodes.start("r", lan.public[1], f"{SUBNET}.2", [], extra=["--relay-service"],
                        env={"IPFS_ACCELERATE_INFERENCE__SERVE": "[]"})
        c = nodes.start("c", lan.natted, lan.natted_ip, [r])
        a = nodes.start("a", lan.public[0], f"{SUBNET}.1", [r], env={"IPFS_ACCELERATE_NETWORK__RELAY_RESERVE": "never"})

        # the premise: c reaches the LAN through the NAT, and the LAN cannot reach c
        assert _tcp_connect(lan.natted, f"{SUBNET}.2", P2P_PORT) == "ok"
        assert _tcp_connect(lan.public[0], lan.natted_ip, P2P_PORT) != "ok"
        assert _tcp_connect(lan.natted, f"{SUBNET}.1", P2P_PORT) != "ok"

        async def reserved() -> bool:
            return r.peer_id in (await call(c, "get_node_info"))["relay"]["reservations"]

        try:
            await eventually(reserved, 60, "c to hold a reservation on r")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{c.log_text()[-4000:]}") from None
        await wait_peers(a, [c], timeout=120)
        info_c = await call(c, "get_node_info")
        circuit = f"/p2p/{r.peer_id}/p2p-circuit/p2p/{c.peer_id}"
        assert any(addr.endswith(circuit) for addr in info_c["addrs"]), info_c["addrs"]
        assert (await call(r, "get_node_info"))["relay"]["service"] is True

        async def connection_of(peer, other) -> str | None:
            listed = await call(peer, "list_peers")
            return next((p.get("connection") for p in listed["peers"] if p["peer_id"] == other.peer_id), None)

        # a reached c through r; the heartbeats say how
        async def a_reached_c() -> bool:
            return await connection_of(a, c) is not None

        try:
            await eventually(a_reached_c, 60, "a to connect to c")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{a.log_text()[-5000:]}") from None
        kind = await connection_of(a, c)
        assert kind in ("relayed", "hole-punched"), kind
        assert await connection_of(a, r) == "direct"
        listed_c = next(p for p in (await call(a, "list_peers"))["peers"] if p["peer_id"] == c.peer_id)
        assert any(addr.endswith(circuit) for addr in listed_c["addrs"]), listed_c["addrs"]

        wid = (await call(a, "submit_workflow", name="through-the-nat", tag="p2p-only",
                          tasks=[{"model": DEFAULT_MODEL, "input": t} for t in TEXTS]))["workflow_id"]
        st = await wait_done(a, wid, 300)
        full = await call(a, "get_workflow_status", workflow_id=wid, limit=len(TEXTS), include_results=True)
        assert st["state"] == "completed", full
        assert {t["peer"] for t in full["tasks"]} == {c.peer_id}, full["tasks"]
        assert all(t["result"]["dim"] == 384 for t in full["tasks"]), full["tasks"][0]
        kind_after = await connection_of(a, c)
        print(f"\nFIGURE nat: a->c connection={kind} (after the workflow: {kind_after}); "
              f"c relay={info_c['relay']}")

        # the relay dies (kill -9): c loses the reservation and a loses c, both stay up and keep
        # serving; the relay comes back on its address and key, c reserves again, a reaches c again
        assert r.proc is not None
        r.proc.kill()
        r.proc.wait()

        async def reservation_gone() -> bool:
            return not (await call(c, "get_node_info"))["relay"]["reservations"]

        async def a_lost_c() -> bool:
            return await connection_of(a, c) is None

        await eventually(reservation_gone, 60, "c to drop its reservation on the dead relay")
        await eventually(a_lost_c, 60, "a to lose its relayed connection to c")
        assert c.proc is not None and c.proc.poll() is None and a.proc is not None and a.proc.poll() is None
        assert not any(circuit in addr for addr in (await call(c, "get_node_info"))["addrs"])  # no longer advertised
        nodes.restart(r, f"{SUBNET}.2")
        await eventually(reserved, 90, "c to reserve again on the restarted relay")

        async def a_reached_c_again() -> bool:
            return await connection_of(a, c) in ("relayed", "hole-punched")

        await eventually(a_reached_c_again, 90, "a to reach c through the restarted relay")
        wid2 = (await call(a, "submit_workflow", name="after-the-relay-died", tag="p2p-only",
                           tasks=[{"model": DEFAULT_MODEL, "input": f"again {t}"} for t in TEXTS[:3]]))["workflow_id"]
        st2 = await wait_done(a, wid2, 300)
        assert st2["state"] == "completed", st2
        again = await call(a, "get_workflow_status", workflow_id=wid2, limit=3)
        assert {t["peer"] for t in again["tasks"]} == {c.peer_id}, again["tasks"]
    finally:
        nodes.stop_all()
