"""Compaction's costs (issue 12 item 3; docs/compaction.md), on real clocks: signed events in
SQLite, the scheduler's fold, the compactor's snapshot.

For workflows of 10,000 and 25,000 tasks (inputs of a few words), a submitter's clock holds the
submit and a worker's runs (claim, start, done; 80 tasks an event). Measured, best of 3:

- the baseline: folding the whole history into a fresh scheduler, what a restart costs today;
- building the workflow's snapshot (what the submitter's compactor does, and what a peer does to
  verify one), and folding the compact op (the freeze: the workflow's view at the cut);
- the snapshot's bytes against the history's event bytes;
- the memory the compact op adds to a fold (its frozen view shares the finished tasks with the
  full records: ``TaskState.as_of``), against what the fold holds.

Dropping the history below a compaction is not built, so there is no restart-after-compaction
or join-from-snapshot figure yet (docs/compaction.md §5–§6). Fails loudly when the workflow is
not completed, the compaction does not come into force, or the snapshot is empty.
Run alone: ``.venv/bin/python -m bench.bench_compaction``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.check import require
from bench.history import finished_history

SIZES = (10_000, 25_000)
ROUNDS = 3


def _fresh_fold(clock: Any) -> float:
    """Seconds to read every event from the clock and fold it into a fresh state: what a
    restart does (a Scheduler would subscribe to the clock and fold every later event too)."""
    from p2p.scheduler.state import State, apply_event

    t = time.perf_counter()
    state = State(max_attempts=3)
    for ev in clock.events():
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
    took = time.perf_counter() - t
    require(state.events == len(clock), f"folded {state.events} of {len(clock)} events")
    return took


def measure(n: int) -> dict[str, float]:
    from p2p.compaction.snapshot import build_snapshot
    from p2p.scheduler.state import WorkflowStatus

    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as d:
        clock, sched, wid = finished_history(Path(d), n, lambda i: {"label": "x", "score": 0.5})
        state = sched.state
        require(state.workflow_status(state.workflows[wid]) is WorkflowStatus.COMPLETED,
                f"the {n}-task workflow is {state.workflow_status(state.workflows[wid]).value}, not completed")
        history_bytes = sum(len(ev.data) for ev in clock.events())
        fold_s = min(_fresh_fold(clock) for _ in range(ROUNDS))
        snap_s = float("inf")
        for _ in range(ROUNDS):
            t = time.perf_counter()
            snap = build_snapshot(state, wid, max_chunk_bytes=clock.config.max_block_bytes)
            snap_s = min(snap_s, time.perf_counter() - t)
        snap_bytes = sum(len(data) for _, data in snap.blocks())
        require(snap_bytes > 0 and len(snap.chunks) >= 1, "an empty snapshot")
        t = time.perf_counter()
        sched.compact(wid, snap.root_cid)
        freeze_s = time.perf_counter() - t
        require(state.is_compacted(wid), "the compaction did not come into force")
        require(build_snapshot(state, wid, max_chunk_bytes=clock.config.max_block_bytes).root_cid == snap.root_cid,
                "the compacted view's snapshot differs from the one named")
        freeze_bytes, state_bytes = _freeze_memory(clock, wid)
        clock.close()
    return {"fold_s": fold_s, "snapshot_s": snap_s, "freeze_s": freeze_s, "history_bytes": history_bytes,
            "snapshot_bytes": snap_bytes, "chunks": len(snap.chunks), "freeze_bytes": freeze_bytes,
            "state_bytes": state_bytes}


def _freeze_memory(clock: Any, wid: str) -> tuple[int, int]:
    """Python allocations a fresh fold holds after every event but the compact op, and what
    folding the compact op then adds (tracemalloc; a separate fold, so the timings above are
    untraced)."""
    import gc
    import tracemalloc

    from p2p.scheduler.state import State, apply_event

    events = list(clock.events())
    require(any(op.get("op") == "workflow.compact" for op in events[-1].ops), "the last event is not the compact op")
    gc.collect()
    tracemalloc.start()
    state = State(max_attempts=3)
    for ev in events:
        if ev is events[-1]:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    require(state.is_compacted(wid), "the compaction did not come into force in the traced fold")
    return after - before, before


def main() -> None:
    print("compaction of one finished workflow (real clocks, the scheduler's fold), best of "
          f"{ROUNDS}; baseline: folding its whole history (a restart today)")
    for n in SIZES:
        r = measure(n)
        print(f"  {n:>6,} tasks: history {r['history_bytes'] / 1e6:.1f} MB folded in {r['fold_s']:.2f} s; "
              f"snapshot {r['snapshot_bytes'] / 1e6:.2f} MB in {r['chunks']} chunk(s) built in {r['snapshot_s']:.2f} s "
              f"({r['snapshot_s'] / r['fold_s']:.2f}x the fold); the compact op folded (freeze) in {r['freeze_s']:.2f} s "
              f"({r['freeze_s'] / r['fold_s']:.2f}x), adding {r['freeze_bytes'] / 1e6:.1f} MB to a fold holding "
              f"{r['state_bytes'] / 1e6:.0f} MB; snapshot/history bytes {r['snapshot_bytes'] / r['history_bytes']:.2f}")
    print("  not measured (not built): restart and join after dropping the compacted history (docs/compaction.md §5-6)")


if __name__ == "__main__":
    main()
