"""Exporting results to a file (issue 12 item 2): 100,000 384-dim embeddings to ``.npy``.

The export is the tool's own path (``p2p.export.export_results``, which the MCP tool and the CLI
call with the node's live state and clock): a page of tasks at a time from the scheduler's
fold of a real clock (signed events in SQLite, a finished 100,000-task workflow run by another
peer), each page resolved and written on a worker thread, fsynced, renamed into place. The
baseline, in the same run: numpy writing the same N x D float32 matrix (``np.save``) and
fsyncing it, the least any exporter must do. Best of 3 each, alternating (the first export is
printed too: it derives each task's standing result, which the fold then keeps); the peak of Python
allocations during one more export (tracemalloc) shows it streams: a page, not the matrix.

Fails loudly when the workflow is not completed, the file does not read back equal to the
results, or a row is missing. Run alone: ``.venv/bin/python -m bench.bench_export``.
"""

from __future__ import annotations

import os
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.check import require
from bench.history import finished_history

N = 100_000
DIM = 384
ROUNDS = 3


def _vector(i: int) -> bytes:
    import numpy as np

    return (np.arange(DIM, dtype="<f4") * 0.001 + i).tobytes()


def main() -> None:
    import numpy as np
    import trio

    from p2p.export import export_results, node_blocks_loader
    from p2p.scheduler.state import WorkflowStatus

    with tempfile.TemporaryDirectory(prefix="bench-export-") as d:
        root = Path(d)
        t = time.perf_counter()
        clock, sched, wid = finished_history(root, N, lambda i: {"embedding_f32": _vector(i)})
        built_s = time.perf_counter() - t
        state = sched.state
        require(state.workflow_status(state.workflows[wid]) is WorkflowStatus.COMPLETED,
                f"the {N}-task workflow is {state.workflow_status(state.workflows[wid]).value}, not completed")
        expected = np.stack([np.frombuffer(_vector(i), dtype="<f4") for i in range(N)])
        loader = node_blocks_loader(clock)

        async def export(path: Path) -> dict:
            return await export_results(lambda: sched.state, wid, path, "npy", False, loader)

        runs: list[float] = []
        numpy_s = float("inf")
        for r in range(ROUNDS):
            out = root / f"ours{r}.npy"
            t = time.perf_counter()
            reply = trio.run(export, out)
            runs.append(time.perf_counter() - t)
            require(reply["rows"] == N and reply["with_output"] == N, f"exported {reply['rows']} rows, {reply['with_output']} with output")
            got = np.load(out)
            require(got.shape == (N, DIM) and np.array_equal(got, expected), "the exported matrix differs from the results")
            out.unlink()
            base = root / f"numpy{r}.npy"
            t = time.perf_counter()
            with open(base, "wb") as fh:
                np.save(fh, expected)
                fh.flush()
                os.fsync(fh.fileno())
            numpy_s = min(numpy_s, time.perf_counter() - t)
            base.unlink()
        tracemalloc.start()
        trio.run(export, root / "traced.npy")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        clock.close()
    mb, ours = expected.nbytes / 1e6, min(runs)
    print(f"export of {N:,} x {DIM} float32 embeddings ({mb:.0f} MB) to .npy from a real clock's fold "
          f"(history built in {built_s:.0f} s), best of {ROUNDS}:")
    print(f"  export_results {ours:.2f} s ({mb / ours:.0f} MB/s); numpy np.save + fsync of the same matrix "
          f"{numpy_s:.2f} s; ratio {ours / numpy_s:.1f}x numpy (the first export, which derives each task's standing "
          f"result once, {runs[0]:.2f} s: {runs[0] / numpy_s:.1f}x)")
    print(f"  peak Python allocations during an export {peak / 1e6:.1f} MB ({peak / expected.nbytes:.2f}x the matrix): "
          f"it streams a page at a time")


if __name__ == "__main__":
    main()
