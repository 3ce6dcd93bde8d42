"""The benchmarks cannot print a figure for rejected or empty work (issue 7, item 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_mcp import _clock_case, batched_stream, bench_clock, single_op_stream
from bench.check import BenchError, require_count, require_folded
from p2p.identity import Identity
from p2p.scheduler.state import State

REPO = Path(__file__).resolve().parents[2]


def test_the_fold_benchmark_folds_what_it_submits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_clock(tmp_path, n=300)
    out = capsys.readouterr().out
    assert "300 tasks" in out and "99 tasks" in out, out  # batched: 300; one op per event: (300-1)//3


@pytest.mark.parametrize("stream", [batched_stream, single_op_stream])
def test_foreign_workflow_ids_fail_the_benchmark(tmp_path: Path, stream) -> None:  # type: ignore[no-untyped-def]
    """Ids bound to another submitter are rejected by the fold: the bench must stop, not print."""
    submitter, writer = Identity.generate(), Identity.generate()
    kw = {"n_tasks": 64, "per_wf": 64} if stream is batched_stream else {"n_events": 64}
    with pytest.raises(BenchError, match="rejected"):
        _clock_case(tmp_path, "foreign", "foreign ids", stream(submitter.peer_id_str, **kw), writer)


def test_empty_work_fails() -> None:
    with pytest.raises(BenchError, match="no work"):
        require_folded(State(), 0, "nothing")
    with pytest.raises(BenchError, match="0 of 5"):
        require_count(0, 5, "results")


def test_bench_runner_exits_non_zero_on_failure() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "bench_does_not_exist"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "BENCH FAILED" in proc.stdout, proc.stdout
