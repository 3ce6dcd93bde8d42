"""A joiner right after a workflow finishes (issue 7 item 3): a peer that joins about a second
after a 200-task workflow completed must re-run none of its tasks and must not become any
task's reported ``peer``. It claims nothing until its catch-up reaches the heads its peers
announced; a joiner that claims on half a history re-runs finished work and, when its later
claim outscores the original owner, rewrites who ran the task on every node.

Re-runs are counted from the clock (``task.claim``/``task.done`` ops authored by the joiner),
read once every peer holds the same events."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.cluster import Cluster, call, clock_ops, settled, wait_done, wait_peers
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]




async def test_a_joiner_reruns_nothing_that_finished(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    n2 = cluster.start("n2", bootstrap=[n1])
    await wait_peers(n1, [n2])
    members = [n1, n2]
    figures = []
    for round_, name in enumerate(("n3", "n4")):  # two joiners, one after each of two workflows
        joiner = cluster.start(name)  # up, but connected to nobody until the workflow is over
        tasks = [{"model": DEFAULT_MODEL, "input": f"joiner {round_} sentence {i} about a late guest."} for i in range(200)]
        wid = (await call(n1, "submit_workflow", name=f"finished-{round_}", tasks=tasks))["workflow_id"]
        st = await wait_done(n1, wid, 300)
        assert st["state"] == "completed"
        await call(joiner, "connect_peer", multiaddr=n1.addr)  # joins the moment the workflow is seen complete
        before = await call(n1, "get_workflow_status", workflow_id=wid, limit=200)
        await wait_peers(joiner, members)
        members.append(joiner)
        statuses = await settled(members, [wid], timeout=120)

        mine = [op for author, op in clock_ops(joiner.data_dir)
                if author == joiner.peer_id and op.get("task_id", "").startswith(wid)]
        claims = sum(op["op"] == "task.claim" for op in mine)
        reruns = sum(op["op"] == "task.done" for op in mine)
        reported = [t["task_id"] for t in statuses[wid]["tasks"] if t["peer"] == joiner.peer_id]
        moved = [t["task_id"] for t, b in zip(statuses[wid]["tasks"], before["tasks"]) if t["peer"] != b["peer"]]
        assert statuses[wid]["state"] == "completed" and statuses[wid]["completed"] == 200
        figures.append((name, claims, reruns, len(reported), len(moved)))
    print("\nFIGURE joiner: tasks=200 per round; (joiner, claims, reruns, reported_as_peer, peer_changed) = "
          f"{figures}")
    for name, claims, reruns, reported_n, moved_n in figures:
        assert claims == 0 and reruns == 0, f"{name} claimed {claims} and re-ran {reruns} finished tasks"
        assert reported_n == 0 and moved_n == 0, f"{reported_n} tasks now name {name}; {moved_n} changed peer"
