"""Merkle clock throughput: append, reopen+iterate, merge; each against a raw-SQLite baseline.

Run: ``.venv/bin/python -m bench.bench_clock`` (or through ``bench/__main__.py``).
The baseline is a plain ``INSERT`` of the same block bytes into a WAL SQLite table with the
same durability (synchronous=FULL, one commit per event for appends, one per batch for merge),
so the ratio shows what hashing, signing, encoding and verification cost on top of storage.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.check import require, require_count
from p2p.clock import MerkleClock
from p2p.identity import Identity

N_OPS = 10_000
EMBEDDING_BYTES = 1536


def _op(i: int, embedding: bytes) -> dict:  # type: ignore[type-arg]
    return {"op": "task.done", "task_id": f"wf-{i // 100:05d}/t-{i:06d}", "attempt": 1,
            "result": embedding, "stats": {"ms": 12.5, "batch": 32}}


def _raw_sqlite(path: Path, blocks: list[bytes], per_commit: int) -> float:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB)")
    t = time.perf_counter()
    for start in range(0, len(blocks), per_commit):
        db.execute("BEGIN")
        for i, data in enumerate(blocks[start:start + per_commit], start):
            db.execute("INSERT INTO blocks VALUES (?, ?)", (i.to_bytes(8, "big"), data))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t
    db.close()
    return elapsed


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_append(tmp: Path, ident: Identity, ops_per_event: int) -> tuple[MerkleClock, str]:
    embedding = os.urandom(EMBEDDING_BYTES)
    ops = [_op(i, embedding) for i in range(N_OPS)]
    clock = MerkleClock.open(tmp / f"append{ops_per_event}.db", ident)
    batches = [ops[i:i + ops_per_event] for i in range(0, N_OPS, ops_per_event)]
    elapsed = _timed(lambda: [clock.append(b) for b in batches])
    blocks = [e.data for e in clock.events()]
    require_count(len(blocks), len(batches), f"append x {ops_per_event}: events stored")
    base = _raw_sqlite(tmp / f"raw_append{ops_per_event}.db", blocks, per_commit=1)
    line = (f"append  {len(batches):>6} events x {ops_per_event:>2} ops ({EMBEDDING_BYTES} B each): "
            f"{len(batches) / elapsed:>8.0f} events/s, {N_OPS / elapsed:>8.0f} ops/s "
            f"({elapsed:.2f} s; raw sqlite insert of the same blocks {base:.2f} s, "
            f"ratio {elapsed / base:.1f}x)")
    return clock, line


def main() -> None:
    ident, other = Identity.generate(), Identity.generate()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("== bench_clock: Merkle clock (SQLite WAL, synchronous=FULL) ==")
        c1, line = bench_append(tmp, ident, 1)
        print(line)
        c32, line = bench_append(tmp, ident, 32)
        print(line)
        c32.close()

        # reopen + iterate the 10,000-event clock
        path = tmp / "append1.db"
        c1.close()
        t = time.perf_counter()
        reopened = MerkleClock.open(path, ident)
        n = sum(1 for _ in reopened.events())
        reopen_s = time.perf_counter() - t
        db = sqlite3.connect(str(tmp / "raw_append1.db"))
        t = time.perf_counter()
        raw_n = sum(1 for _ in db.execute("SELECT data FROM blocks ORDER BY rowid"))
        raw_s = time.perf_counter() - t
        db.close()
        require_count(n, N_OPS, "reopen+iterate: events read back")
        require_count(raw_n, N_OPS, "raw sqlite baseline: rows read back")
        print(f"reopen+iterate {n} events: {reopen_s:.3f} s (target <= 0.5 s; raw sqlite scan "
              f"{raw_s:.3f} s, ratio {reopen_s / raw_s:.1f}x)")

        # merge: the 10,000 foreign events into a fresh clock, one add_blocks call
        blocks = [(e.cid, e.data) for e in reopened.events()]
        fresh = MerkleClock.open(tmp / "merge.db", other)
        t = time.perf_counter()
        result = fresh.add_blocks(blocks)
        merge_s = time.perf_counter() - t
        require_count(len(result.applied), n, "merge: foreign events applied")
        require(not result.rejected, f"merge: {len(result.rejected)} blocks rejected")
        require(fresh.get_hash() == reopened.get_hash(), "merge: the merged clock's hash differs from the source's")
        base = _raw_sqlite(tmp / "raw_merge.db", [b for _, b in blocks], per_commit=len(blocks))
        print(f"merge   {n} foreign events (add_blocks, verified): {n / merge_s:>8.0f} events/s "
              f"({merge_s:.2f} s; raw sqlite insert in one transaction {base:.3f} s, "
              f"ratio {merge_s / base:.0f}x)")

        # merge in reverse order: every event an orphan until the root arrives
        fresh_rev = MerkleClock.open(tmp / "merge_rev.db", other)
        t = time.perf_counter()
        result = fresh_rev.add_blocks(blocks[::-1])
        rev_s = time.perf_counter() - t
        require_count(len(result.applied), n, "merge children first: foreign events applied")
        print(f"merge   {n} foreign events, children first (orphan path): "
              f"{n / rev_s:>8.0f} events/s ({rev_s:.2f} s)")
        # merge of 32-op events: verification cost with embedding-sized payloads
        c32 = MerkleClock.open(tmp / "append32.db", ident)
        blocks32 = [(e.cid, e.data) for e in c32.events()]
        fresh32 = MerkleClock.open(tmp / "merge32.db", other)
        t = time.perf_counter()
        result = fresh32.add_blocks(blocks32)
        m32 = time.perf_counter() - t
        require_count(len(result.applied), len(blocks32), "merge of 32-op events: foreign events applied")
        mb = sum(len(b) for _, b in blocks32) / 1e6
        print(f"merge   {len(blocks32)} foreign events x 32 ops ({mb:.1f} MB): "
              f"{len(blocks32) / m32:>8.0f} events/s, {N_OPS / m32:>8.0f} ops/s, "
              f"{mb / m32:.1f} MB/s")
        for c in (reopened, fresh, fresh_rev, c32, fresh32):
            c.close()


if __name__ == "__main__":
    main()
