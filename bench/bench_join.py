"""A fresh peer joining after compaction (issue 12), against a raw transfer of the snapshot's bytes.

Real processes, the path a user takes: a node (``p2p start``, networking on, the network key)
holds the finished history of a ``JOIN_N``-task workflow (100,000 by default; a chunked, lazy
workflow as a file submit makes, every task run by another peer), built on real clocks
(``bench.history``). In one copy of that node the workflow is compacted, its records dropped and
its dead events pruned (docs/compaction.md §5): stubs where the blocks were. A fresh node is
started without peers; once its MCP endpoint answers, the clock starts and an agent calls
``connect_peer`` with the old node's address, then polls ``get_node_info`` every 20 ms until
the fresh node holds every event (stubs included) and has adopted the compacted workflow.
Its status pages and listing are then checked equal to the old node's.

Baselines, in the same run:

- **raw**: the snapshot's blocks (root and chunks), as files, copied over one libp2p stream
  between two processes with the same transport (``bench.bench_pull``'s raw copy: TCP, Noise,
  yamux, the network key), best of 3 — the floor any join that ships the snapshot pays;
- **whole**: the same fresh node joining the copy that was never compacted (every event's
  block fetched, verified and folded): what a join cost before pruning.

Fails loudly when the join does not complete, adopts nothing, or answers differently.
Run alone: ``python -m bench bench_join``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench.check import BenchError, require

N = int(os.environ.get("JOIN_N", 100_000))
ROUNDS = 3
POLL_S = 0.02


def _backup(src: Path, dst_dir: Path) -> None:
    """A consistent copy of a clock file into a node's data folder (SQLite's backup API)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(str(src)) as a, sqlite3.connect(str(dst_dir / "clock.sqlite")) as b:
        a.backup(b)


def _used_bytes(path: Path) -> int:
    """Bytes of a SQLite file's pages in use (pages a prune freed are reused by later writes;
    the file itself does not shrink without a VACUUM)."""
    with sqlite3.connect(str(path)) as db:
        pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    return (pages - free) * size


def prepare(root: Path, n: int) -> dict[str, Any]:
    """The two data folders (whole, pruned) and the snapshot's blocks as files."""
    from bench.history import finished_history
    from p2p.compaction.pages import dropped_from_snapshot
    from p2p.compaction.pruner import Pruner
    from p2p.compaction.snapshot import build_snapshot

    t = time.perf_counter()
    clock, sched, wid = finished_history(root / "build", n, lambda i: {"label": "x", "score": 0.5}, chunked=True)
    clock.flush()
    _backup(root / "build" / "a.sqlite", root / "peers" / "whole")
    whole_db = _used_bytes(root / "peers" / "whole" / "clock.sqlite")
    snap = build_snapshot(sched.state, wid, max_chunk_bytes=clock.config.max_block_bytes)
    sched.compact(wid, snap.root_cid)
    require(sched.state.is_compacted(wid), "the compaction did not come into force")
    for cid, data in snap.blocks():
        clock.add_raw_block(cid, data)
    gone = dropped_from_snapshot(sched.state, wid, snap)
    clock.put_dropped(wid, gone.encode())
    sched.state.drop(gone)
    clock.append([{"op": "peer.advertise", "capacity": 1.0, "models": ["m"]}])  # the compact op is a head no longer
    pruned = trio.run(Pruner(sched, clock, clock.peer_id, live_peers=list).step)
    require(pruned > 0, "nothing was pruned")
    clock.flush()
    events, stubs = len(clock), clock.pruned_count()
    _backup(root / "build" / "a.sqlite", root / "peers" / "pruned")
    pruned_db = _used_bytes(root / "peers" / "pruned" / "clock.sqlite")
    snap_dir = root / "snapshot"
    snap_dir.mkdir()
    snap_bytes = 0
    for i, (_, data) in enumerate(snap.blocks()):
        (snap_dir / f"{i:05d}").write_bytes(data)
        snap_bytes += len(data)
    clock.close()
    return {"wid": wid, "events": events, "stubs": stubs, "snapshot_bytes": snap_bytes, "chunks": len(snap.chunks),
            "snap_dir": snap_dir, "build_s": time.perf_counter() - t, "whole_db": whole_db, "pruned_db": pruned_db}


async def _raw_rounds(addr: str, key_file: Path, work: Path, want: int) -> float:
    from bench.bench_pull import _net_config, _raw_copy
    from p2p.identity import Identity
    from p2p.net import load_swarm_key, open_host

    ident = Identity.load_or_create(work / "raw-id")
    best = float("inf")
    async with open_host(ident.key_pair, _net_config(), load_swarm_key(key_file)) as net:
        peer = await net.connect(addr)
        for _ in range(ROUNDS):
            t = time.perf_counter()
            got = await _raw_copy(net, peer)
            best = min(best, time.perf_counter() - t)
            require(got == want, f"the raw copy moved {got} of {want} bytes")
    return best


