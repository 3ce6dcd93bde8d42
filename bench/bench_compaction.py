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

- a restart after the compaction was verified and the workflow's records dropped (§5: the
  clock's ``dropped`` table is read first, then every event is read and every op about the
  workflow skipped), against the restart that folds the whole history and against opening and
  loading an empty clock; and the memory that restart's fold holds against the whole fold's.

At ``BIG`` tasks (1,000,000 by default; the issue's figure), one round each: a chunked, lazy
workflow's finished history compacted and dropped, the restart against an empty node's clock
open and load and against the whole fold.

Then the dead events are pruned (docs/compaction.md §5: their blocks give way to stubs) and the
restart measured again, with the clock's pages in use before and after. The join figure is
``bench_join``'s. Fails loudly when the workflow is not
completed, the compaction does not come into force, the snapshot is empty, or the restart after
dropping skipped nothing.
Run alone: ``.venv/bin/python -m bench.bench_compaction``.
"""

from __future__ import annotations

import os
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


def _restart(clock: Any) -> tuple[float, Any]:
    """Seconds to file the dropped workflows and fold every event into a fresh state (what
    ``Scheduler.load`` does), and that state."""
    from p2p.scheduler.dropped import Dropped
    from p2p.scheduler.state import State, apply_event

    t = time.perf_counter()
    state = State(max_attempts=3)
    for _, data in clock.dropped():
        state.restore_dropped(Dropped.decode(data))
    for ev in clock.events():
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
    return time.perf_counter() - t, state


def _traced(fn: Any) -> tuple[Any, int]:
    """(what ``fn()`` returns, the Python allocations it leaves held)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    out = fn()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return out, held


def _empty_start(root: Path) -> float:
    """Seconds to open an empty clock and load it (file, schema, writer thread, empty fold)."""
    from p2p.clock import MerkleClock
    from p2p.identity import Identity

    ident = Identity.generate()
    best = float("inf")
    for i in range(ROUNDS):
        t = time.perf_counter()
        clock = MerkleClock.open(root / f"empty{i}.sqlite", ident)
        _restart(clock)
        best = min(best, time.perf_counter() - t)
        clock.close()
    return best


def _drop(clock: Any, sched: Any, wid: str, snap: Any) -> None:
    """What the compactor does once the compaction in force is verified (it built it)."""
    from p2p.compaction.pages import dropped_from_snapshot

    gone = dropped_from_snapshot(sched.state, wid, snap)
    clock.put_dropped(wid, gone.encode())
    sched.state.drop(gone)
    clock.flush()


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
        for cid, data in snap.blocks():
            clock.add_raw_block(cid, data)
        _drop(clock, sched, wid, snap)
        restart_s = float("inf")
        for _ in range(ROUNDS):
            took, restarted = _restart(clock)
            restart_s = min(restart_s, took)
        require(wid in restarted.dropped and restarted.dropped_ops >= 3 * n, f"the restart skipped {restarted.dropped_ops} ops")
        require(not any(t.startswith(wid + "/") for t in restarted.tasks), "the restart holds tasks of the dropped workflow")
        (_, restarted), dropped_bytes = _traced(lambda: _restart(clock))
        (_, whole), whole_bytes = _traced(lambda: _restart_whole(clock))
        require(len(whole.tasks) >= n, "the whole fold holds no tasks")
        empty_s = _empty_start(Path(d))
        clock.close()
    return {"fold_s": fold_s, "snapshot_s": snap_s, "freeze_s": freeze_s, "history_bytes": history_bytes,
            "snapshot_bytes": snap_bytes, "chunks": len(snap.chunks), "freeze_bytes": freeze_bytes,
            "state_bytes": state_bytes, "restart_s": restart_s, "empty_s": empty_s, "dropped_bytes": dropped_bytes,
            "whole_bytes": whole_bytes}


def measure_restart(n: int) -> dict[str, float]:
    """The issue's restart figure at full size: a node holding an ``n``-task finished history
    (a chunked, lazy workflow, as a file submit makes), compacted and its records dropped, then
    restarted (one round each: at a million tasks the whole fold takes minutes)."""
    from p2p.compaction.snapshot import build_snapshot
    from p2p.scheduler.state import WorkflowStatus

    with tempfile.TemporaryDirectory(prefix="bench-compaction-big-") as d:
        t = time.perf_counter()
        clock, sched, wid = finished_history(Path(d), n, lambda i: {"label": "x", "score": 0.5}, chunked=True)
        build_s = time.perf_counter() - t
        state = sched.state
        require(state.workflows[wid].lazy and state.workflow_status(state.workflows[wid]) is WorkflowStatus.COMPLETED,
                f"the {n}-task workflow is {state.workflow_status(state.workflows[wid]).value}, not completed")
        t = time.perf_counter()
        snap = build_snapshot(state, wid, max_chunk_bytes=clock.config.max_block_bytes)
        snap_s = time.perf_counter() - t
        sched.compact(wid, snap.root_cid)
        require(state.is_compacted(wid), "the compaction did not come into force")
        for cid, data in snap.blocks():
            clock.add_raw_block(cid, data)
        _drop(clock, sched, wid, snap)
        events, db = len(clock), clock.db_bytes()
        restart_s, restarted = _restart(clock)
        require(wid in restarted.dropped and restarted.dropped_ops >= 3 * n, f"the restart skipped {restarted.dropped_ops} ops")
        del restarted
        whole_s, whole = _restart_whole(clock)
        require(len(whole.tasks) >= n, "the whole fold holds no tasks")
        del whole
        used = _used_bytes(clock)
        pruned = _prune(clock, sched)
        pruned_s, restarted = _restart(clock)
        require(wid in restarted.dropped and restarted.events == len(clock) and clock.pruned_count() == pruned,
                f"the restart after pruning folded {restarted.events} of {len(clock)} events")
        del restarted
        pruned_used = _used_bytes(clock)
        empty_s = _empty_start(Path(d))
        clock.close()
    return {"build_s": build_s, "snapshot_s": snap_s, "chunks": len(snap.chunks), "events": events, "db": db,
            "restart_s": restart_s, "whole_s": whole_s, "empty_s": empty_s, "pruned": pruned, "pruned_s": pruned_s,
            "used": used, "pruned_used": pruned_used}


def _prune(clock: Any, sched: Any) -> int:
    """What the pruner does once the records are dropped (no other live peer to wait for)."""
    import trio

    from p2p.compaction.pruner import Pruner

    clock.append([{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}])  # the compact op is no longer a head
    n = trio.run(Pruner(sched, clock, clock.peer_id, live_peers=list).step)
    require(n > 0, "nothing was pruned")
    clock.flush()
    return n


def _used_bytes(clock: Any) -> int:
    """Bytes of the clock file's pages in use (pruning frees pages that later writes reuse; the
    file does not shrink without a VACUUM)."""
    clock.flush()
    db = clock._store.db
    pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    return (pages - free) * size


def _restart_whole(clock: Any) -> tuple[float, Any]:
    """``_restart`` without the dropped table: the whole history folded (before §5)."""
    from p2p.scheduler.state import State, apply_event

    t = time.perf_counter()
    state = State(max_attempts=3)
    for ev in clock.events():
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
    return time.perf_counter() - t, state


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
        print(f"          restart after the records were dropped: {r['restart_s']:.2f} s = {r['restart_s'] / r['fold_s']:.2f}x "
              f"the whole fold, {r['restart_s'] / r['empty_s']:.0f}x an empty clock's open and load "
              f"({r['empty_s'] * 1e3:.1f} ms); its fold holds {r['dropped_bytes'] / 1e6:.1f} MB against "
              f"{r['whole_bytes'] / 1e6:.0f} MB ({r['dropped_bytes'] / r['whole_bytes']:.3f}x)")
    big = int(os.environ.get("BIG", 1_000_000))
    r = measure_restart(big)
    print(f"  {big:>6,} tasks (a chunked file-sized workflow, lazy records): history of {r['events']:,} events, "
          f"{r['db'] / 1e6:.0f} MB, built in {r['build_s']:.0f} s; snapshot in {r['chunks']} chunks built in "
          f"{r['snapshot_s']:.1f} s")
    print(f"          restart after the records were dropped: {r['restart_s']:.2f} s = {r['restart_s'] / r['empty_s']:.0f}x "
          f"an empty node's clock open and load ({r['empty_s'] * 1e3:.1f} ms), {r['restart_s'] / r['whole_s']:.3f}x "
          f"the whole fold ({r['whole_s']:.1f} s)")
    print(f"          pruned: {r['pruned']:,} of {r['events']:,} events replaced by stubs; the clock's pages in use "
          f"{r['used'] / 1e6:.0f} MB -> {r['pruned_used'] / 1e6:.1f} MB ({r['pruned_used'] / r['used']:.4f}x); restart "
          f"after pruning {r['pruned_s']:.3f} s = {r['pruned_s'] / r['empty_s']:.0f}x an empty node's, "
          f"{r['pruned_s'] / r['restart_s']:.3f}x the restart before pruning")


if __name__ == "__main__":
    main()
