"""search_workflow's exact search: index build, save, load and per-query latency at 10,000 and
100,000 random 384-d vectors (issue 13 item 2).

The build is what ``p2p.search`` does with a workflow's results once they are read: packed
float32 bytes, one per task, stacked and normalised into one matrix. Save and load are the index
files under ``<data_dir>/search`` (with their checksum). A query is one normalised matrix-vector
product and a partial sort (``top_k``). Every answer is checked against a full sort first.
Run: python -m bench.bench_search  (or python bench/bench_search.py)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.check import require
from p2p.search import Index, _stack, load_index, save_index, top_k

DIM = 384
QUERIES = 50


def _one(n: int, rng: np.random.Generator, tmp: Path) -> None:
    raw = rng.standard_normal((n, DIM)).astype("<f4")
    packed = [raw[i].tobytes() for i in range(n)]  # the form results are stored in

    t0 = time.perf_counter()
    mat = _stack(packed, DIM)
    build = time.perf_counter() - t0
    require(mat.shape == (n, DIM) and np.allclose(np.linalg.norm(mat, axis=1), 1, atol=1e-5), "normalised matrix")

    wid = f"{n:032x}"
    key = {"workflow_id": wid, "created_at": 0.0, "tasks": n, "submitter": "bench"}
    ix = Index(wid, "bench", mat, np.arange(n, dtype=np.int64), n, key)
    t0 = time.perf_counter()
    save_index(tmp, ix)
    save = time.perf_counter() - t0
    t0 = time.perf_counter()
    got, why = load_index(tmp, wid, key)
    load = time.perf_counter() - t0
    require(got is not None and why is None and np.array_equal(got.matrix, mat), f"index read back ({why})")
    size = (tmp / f"{wid}.npy").stat().st_size + (tmp / f"{wid}.json").stat().st_size

    queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    for q in queries[:3]:  # the answers are right before they are timed
        full = mat @ (q / np.linalg.norm(q))
        for k in (1, 5, 100):
            rows, scores = top_k(mat, q, k)
            require(np.allclose(scores, np.sort(full)[::-1][:k], atol=1e-6), f"top-{k} of {n} is the exact ranking")
    lat: dict[int, list[float]] = {5: [], 100: []}
    for k in lat:
        for q in queries:
            t0 = time.perf_counter()
            top_k(mat, q, k)
            lat[k].append(time.perf_counter() - t0)
    per = "; ".join(f"k={k}: median {statistics.median(v) * 1e3:.2f} ms, p95 {sorted(v)[int(0.95 * len(v)) - 1] * 1e3:.2f} ms"
                    for k, v in lat.items())
    print(f"{n:>7,} x {DIM}: build {build:.3f} s, save {save:.3f} s, load {load:.3f} s "
          f"({size / 1e6:.1f} MB on disk); per query ({QUERIES} queries) {per}", flush=True)


def main() -> None:
    rng = np.random.default_rng(13)
    with tempfile.TemporaryDirectory() as d:
        for n in (10_000, 100_000):
            _one(n, rng, Path(d))


if __name__ == "__main__":
    main()
