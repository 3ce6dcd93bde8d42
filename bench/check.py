"""Checks that stop a benchmark before it prints a figure for work that did not happen.

Why: a benchmark whose work is rejected (say, workflow ids the fold refuses) still runs fast
and still prints a figure, and nobody notices that it measured nothing. Every benchmark checks
what it did (tasks folded, results returned, ops accepted) with these helpers; a failed check
raises ``BenchError``, ``python -m bench`` prints it as ``BENCH FAILED`` and exits 1, and a
module run alone (``python -m bench.bench_mcp``) exits 1 with the traceback.
"""

from __future__ import annotations

from typing import Any


class BenchError(RuntimeError):
    """The benchmark's work was rejected, empty or wrong: its figures would mean nothing."""


def require(condition: object, message: str) -> None:
    """Raise ``BenchError(message)`` unless ``condition`` holds (unlike ``assert``, never skipped by -O)."""
    if not condition:
        raise BenchError(message)


def require_count(actual: int, expected: int, what: str) -> None:
    """Exactly ``expected`` (> 0) of ``what`` happened."""
    require(expected > 0, f"{what}: the benchmark asked for no work at all")
    require(actual == expected, f"{what}: {actual} of {expected} happened")


def require_folded(state: Any, expected_tasks: int, what: str) -> None:
    """A fold accepted every op and holds ``expected_tasks`` tasks, all done."""
    from p2p.scheduler.state import TaskStatus

    rejected = list(getattr(state, "rejected", ()))
    if rejected:
        r = next((x for x in rejected if x.op == "workflow.submit"), rejected[0])  # the root cause first
        raise BenchError(f"{what}: the fold rejected {len(rejected)} ops (e.g. {r.op}: {r.reason}); "
                         f"the figure would measure rejected work")
    require_count(len(state.tasks), expected_tasks, f"{what}: tasks folded")
    done = sum(1 for t in state.tasks.values() if state.task_status(t) is TaskStatus.DONE)
    require_count(done, expected_tasks, f"{what}: tasks done")
