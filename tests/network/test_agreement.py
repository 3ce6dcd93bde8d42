"""Same answer everywhere (issue 7 item 2), across real processes: after a multi-peer run settles,
``get_workflow_status`` on every peer agrees on every field of every page, results included, for
several workflows (completed, reprioritised, cancelled mid-run), and every peer reports the same
clock hash. The hypothesis tests prove the fold is a function of the event set; this proves the
peers actually end up holding the same set and render it the same way."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster import Cluster, call, eventually, settled, wait_done, wait_all_peers
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _tasks(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"{tag} agreement sentence {i}."} for i in range(n)]




async def test_every_peer_reports_every_field_alike(cluster: Cluster) -> None:
    # Small result blocks for one peer's work so result_cid/result fetches are exercised too.
    n1 = cluster.start("n1")
    n2, n3 = cluster.start_many(
        {"name": "n2", "bootstrap": [n1], "env": {"IPFS_ACCELERATE_SCHEDULER__INLINE_RESULT_BYTES": "0"}},
        {"name": "n3", "bootstrap": [n1]})
    peers = [n1, n2, n3]
    await wait_all_peers(peers)

    a = (await call(n1, "submit_workflow", name="a", tasks=_tasks(150, "a"), tag="p2p-eligible"))["workflow_id"]
    b = (await call(n2, "submit_workflow", name="b", tasks=_tasks(120, "b"), tag="p2p-only", priority=7))["workflow_id"]
    c = (await call(n3, "submit_workflow", name="c", tasks=_tasks(1000, "c"), priority=10))["workflow_id"]  # 10 pages
    await call(n2, "set_workflow_priority", workflow_id=b, priority=2)  # its submitter reprioritises it

    async def n1_knows_b() -> bool:
        return b in {w["workflow_id"] for w in (await call(n1, "list_workflows"))["workflows"]}

    await eventually(n1_knows_b, 60, "n1 to learn of workflow b")  # (else: "unknown workflow id")
    with pytest.raises(AssertionError, match="only that peer may reprioritise"):  # and nobody else may
        await call(n1, "set_workflow_priority", workflow_id=b, priority=9)

    async def c_started() -> bool:  # under way, and known to n2 (its submitter n3 cancels it)
        if (await call(n3, "get_workflow_status", workflow_id=c, limit=1))["completed"] < 1:
            return False
        return c in {w["workflow_id"] for w in (await call(n2, "list_workflows"))["workflows"]}  # and known to n2

    await eventually(c_started, 120, "workflow c to make progress")
    await call(n3, "cancel_workflow", workflow_id=c)
    for wid in (a, b, c):
        await wait_done(n1, wid, 300)

    statuses = await settled(peers, [a, b, c], timeout=90)
    assert statuses[a]["state"] == "completed" and statuses[a]["completed"] == 150
    assert statuses[b]["state"] == "completed" and statuses[b]["priority"] == 2
    assert statuses[c]["state"] == "cancelled"
    assert all("result" in t for t in statuses[a]["tasks"] + statuses[b]["tasks"])
    assert len({t["peer"] for t in statuses[a]["tasks"]}) >= 2, "the work was shared"
