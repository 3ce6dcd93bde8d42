"""A finished workflow's history on real clocks, for the benchmarks that need one (compaction,
export): signed events in SQLite, folded by the scheduler, without running inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

PER_EVENT = 80  # tasks a worker's event runs (claim, start, done each)


def finished_history(root: Path, n: int, result_for: Callable[[int], dict[str, Any]], *,
                     chunked: bool = False) -> tuple[Any, Any, str]:
    """A submitter's clock (``root/a.sqlite``) and scheduler holding a completed ``n``-task
    workflow, every task run by another peer whose clock is merged in; task ``i``'s result is
    ``result_for(i)`` in clock form. ``chunked``: the inputs in content-addressed chunks (a lazy
    workflow, as a file submit of over 64 KiB of inputs makes; up to 1,000,000 tasks).
    Returns (clock, scheduler, workflow id)."""
    from p2p.clock import MerkleClock
    from p2p.config import SchedulerConfig
    from p2p.identity import Identity
    from p2p.peers import PeerCaps, PeerTable
    from p2p.scheduler.ops import TaskSpec, WorkflowTag
    from p2p.scheduler.scheduler import Scheduler

    a_id, b_id = Identity.generate(), Identity.generate()
    a = MerkleClock.open(root / "a.sqlite", a_id)
    b = MerkleClock.open(root / "b.sqlite", b_id)
    me = PeerCaps(a_id.peer_id_str, 1.0, frozenset(["m"]))
    sched = Scheduler(a, engine=None, peers=PeerTable(lambda: me, lease_s=30), config=SchedulerConfig(  # type: ignore[arg-type]
        max_tasks_per_workflow=n))
    if chunked:
        from p2p.content.inputs import chunk_block, pack_inputs

        chunks = [(a.put_block(chunk_block(g), durable=False), len(g))
                  for g in pack_inputs([f"doc {i} few words" for i in range(n)])]
        wid = sched.submit_chunks("bench", TaskSpec(model="m", task="embedding", input="-"), chunks, 5,
                                  WorkflowTag.P2P_ELIGIBLE)
    else:
        wid = sched.submit("bench", [TaskSpec(model="m", task="embedding", input=f"doc {i} few words") for i in range(n)],
                           5, WorkflowTag.P2P_ELIGIBLE)
    b.add_blocks([(ev.cid, ev.data) for ev in a.events()])
    b.append([{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}])
    for k in range(0, n, PER_EVENT):
        ops: list[dict[str, Any]] = []
        for i in range(k, min(n, k + PER_EVENT)):
            tid = f"{wid}/{i}"
            ops += [{"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": 1.0},
                    {"op": "task.start", "task_id": tid, "attempt": 1},
                    {"op": "task.done", "task_id": tid, "attempt": 1, "result": result_for(i)}]
        b.append(ops, durable=False)
    a.add_blocks([(ev.cid, ev.data) for ev in b.events()])
    b.close()
    return a, sched, wid
