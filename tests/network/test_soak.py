"""Soak (issue 7 item 6): four nodes, 3,000 tasks in six workflows submitted in two waves from
three nodes, one worker killed with SIGKILL and restarted twice during the first wave.
Pass: no task lost (every task of every workflow has a result in the clock and every workflow
completed), no node died unplanned, and each node's RSS after the second wave is within 20% of
its RSS after the first (memory does not grow with work already done); so is its largest
inference worker's (the pool, on by default, holds the model there)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

from tests.cluster import (Cluster, Peer, call, children_rss_kib, clock_ops, eventually, rss_kib, run_counts, wait_all_peers, wait_done,
                           wait_known, wait_peers)
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PER_WORKFLOW = 500




def _tasks(tag: str) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"soak {tag} sentence {i} about a long night."} for i in range(PER_WORKFLOW)]


async def _submit_wave(submitters: list[Peer], wave: int) -> list[str]:
    return [(await call(p, "submit_workflow", name=f"soak-{wave}-{p.name}", tasks=_tasks(f"{wave}{p.name}")))["workflow_id"]
            for p in submitters]


async def _completed(peer: Peer, wids: list[str]) -> int:
    return sum([(await call(peer, "get_workflow_status", workflow_id=w, limit=1))["completed"] for w in wids])


async def _settled_rss(peers: list[Peer], window_s: float = 7.0) -> tuple[dict[str, int], dict[str, int]]:
    """Each node's RSS and its largest inference worker's (the pool, on by default, holds the
    model and the runtime's buffers there), in KiB: the least seen over ``window_s``. A node
    gives freed heap back every 5 s (inference.memory.Trimmer), so one sample just after a
    burst reads memory already freed and not yet returned (it varied 0-34 % run to run)."""
    node: dict[str, int] = {}
    worker: dict[str, int] = {}
    end = trio.current_time() + window_s
    while trio.current_time() < end:
        for p in peers:
            if p.proc is None:
                continue
            node[p.name] = min(node.get(p.name, 1 << 62), rss_kib(p.proc.pid))
            worker[p.name] = min(worker.get(p.name, 1 << 62), max(children_rss_kib(p.proc.pid), default=0))
        await trio.sleep(0.5)
    return node, worker


async def _one_clock(peers: list[Peer]) -> bool:
    return len({(await call(p, "get_node_info"))["clock"]["hash"] for p in peers}) == 1


async def test_soak_with_two_kill_9_restarts(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    n2 = cluster.start("n2", bootstrap=[n1])
    n3 = cluster.start("n3", bootstrap=[n1])
    n4 = cluster.start("n4", bootstrap=[n1, n2])
    peers = [n1, n2, n3, n4]
    await wait_all_peers(peers)

    wave1 = await _submit_wave([n1, n2, n3], 1)
    await wait_known(n1, wave1)
    total1 = PER_WORKFLOW * len(wave1)
    for threshold in (total1 // 5, total1 // 2):
        async def reached(t: int = threshold) -> bool:
            return await _completed(n1, wave1) >= t

        await eventually(reached, 300, f"{threshold} tasks of the first wave done")
        cluster.pin_port(n4)
        assert cluster.kill(n4, signal.SIGKILL) == -signal.SIGKILL
        n4 = cluster.start("n4")
    for w in wave1:
        await wait_done(n1, w, 400)
    await wait_peers(n1, [n4])
    # the middle is measured once every node is warm: the restarted n4 has loaded the model in
    # its inference worker, run work since its restart and caught up on the first wave, like
    # the others (measured straight after the restart, its worker held 80 MB without the model)
    for p in peers:
        wid = (await call(p, "submit_workflow", name=f"warm-{p.name}", tag="local-only",
                          tasks=[{"model": DEFAULT_MODEL, "input": f"warm {p.name} {i}"} for i in range(64)]))["workflow_id"]
        await wait_done(p, wid, 300)
    await eventually(lambda: _one_clock(peers), 120, "every node to hold the same clock before the middle")
    mid, mid_w = await _settled_rss(peers)
    print(f"\nFIGURE soak: rss_mid_kib={mid} largest_worker_mid_kib={mid_w}")

    wave2 = await _submit_wave([n1, n2, n3], 2)
    for w in wave2:
        await wait_done(n1, w, 400)
    wids = wave1 + wave2

    await eventually(lambda: _one_clock(peers), 120, "every node to hold the same clock")
    end, end_w = await _settled_rss(peers)
    growth_w = {k: round((end_w[k] - mid_w[k]) / mid_w[k] * 100, 1) for k in mid_w if mid_w[k] and end_w.get(k)}
    alive = {p.name: p.proc is not None and p.proc.poll() is None for p in peers}
    counts = run_counts(clock_ops(n1.data_dir), set(wids))
    growth = {k: round((end[k] - mid[k]) / mid[k] * 100, 1) for k in mid}
    print(f"\nFIGURE soak: tasks={len(wids) * PER_WORKFLOW} rss_mid_kib={mid} rss_end_kib={end} growth_pct={growth} "
          f"largest_worker_end_kib={end_w} worker_growth_pct={growth_w} extra_runs={counts.extra_runs} superseding_claims={counts.superseding} alive={alive}")
    assert all(alive.values()), f"a node died unplanned: {alive}"
    for w in wids:
        st = await call(n4, "get_workflow_status", workflow_id=w, limit=1)
        assert st["state"] == "completed" and st["completed"] == PER_WORKFLOW, st
    assert len(counts.done) == len(wids) * PER_WORKFLOW, "a task has no result in the clock"
    assert all(abs(g) <= 20 for g in growth.values()), f"RSS moved more than 20% across the second wave: {growth}"
    assert all(g <= 20 for g in growth_w.values()), f"a node's largest worker grew more than 20% across the second wave: {growth_w}"
