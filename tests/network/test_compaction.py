"""Compaction between real ``p2p start`` processes (docs/compaction.md): with
``clock.retention_s`` at 1 s, the submitter compacts a finished workflow; its peer folds the
compact op, rebuilds the snapshot from its own fold and verifies it; both answer every field
alike, ``compacted`` included, and a restart reads the compaction back from the clock."""

from __future__ import annotations

import signal

import pytest

from tests.cluster import Cluster, Peer, call, eventually, wait_done, wait_peers
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENV = {"IPFS_ACCELERATE_CLOCK__RETENTION_S": "1"}


async def test_a_finished_workflow_is_compacted_and_verified_by_its_peer(cluster: Cluster) -> None:
    a = cluster.start("a", env=ENV)
    b = cluster.start("b", bootstrap=[a], env=ENV)
    await wait_peers(a, [b])
    sub = await call(a, "submit_workflow", name="to-compact",
                     tasks=[{"model": DEFAULT_MODEL, "input": f"compaction sentence {i}"} for i in range(6)])
    wid = sub["workflow_id"]
    assert sub["compacted"] is None
    await wait_done(a, wid, 240)

    async def compacted_on(peer: Peer) -> bool:
        return (await call(peer, "get_workflow_status", workflow_id=wid, limit=0))["compacted"] is not None

    await eventually(lambda: compacted_on(a), 60, "a to compact its workflow")
    await eventually(lambda: compacted_on(b), 60, "b to fold a's compaction")

    async def verified() -> bool:
        return (await call(b, "get_node_info"))["compaction"]["verified"] == 1

    await eventually(verified, 60, "b to verify a's snapshot")
    info_a, info_b = (await call(a, "get_node_info"))["compaction"], (await call(b, "get_node_info"))["compaction"]
    assert info_a["written"] == 1 and info_a["compacted"] == 1 and info_a["enabled"] is True, info_a
    assert info_b["written"] == 0 and info_b["forged"] == {} and info_b["compacted"] == 1, info_b

    sa = await call(a, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    sb = await call(b, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    assert sa == sb and sa["state"] == "completed" and sa["compacted"]["by"] == a.peer_id

    cluster.kill(b, signal.SIGTERM)
    b = cluster.start("b", bootstrap=[a], env=ENV)
    await wait_peers(b, [a], timeout=90)
    assert await call(b, "get_workflow_status", workflow_id=wid, include_results=True, format="floats") == sa
