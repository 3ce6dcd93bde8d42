"""Two networks under one key stay apart: the network name scopes the clock, not only gossip.

Real ``p2p start`` processes on loopback, mDNS off, every node holding the harness's one key.
``r`` runs network "red" and ``a`` network "blue"; both serve the model, and they are connected
directly (as a shared DHT bootstrap node connects them). Each submits a ``p2p-only`` workflow,
which only another peer of its own network may run, and there is none yet: so any task that
runs, or any workflow one of them lists, has crossed between the networks. Before the blocks and
push protocol ids carried the name, ``r`` fetched blue's clock on connecting and ran blue's tasks
(docs/architecture.md §12). Then a second blue node joins and ``a``'s workflow runs there alone.
"""

from __future__ import annotations

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster, Peer, call, clock_ops, wait_done, wait_peers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [f"a sentence for one network only, number {i}" for i in range(4)]


def _env(network: str) -> dict[str, str]:
    return {"IPFS_ACCELERATE_NETWORK__NETWORK": network, "IPFS_ACCELERATE_NETWORK__DHT": "off"}


async def _connections(peer: Peer) -> float:
    """Open libp2p connections of ``peer``, from its /metrics (list_peers names only peers of
    its own network)."""
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"http://127.0.0.1:{peer.mcp_port}/metrics")).text
    return next(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "ipfs_accelerate_peers_connected")


async def _workflow_ids(peer: Peer) -> set[str]:
    return {w["workflow_id"] for w in (await call(peer, "list_workflows", limit=100))["workflows"]}


async def test_networks_that_share_a_key_keep_their_clocks_and_tasks_apart(cluster: Cluster) -> None:
    r = cluster.start("r", env=_env("red"))
    a = cluster.start("a", bootstrap=[r], env=_env("blue"))
    await call(a, "connect_peer", multiaddr=r.addr)  # the key admits them: the connection stands
    tasks = [{"model": MODEL, "input": t} for t in TEXTS]
    blue = (await call(a, "submit_workflow", name="blue", tag="p2p-only", tasks=tasks))["workflow_id"]
    red = (await call(r, "submit_workflow", name="red", tag="p2p-only", tasks=tasks))["workflow_id"]
    await call(a, "connect_peer", multiaddr=r.addr)  # still connected after both appended

    # several heartbeats, announcements and (on every connection) heads exchanges
    await trio.sleep(12)
    # still connected after the window (each has no other peer): the isolation was put to the test
    assert await _connections(r) == 1 and await _connections(a) == 1
    assert await _workflow_ids(r) == {red}
    assert await _workflow_ids(a) == {blue}
    for peer, wid in ((a, blue), (r, red)):
        st = await call(peer, "get_workflow_status", workflow_id=wid, limit=len(TEXTS))
        assert st["state"] == "pending" and {t["state"] for t in st["tasks"]} == {"queued"}, st
    for peer, other in ((a, r), (r, a)):
        assert other.peer_id not in {p["peer_id"] for p in (await call(peer, "list_peers"))["peers"]}
        # its clock holds its own events alone (its advert and its submit): not one of the other's
        assert {author for author, _ in clock_ops(peer.data_dir)} == {peer.peer_id}

    # a blue peer joins: blue's workflow runs there, red's still has no one to run it
    b = cluster.start("b", bootstrap=[a], env=_env("blue"))
    await wait_peers(a, [b], timeout=90)
    st = await wait_done(a, blue, 240)
    assert st["state"] == "completed", st
    full = await call(a, "get_workflow_status", workflow_id=blue, limit=len(TEXTS))
    assert {t["peer"] for t in full["tasks"]} == {b.peer_id}, full["tasks"]
    assert await _workflow_ids(b) == {blue}
    assert await _workflow_ids(r) == {red}
    assert {author for author, _ in clock_ops(r.data_dir)} == {r.peer_id}
    assert (await call(r, "get_workflow_status", workflow_id=red, limit=0))["state"] == "pending"
