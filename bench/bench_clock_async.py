"""The clock off the event loop: loop lag while catching up and serving, and group commit.

Run: ``.venv/bin/python -m bench.bench_clock_async`` (or through ``bench/__main__.py``).

Each figure is measured twice, the old way (the work done on the trio thread: sync
``add_blocks``, the BFS of ``collect_blocks_sync``, sequential fsynced ``append``) and the new
way (``add_blocks_async``, ``collect_blocks``, concurrent ``append_async``), while a probe task
sleeps 5 ms in a loop and records how late it wakes: the loop lag a heartbeat would suffer.
The sending peer's events are built here, then frozen out of the GC (``gc.freeze``): in real
life they live in another process.
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench.check import require, require_count
from p2p.clock import Event, MerkleClock, create_event
from p2p.clock.cids import cid_raw
from p2p.identity import Identity

N_EVENTS = 20_000
N_SUBMITS = 200
CATCH_UP_REPLY = 2000  # blocks per reply, as a catch-up delivers them


def _dag(n: int, a: Identity, b: Identity) -> list[Event]:
    """Two authors on one chain, alternating (parents first)."""
    out: list[Event] = []
    parents: list[Any] = []
    seqs = [0, 0]
    for i in range(n):
        seqs[i % 2] += 1
        ev = create_event((a, b)[i % 2], parents, seqs[i % 2],
                          [{"op": "task.done", "task_id": f"wf/t-{i:06d}", "attempt": 1,
                            "result": b"\x07" * 64}])
        out.append(ev)
        parents = [ev.cid]
    return out


async def _lag(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float]:
    """(result, seconds, max loop lag in seconds) of ``work()`` with a 5 ms probe running."""
    lags: list[float] = []
    done = trio.Event()

    asleep = trio.Event()

    async def probe() -> None:
        while not done.is_set():  # the sleep that spans the end of the work is counted too
            t = time.perf_counter()
            asleep.set()
            await trio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    out: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await asleep.wait()  # the probe is asleep before the work starts
        t0 = time.perf_counter()
        out.append(await work())
        elapsed = time.perf_counter() - t0
        done.set()
    return out[0], elapsed, max(lags, default=0.0)


async def _run(tmp: Path) -> None:
    me, a, b = Identity.generate(), Identity.generate(), Identity.generate()
    dag = _dag(N_EVENTS, a, b)
    blocks = [(e.cid, e.data) for e in reversed(dag)]  # children first, as a BFS from the head
    gc.collect()
    gc.freeze()
    print(f"== bench_clock_async: {N_EVENTS} events caught up children first "
          f"({CATCH_UP_REPLY} per reply), served back, {N_SUBMITS} durable submits ==")

    for label, asynchronous in (("on the loop (add_blocks)", False), ("off the loop (add_blocks_async)", True)):
        clock = MerkleClock.open(tmp / f"merge-{asynchronous}.db", me)

        async def merge(clock: MerkleClock = clock, asynchronous: bool = asynchronous) -> int:
            n = 0
            for i in range(0, len(blocks), CATCH_UP_REPLY):
                part = blocks[i:i + CATCH_UP_REPLY]
                res = await clock.add_blocks_async(part) if asynchronous else clock.add_blocks(part)
                n += len(res.applied)
                await trio.lowlevel.checkpoint()
            return n

        applied, secs, lag = await _lag(merge)
        require_count(applied, N_EVENTS, f"catch-up {label}: events applied")
        require(clock.heads() == (dag[-1].cid,), f"catch-up {label}: wrong heads")
        print(f"catch-up {label:<32} {secs:6.1f} s, max loop lag {lag * 1000:8.1f} ms")

        heads = [cid_raw(h) for h in clock.heads()]
        if asynchronous:
            async def serve() -> list[tuple[bytes, bytes]]:
                return await clock.collect_blocks(heads, N_EVENTS, N_EVENTS, 1 << 30)
        else:
            async def serve() -> list[tuple[bytes, bytes]]:
                return clock.collect_blocks_sync(heads, N_EVENTS, N_EVENTS, 1 << 30)
        served, secs, lag = await _lag(serve)
        require_count(len(served), N_EVENTS, f"serving {label}: blocks collected")
        name = "collect_blocks" if asynchronous else "the same BFS on the loop"
        print(f"serve    {name:<32} {secs:6.1f} s, max loop lag {lag * 1000:8.1f} ms")
        clock.close()

    clock = MerkleClock.open(tmp / "submits.db", me)

    async def sequential() -> int:
        for i in range(N_SUBMITS):
            clock.append([{"op": "workflow.submit", "i": i}], durable=True)
        return N_SUBMITS

    _, secs, lag = await _lag(sequential)
    before = clock._writer.batches
    print(f"submits  append(durable) one by one        {N_SUBMITS / secs:6.0f}/s, "
          f"max loop lag {lag * 1000:8.1f} ms")

    async def concurrent() -> int:
        async with trio.open_nursery() as nursery:
            for i in range(N_SUBMITS):
                nursery.start_soon(clock.append_async, [{"op": "workflow.submit", "j": i}])
        return N_SUBMITS

    _, secs, lag = await _lag(concurrent)
    commits = clock._writer.batches - before
    require_count(len(clock), 2 * N_SUBMITS, "submits: events stored")
    require(commits > 0, "submits: nothing was committed")
    print(f"submits  append_async(durable) concurrent  {N_SUBMITS / secs:6.0f}/s, "
          f"max loop lag {lag * 1000:8.1f} ms, {commits} fsynced commits for {N_SUBMITS} events")
    clock.close()
    gc.unfreeze()


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        trio.run(_run, Path(d))


if __name__ == "__main__":
    main()
