"""Peers of one network meet through a bootstrap node of another, by the DHT (issue 11, item 1).

Real ``p2p start`` processes on loopback, mDNS off. ``r`` runs network "red" as a DHT server, the
way a shared or public bootstrap node would. ``a`` and ``b`` run network "blue" and know only
``r``'s address. Heartbeats travel on a network's own topic, so nothing "blue" ever passes
through ``r``: ``a`` and ``b`` find each other only through the rendezvous record that each puts
in the DHT under "blue". Once they have met, a ``p2p-only`` workflow submitted on ``a`` runs on
``b``.
"""

from __future__ import annotations

import pytest

from tests.cluster import Cluster, call, wait_done, wait_peers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TEXTS = [f"the dht test sentence number {i}" for i in range(6)]


def _env(network: str) -> dict[str, str]:
    return {"IPFS_ACCELERATE_NETWORK__NETWORK": network, "IPFS_ACCELERATE_NETWORK__DHT_INTERVAL_S": "2"}


async def test_two_peers_of_a_network_meet_through_another_networks_bootstrap_node(cluster: Cluster) -> None:
    # r serves the model too: it is connected to both, but of another network, so it never sees
    # blue's workflow nor runs its tasks (the name is in the clock's protocol ids)
    r = cluster.start("r", extra=["--dht", "server"], env=_env("red"))
    a, b = cluster.start_many(
        {"name": "a", "bootstrap": [r], "extra": ["--dht", "client"], "env": _env("blue")},
        {"name": "b", "bootstrap": [r], "extra": ["--dht", "client"], "env": _env("blue")},
    )
    await wait_peers(a, [b], timeout=90)
    await wait_peers(b, [a], timeout=90)

    info_a, info_r = await call(a, "get_node_info"), await call(r, "get_node_info")
    assert info_a["dht"]["mode"] == "client" and info_r["dht"]["mode"] == "server", (info_a["dht"], info_r["dht"])
    assert info_a["dht"]["network_peers_found"] >= 1 and info_a["dht"]["provided"] >= 1, info_a["dht"]
    # the bootstrap node is of another network: it never lists them, nor they it
    assert {p["peer_id"] for p in (await call(r, "list_peers"))["peers"]} & {a.peer_id, b.peer_id} == set()
    assert r.peer_id not in {p["peer_id"] for p in (await call(a, "list_peers"))["peers"]}

    wid = (await call(a, "submit_workflow", name="over-the-dht", tag="p2p-only",
                      tasks=[{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": t} for t in TEXTS]))["workflow_id"]
    st = await wait_done(a, wid, 240)
    assert st["state"] == "completed", repr(await call(a, "get_workflow_status", workflow_id=wid, limit=2))[:3000]
    full = await call(a, "get_workflow_status", workflow_id=wid, limit=len(TEXTS))
    assert {t["peer"] for t in full["tasks"]} == {b.peer_id}, full["tasks"]
    assert (await call(r, "list_workflows"))["workflows"] == []


async def test_with_the_dht_off_they_never_meet(cluster: Cluster) -> None:
    """The control: the same three nodes without a DHT. ``a`` and ``b`` stay strangers, so
    the first test's meeting is the DHT's doing."""
    r = cluster.start("r", extra=["--dht", "off"], env=_env("red"))
    a, b = cluster.start_many(
        {"name": "a", "bootstrap": [r], "extra": ["--dht", "off"], "env": _env("blue")},
        {"name": "b", "bootstrap": [r], "extra": ["--dht", "off"], "env": _env("blue")},
    )
    with pytest.raises(AssertionError):
        await wait_peers(a, [b], timeout=12)  # 6 heartbeats and 6 DHT intervals of the first test
    assert (await call(a, "get_node_info"))["dht"] == {"mode": "off"}
