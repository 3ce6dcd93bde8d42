"""The cost of replicated verification (issue 8 item 4): the same workflow with ``replicas=2``
against ``replicas=1``, in the same run, on the path a user takes.

Three real ``p2p start`` processes on loopback (TCP, Noise, yamux, one private-network key, the
default model), driven over MCP from the first: submit, ``wait_for_workflow``, then every result
read back. Rounds alternate which goes first; each workflow has fresh sentences and
``cache: false``, so every task (every replica) runs inference. Figures: median wall time per
workflow (submit to completed), throughput in tasks/s and the ratio replicas=2 / replicas=1
(about 0.5 is the price of running everything twice; less means the agreement machinery costs
on top). Fails loudly when a workflow does not complete, when a replicated task was not agreed
by two distinct peers, or when a replica's result differs from the single run's.
Run: python -m bench.bench_replicas
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.bench_mcp import call, read_all, sentences, shared_cache_dir, tasks_of  # noqa: E402
from bench.bench_p2p import open_clients, start_peers, stop_all, wait_peers_see  # noqa: E402
from bench.check import require  # noqa: E402

N_TASKS = 192
ROUNDS = 3


async def _timed(client: Any, texts: list[str], name: str, replicas: int) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    sub = await call(client, "submit_workflow", name=name, tasks=tasks_of(texts), replicas=replicas, cache=False)
    st = await call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=900)
    elapsed = time.perf_counter() - t0
    require(st["state"] == "completed" and st["completed"] == len(texts), f"{name}: ended {st['state']} ({st['completed']}/{len(texts)})")
    tasks, _ = await read_all(client, sub["workflow_id"], len(texts), True)
    return elapsed, tasks


def main() -> None:
    import numpy as np
    import trio

    from p2p.net.psk import generate_swarm_key

    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    key = tmp / "swarm.key"
    generate_swarm_key(key)
    env = {"IPFS_ACCELERATE_NETWORK__PSK_FILE": str(key)}
    peers = start_peers([{"name": "a", **env}, {"name": "b", "bootstrap": 0, **env}, {"name": "c", "bootstrap": 0, **env}],
                        tmp, shared_cache_dir())
    times: dict[int, list[float]] = {1: [], 2: []}
    try:
        async def run() -> None:
            async with AsyncExitStack() as stack:
                clients = await open_clients(stack, peers)
                await wait_peers_see(clients, 2)
                a = clients[0]
                await _timed(a, sentences(12, 990), "warm", 1)
                for r in range(ROUNDS):
                    texts = sentences(N_TASKS, 300 + r)
                    single: list[dict[str, Any]] = []
                    for replicas in ((1, 2) if r % 2 == 0 else (2, 1)):
                        t, tasks = await _timed(a, texts, f"r{replicas}-{r}", replicas)  # cache off: both run
                        times[replicas].append(t)
                        if replicas == 2:
                            bad = [x["task_id"] for x in tasks if len(set(x.get("peers", []))) != 2 or x.get("disputed_by")]
                            require(not bad, f"r2-{r}: {len(bad)} tasks not agreed by two distinct peers, e.g. {bad[:3]}")
                            doubled = tasks
                        else:
                            single = tasks
                    one = np.array([x["result"]["embedding"] for x in single], dtype=np.float32)
                    two = np.array([x["result"]["embedding"] for x in doubled], dtype=np.float32)
                    require(one.shape == two.shape and np.isfinite(one).all(), f"round {r}: results missing")
                    cos = (one * two).sum(axis=1) / np.linalg.norm(one, axis=1) / np.linalg.norm(two, axis=1)
                    require(float(cos.min()) > 0.99, f"round {r}: replicated results differ from single ones (min cos {cos.min():.4f})")

        trio.run(run)
    finally:
        stop_all(peers)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"  {N_TASKS} tasks per workflow, 3 peers, networking on, cache off, median of {ROUNDS} rounds")
    print(f"  replicas=1: {one:.2f} s ({N_TASKS / one:.1f} tasks/s)   all: {', '.join(f'{x:.2f}' for x in times[1])}")
    print(f"  replicas=2: {two:.2f} s ({N_TASKS / two:.1f} tasks/s)   all: {', '.join(f'{x:.2f}' for x in times[2])}")
    print(f"  throughput ratio replicas=2 / replicas=1 = {one / two:.2f} (0.5 is the price of running every task twice)")


if __name__ == "__main__":
    main()
