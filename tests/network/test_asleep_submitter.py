"""A submitter that falls asleep (SIGSTOP) while a peer works through its chunked workflow
(issue 12 item 1, with the laptops of the product card): the inputs live only with the
submitter, so the worker soon needs a chunk nobody else holds. It must wait for it, keeping
its claims and spending no attempt, and finish every task once the submitter wakes (SIGCONT).
Real ``p2p start`` processes with the real default model."""

from __future__ import annotations

import signal

import pytest
import trio

from tests.cluster import Cluster, call, clock_ops, eventually, run_counts, wait_all_peers, wait_done
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LEASE_S = 3.0
TASKS = 800
# ~2 KB inputs: about 120 a chunk, so the workflow spans several chunks and the worker, which
# claims 16 at a time, needs the later ones well after it started
FILLER = " ".join(["a long paragraph of a report on rivers, roads and the towns along them"] * 28)


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"IPFS_ACCELERATE_SCHEDULER__LEASE_S": str(LEASE_S), "IPFS_ACCELERATE_SCHEDULER__CLAIM_BACKLOG": "16"}


async def test_a_worker_waits_for_an_asleep_submitters_chunks(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    (n2,) = cluster.start_many({"name": "n2", "bootstrap": [n1]})
    await wait_all_peers([n1, n2])
    tasks = [{"model": DEFAULT_MODEL, "input": f"doc {i}: {FILLER}"} for i in range(TASKS)]
    wid = (await call(n1, "submit_workflow", name="asleep", tasks=tasks, tag="p2p-only"))["workflow_id"]

    async def started() -> bool:
        return (await call(n2, "get_workflow_status", workflow_id=wid, limit=0))["completed"] >= 20

    await eventually(started, 180, "n2 to run the first tasks")
    assert n1.proc is not None
    n1.proc.send_signal(signal.SIGSTOP)
    try:
        async def waiting() -> bool:
            return "input is not reachable now; it waits" in n2.log_text()

        await eventually(waiting, 120, "n2 to need a chunk only the asleep submitter holds")
        await trio.sleep(3 * LEASE_S)  # asleep a while longer: the tries go on, the attempts do not
        st = await call(n2, "get_workflow_status", workflow_id=wid, limit=0)
        assert st["failed"] == 0 and st["completed"] < TASKS, st
    finally:
        n1.proc.send_signal(signal.SIGCONT)
    final = await wait_done(n1, wid, 400)
    assert final["state"] == "completed" and final["completed"] == TASKS, final
    ops = [(a, op) for a, op in clock_ops(n1.data_dir) if op.get("task_id", "").startswith(wid)]
    fails = [op for _, op in ops if op["op"] == "task.fail"]
    assert not fails, fails[:3]  # the wait spent no attempt
    counts = run_counts(ops, {wid})
    assert not counts.ran_twice, counts.ran_twice[:5]
