"""``run_inference`` answered by a peer (issue 11 item 5) against the same call answered locally,
same run, two real ``p2p start`` processes on loopback.

``agent`` serves no model (``inference.serve = []``); ``gpu`` serves the default model. Each
round, interleaved: ``run_inference`` of one sentence on ``gpu`` (local: the baseline) and on
``agent`` (which asks ``gpu`` over ``/ipfs-accelerate/infer/1.0.0``), through each node's MCP
over streamable HTTP, as an agent calls it.

Run: ``python -m bench bench_remote_infer``. Fails loudly when an answer did not come from gpu.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench.bench_mcp import MODEL, call, pct, shared_cache_dir
from bench.bench_p2p import open_clients, start_peers, stop_all
from bench.check import require

REPS = 60


def main() -> None:
    import trio

    with tempfile.TemporaryDirectory(prefix="bench-remote-infer-") as d:
        tmp = Path(d)
        cache_dir = shared_cache_dir()
        peers = start_peers([{"name": "gpu"}, {"name": "agent", "bootstrap": 0, "IPFS_ACCELERATE_INFERENCE__SERVE": "[]"}],
                            tmp, cache_dir)
        gpu_peer, _ = peers
        times: dict[str, list[float]] = {"local": [], "remote": []}
        try:
            async def run() -> None:
                async with AsyncExitStack() as stack:
                    gpu, agent = await open_clients(stack, peers)
                    with trio.fail_after(60):
                        while not any(MODEL in p["models"] for p in (await call(agent, "list_peers"))["peers"]):
                            await trio.sleep(0.1)
                    for client in (gpu, agent, agent):  # warm both paths
                        await call(client, "run_inference", model=MODEL, inputs=["warm up"])
                    for i in range(REPS):
                        order: list[tuple[str, Any]] = [("local", gpu), ("remote", agent)]
                        for kind, client in (order if i % 2 == 0 else order[::-1]):
                            t0 = time.perf_counter()
                            out = await call(client, "run_inference", model=MODEL, inputs=[f"sentence {kind} {i}"])
                            times[kind].append(time.perf_counter() - t0)
                            require(out["peer"] == gpu_peer.peer_id and out["outputs"][0]["dim"] == 384,
                                    f"{kind} {i}: answered by {out.get('peer')}, not gpu")

            trio.run(run)
        finally:
            stop_all(peers)
    loc, rem = times["local"], times["remote"]
    require(len(loc) == len(rem) == REPS, "not every call was timed")
    print(f"run_inference of one sentence over MCP (streamable HTTP), {REPS} each, interleaved, two processes on loopback:")
    print(f"  {'path':<46} {'median ms':>10} {'p99 ms':>8}")
    print(f"  {'local: gpu serves the model (baseline)':<46} {statistics.median(loc) * 1e3:>10.1f} {pct(loc, 99) * 1e3:>8.1f}")
    print(f"  {'remote: agent asks gpu (infer protocol)':<46} {statistics.median(rem) * 1e3:>10.1f} {pct(rem, 99) * 1e3:>8.1f}")
    print(f"  ratio remote / local (medians) = {statistics.median(rem) / statistics.median(loc):.2f}x")


if __name__ == "__main__":
    main()
