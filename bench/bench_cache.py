"""The result cache (issue 10 item 3): a workflow where half the inputs repeat earlier ones,
timed against the same workflow with ``cache: false``, in the same run, networking on.

Two real ``p2p start`` processes on loopback (TCP, Noise, yamux, one private-network key, the
default model), driven over MCP. Each round uses fresh sentences (so nothing is cached before
the round starts) and times, interleaved:

- off: N tasks (N/2 distinct sentences, then N/2 repeating them), ``cache: false``, on A;
- on: the same shape with other sentences, ``cache: true``, on A: the repeats are waited for
  and answered from the cache (they run once);
- repeat: the cache-on workflow submitted again on A: every task from A's cache;
- remote: that workflow submitted on B (local-only, B never ran it): every task from A's
  cache over ``/ipfs-accelerate/cache/1.0.0``.

Figures: median wall time per workflow (submit to completed) and its ratio to ``off``. The
goal the issue implies: ``on`` near half of ``off`` (half the inferences). Fails loudly when
the cache answered nothing, answered a repeat wrongly, or missed a repeat.
Run: python -m bench.bench_cache
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

N_TASKS = 128  # per workflow: half distinct, half repeats
ROUNDS = 3


def _shape(seed: int) -> list[str]:
    half = sentences(N_TASKS // 2, seed)
    return half + [half[(7 * i) % len(half)] for i in range(len(half))]  # every repeat follows its original


async def _timed(client: Any, texts: list[str], name: str, *, cache: bool, tag: str = "local-only") -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    sub = await call(client, "submit_workflow", name=name, tasks=tasks_of(texts), tag=tag, cache=cache)
    st = await call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=600)
    elapsed = time.perf_counter() - t0
    require(st["state"] == "completed" and st["completed"] == len(texts), f"{name}: ended {st['state']} ({st['completed']}/{len(texts)})")
    tasks, _ = await read_all(client, sub["workflow_id"], len(texts), True)
    return elapsed, tasks


def _cached(tasks: list[dict[str, Any]]) -> int:
    return sum(1 for t in tasks if t.get("cached"))


async def _index_caught_up(tmp: Path) -> None:
    """Until B's key index of A's cache holds every entry A has written (B asks A only for keys
    its index holds; A advertises new entries with its next heartbeat, B follows within a second)."""
    import trio

    from p2p.control import call as control

    with trio.fail_after(60):
        while True:
            a_info = (await trio.to_thread.run_sync(control, tmp / "a", {"cmd": "info"}))["info"]["cache"]
            b_info = (await trio.to_thread.run_sync(control, tmp / "b", {"cmd": "info"}))["info"]["cache"]
            if a_info["staged"] == 0 and b_info["index_prefixes"] >= a_info["entries"]:
                return
            await trio.sleep(0.1)


def main() -> None:
    import trio

    from p2p.net.psk import generate_swarm_key

    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    key = tmp / "swarm.key"
    generate_swarm_key(key)
    cache_dir = shared_cache_dir()
    on = {"IPFS_ACCELERATE_NETWORK__PSK_FILE": str(key), "IPFS_ACCELERATE_CACHE__ENABLED": "true"}  # off by default
    peers = start_peers([{"name": "a", **on}, {"name": "b", "bootstrap": 0, **on}], tmp, cache_dir)
    times: dict[str, list[float]] = {"off": [], "on": [], "repeat": [], "remote": []}
    try:
        async def run() -> None:
            async with AsyncExitStack() as stack:
                a, b = await open_clients(stack, peers)
                await wait_peers_see([a, b], 1)
                await _timed(a, sentences(8, 999), "warm-a", cache=False)
                await _timed(b, sentences(8, 998), "warm-b", cache=False)
                for r in range(ROUNDS):
                    off_texts, on_texts = _shape(100 + r), _shape(200 + r)
                    order = ("off", "on") if r % 2 == 0 else ("on", "off")
                    for kind in order:
                        texts = off_texts if kind == "off" else on_texts
                        t, tasks = await _timed(a, texts, f"{kind}-{r}", cache=kind == "on")
                        times[kind].append(t)
                        if kind == "off":
                            require(_cached(tasks) == 0, f"off-{r}: {_cached(tasks)} tasks cached with cache: false")
                        else:
                            on_tasks = tasks
                            require(_cached(tasks) == N_TASKS // 2,
                                    f"on-{r}: {_cached(tasks)} of {N_TASKS // 2} repeats answered from the cache")
                    first = {}
                    for text, task in zip(on_texts, on_tasks):
                        first.setdefault(text, task)
                    for text, task in zip(on_texts, on_tasks):
                        require(task["result"] == first[text]["result"], f"on-{r}: a repeat's result differs from its original")
                    t, tasks = await _timed(a, on_texts, f"repeat-{r}", cache=True)
                    times["repeat"].append(t)
                    require(_cached(tasks) == N_TASKS, f"repeat-{r}: {_cached(tasks)} of {N_TASKS} from the cache")
                    await _index_caught_up(tmp)
                    t, tasks = await _timed(b, on_texts, f"remote-{r}", cache=True)
                    times["remote"].append(t)
                    if _cached(tasks) != N_TASKS:
                        from p2p.control import call as control

                        print("  B's cache:", control(tmp / "b", {"cmd": "info"})["info"]["cache"], flush=True)
                    require(_cached(tasks) == N_TASKS, f"remote-{r}: {_cached(tasks)} of {N_TASKS} from A's cache")
                    require(all(x["result"] == y["result"] for x, y in zip(on_tasks, tasks)),
                            f"remote-{r}: results from A's cache differ from A's")

        trio.run(run)
    finally:
        stop_all(peers)
    off = statistics.median(times["off"])
    print(f"  {N_TASKS} tasks per workflow ({N_TASKS // 2} distinct + {N_TASKS // 2} repeats), median of {ROUNDS} rounds, 2 peers, networking on")
    print(f"  {'workflow':<58} {'median s':>9} {'/ off':>7}")
    rows = [("off: cache: false (every task runs)", "off"),
            ("on: half repeat earlier inputs (repeats from the cache)", "on"),
            ("repeat: the same workflow again on A (all from A's cache)", "repeat"),
            ("remote: the same workflow on B (all from A's cache)", "remote")]
    for label, k in rows:
        med = statistics.median(times[k])
        print(f"  {label:<58} {med:>9.3f} {med / off:>6.2f}x   (all: {', '.join(f'{x:.2f}' for x in times[k])})")
    print(f"  goal (implied): on <= ~0.5x off + overhead: {statistics.median(times['on']) / off:.2f}x")


if __name__ == "__main__":
    main()