def raw_copy(snap_dir: Path, key_file: Path, work: Path, want: int) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_pull", "--serve", str(snap_dir), str(key_file)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise BenchError("the raw serving process exited before listening")
            if line.startswith(b'{"addr"'):
                break
        return trio.run(_raw_rounds, json.loads(line)["addr"], key_file, work, want)
    finally:
        proc.kill()
        proc.wait()


async def _join(old_url: str, new_url: str, old_addr: str, wid: str, pruned: bool) -> dict[str, Any]:
    from mcp import Client

    from bench.bench_mcp import call

    async with AsyncExitStack() as stack:
        old = await stack.enter_async_context(Client(old_url, read_timeout_seconds=600))
        new = await stack.enter_async_context(Client(new_url, read_timeout_seconds=600))
        want = (await call(old, "get_node_info"))["clock"]["events"]
        t = time.perf_counter()
        await call(new, "connect_peer", multiaddr=old_addr)
        info: dict[str, Any] = {}
        with trio.move_on_after(900):
            while True:
                info = await call(new, "get_node_info")
                done = info["clock"]["events"] >= want
                if pruned:
                    done = done and (info["compaction"].get("joined") or {}).get("adopted", 0) >= 1
                if done:
                    break
                await trio.sleep(POLL_S)
        took = time.perf_counter() - t
        require(info["clock"]["events"] >= want, f"the join did not complete: {info['clock']['events']} of {want} events")
        for offset in (0, N // 2, N - 3):
            a = await call(old, "get_workflow_status", workflow_id=wid, include_results=True, offset=offset, limit=3)
            b = await call(new, "get_workflow_status", workflow_id=wid, include_results=True, offset=offset, limit=3)
            require(a == b and len(a["tasks"]) == 3, f"the joined node answers differently at offset {offset}")
        require(await call(old, "list_workflows") == await call(new, "list_workflows"), "the listings differ")
        comp = info["compaction"]
        return {"s": took, "events": want, "stubs_held": comp.get("stubs_held", 0),
                "adopted": (comp.get("joined") or {}).get("adopted", 0)}


def join(root: Path, cache_dir: Path, which: str, wid: str) -> dict[str, Any]:
    from bench.bench_p2p import start_peers, stop_all

    peers = start_peers([{"name": which, "IPFS_ACCELERATE_CLOCK__COMPACT": "false"},
                         {"name": f"fresh-{which}"}], root / "peers", cache_dir)
    try:
        old, new = peers
        return trio.run(_join, old.url, new.url, old.addr, wid, which == "pruned")
    finally:
        stop_all(peers)


def main() -> None:
    from bench.bench_mcp import shared_cache_dir
    from p2p.net.psk import generate_swarm_key

    with tempfile.TemporaryDirectory(prefix="bench-join-") as d:
        root = Path(d)
        (root / "peers").mkdir()
        generate_swarm_key(root / "peers" / "swarm.key")
        h = prepare(root, N)
        print(f"a {N:,}-task finished workflow (chunked inputs, lazy records): {h['events']:,} events, built in "
              f"{h['build_s']:.0f} s; compacted, dropped and pruned: {h['stubs']:,} events are stubs; snapshot "
              f"{h['snapshot_bytes'] / 1e6:.1f} MB in {h['chunks']} chunks; the clock's pages in use: "
              f"{h['whole_db'] / 1e6:.1f} MB whole, {h['pruned_db'] / 1e6:.1f} MB pruned "
              f"({h['pruned_db'] / h['whole_db']:.3f}x)")
        raw_s = raw_copy(h["snap_dir"], root / "peers" / "swarm.key", root, h["snapshot_bytes"])
        cache = shared_cache_dir()
        pruned = join(root, cache, "pruned", h["wid"])
        require(pruned["adopted"] == 1 and pruned["stubs_held"] > 0,
                f"the fresh peer adopted {pruned['adopted']} workflows and holds {pruned['stubs_held']} stubs")
        whole = join(root, cache, "whole", h["wid"])
    print(f"  raw libp2p stream copy of the snapshot's bytes (best of {ROUNDS}): {raw_s:.2f} s "
          f"({h['snapshot_bytes'] / 1e6 / raw_s:.0f} MB/s)")
    print(f"  fresh peer joins the pruned node (connect_peer until every event and the workflow are held, "
          f"polled every {POLL_S * 1e3:.0f} ms): {pruned['s']:.2f} s = {pruned['s'] / raw_s:.2f}x the raw copy; "
          f"{pruned['stubs_held']:,} stubs of {pruned['events']:,} events")
    print(f"  fresh peer joins the same history never compacted (every block fetched and folded): "
          f"{whole['s']:.2f} s = {whole['s'] / raw_s:.1f}x the raw copy, {whole['s'] / pruned['s']:.1f}x the pruned join")


if __name__ == "__main__":
    main()
