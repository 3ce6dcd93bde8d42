"""Control ops under load (issue 7 item 3): ``set_workflow_priority`` calls every ~0.15 s for as
long as a 10,000-task workflow runs across three workers (at least 60 of them). Folding a reprioritise must cost what it changes,
not a recompute of every task on every peer's event loop; a stalled loop delays heartbeats and
delayed heartbeats turn into false lease expiries. Goal: no retries (no task claimed twice, no
claim that supersedes another) and no "peers went silent" verdict on any node.

Retries are counted from the clock once the peers hold the same events; silent-peer verdicts
from the nodes' logs."""

from __future__ import annotations

from typing import AsyncIterator

import pytest
import trio
from mcp import Client

from tests.cluster import Cluster, call, clock_ops, eventually, run_counts, wait_done, wait_all_peers
from tests.conftest import DEFAULT_MODEL

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.usefixtures("exported_default_model"),
    # Four causes found; the first three fixed with a test each: the yamux reader waiting to write
    # (libp2p_patches 5, test_net_bulk_both_ways), a timed-out write leaving half a frame on
    # the connection (5, test_net_abandoned_writes), the library's 5 s window-update limit
    # killing every 1.3 MB block transfer under load (6), and stream opens taking over 10 s
    # while inference shared the nodes' processes (the negotiation timeout raised to 30 s;
    # inference in worker processes by default: 14 of 14 runs alone passed, and 17 of 17
    # re-claimed nothing).
    # docs/architecture.md §12 item 12.
]

TASKS = 10_000
CALLS = 60  # at least this many land while the workflow runs
MAX_CALLS = 1000


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """The product's liveness timing (configs/default.toml), not the harness's compressed one
    (heartbeat 0.5 s, lease 3 s). Three nodes running 10,000 one-millisecond tasks flat out on
    two cores keep every event loop busy; the harness's 3 s lease then expires on plain loop
    lag (steps of 150-600 ms, no stall, measured with IPFS_ACCELERATE_SLOW_STEP_MS), with or
    without control ops, which is not what this test is about."""
    return {"IPFS_ACCELERATE_NETWORK__HEARTBEAT_S": "2", "IPFS_ACCELERATE_SCHEDULER__LEASE_S": "10"}




async def test_priority_changes_under_load_cause_no_retries(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    n2 = cluster.start("n2", bootstrap=[n1])
    n3 = cluster.start("n3", bootstrap=[n1])
    peers = [n1, n2, n3]
    await wait_all_peers(peers)
    tasks = [{"model": DEFAULT_MODEL, "input": f"load {i}"} for i in range(TASKS)]
    t0 = trio.current_time()
    wid = (await call(n1, "submit_workflow", name="load", tasks=tasks))["workflow_id"]

    async def underway() -> bool:
        return (await call(n1, "get_workflow_status", workflow_id=wid, limit=1))["completed"] >= 200

    await eventually(underway, 120, "the workflow to be under way")
    latencies: list[float] = []
    while_running = 0
    async with Client(n1.url) as client:
        # the stimulus: a control op every ~0.15 s (with its own latency) for as long as the
        # workflow runs, however fast this machine runs it
        for i in range(MAX_CALLS):
            start = trio.current_time()
            res = await client.call_tool("set_workflow_priority", {"workflow_id": wid, "priority": 1 + i % 10})
            latencies.append(trio.current_time() - start)
            assert not res.is_error, res.content
            if res.structured_content["state"] != "running":
                break
            while_running += 1
            await trio.sleep(0.05)
    final = await wait_done(n1, wid, 400)
    took = trio.current_time() - t0

    async def one_clock() -> bool:
        return len({(await call(p, "get_node_info"))["clock"]["hash"] for p in peers}) == 1

    await eventually(one_clock, 120, "every peer to hold the same clock")
    counts = run_counts(clock_ops(n1.data_dir), {wid})
    silent = {p.name: p.log_text().count("peers went silent") for p in peers}
    print(f"\nFIGURE control-load: tasks={TASKS} calls={len(latencies)} while_running={while_running} "
          f"call_latency_max={max(latencies):.3f}s mean={sum(latencies) / len(latencies):.3f}s "
          f"workflow_s={took:.1f} reclaimed={len(counts.reclaimed)} superseding_claims={counts.superseding} expired_fails={counts.expired_fails} "
          f"extra_runs={counts.extra_runs} silent_verdicts={silent}")
    assert final["state"] == "completed" and final["completed"] == TASKS
    assert while_running >= CALLS, f"only {while_running} control ops landed while the workflow ran: make it longer"
    assert len(counts.done) == TASKS
    why = "\n".join(p.liveness_lines() for p in peers)
    assert counts.superseding == 0 and counts.expired_fails == 0 and not counts.reclaimed, (
        f"{len(counts.reclaimed)} tasks claimed again, {counts.superseding} superseding claims, "
        f"{counts.expired_fails} expiries (or suspicions)\n{why}")
    assert not any(silent.values()), f"peers wrongly declared silent: {silent}\n{why}"
