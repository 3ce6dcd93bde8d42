"""The worker pool's scaling decision, as a pure function of what the pool sees.

Why a pure function: the pool's loop (inference.pool) only gathers the numbers and acts on the
answer, so the rule itself is tested exhaustively (hypothesis) with time passed in, and the loop
never has to be timed in a test.

The rule (the seed's autoscaler: a minimum, a maximum, up on queue depth, down after idle):
  * up: items are queued and the workers that could take them soon (idle or still starting)
    cover fewer full batches than are waiting -> start enough for the rest, up to ``max``;
  * down: no item is queued -> stop each worker idle for ``idle_s`` or more, down to ``min``;
  * lazy start: before the first inference ever asked for a worker the floor is 0, so a node
    that never infers never pays a worker's memory; from then on it is ``min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One live worker as the decision sees it: busy, or idle since ``idle_since`` (pool clock)."""

    busy: bool
    idle_since: float


@dataclass(frozen=True, slots=True)
class ScaleLimits:
    min: int
    max: int
    idle_s: float
    max_batch: int


def autoscale_target(queue_depth: int, workers: tuple[WorkerView, ...], starting: int, now: float,
                     limits: ScaleLimits, *, demanded: bool) -> int:
    """How many workers the pool should have (live + starting) now.

    ``queue_depth``: items waiting for a worker; ``starting``: workers spawned and not yet ready;
    ``demanded``: whether any inference has asked for a worker yet (lazy start)."""
    live = len(workers) + starting
    floor = limits.min if (demanded or queue_depth > 0) else 0
    if queue_depth > 0:
        batches = math.ceil(queue_depth / limits.max_batch)
        ready_soon = starting + sum(1 for w in workers if not w.busy)
        target = live + max(0, batches - ready_soon)
    else:
        expired = sum(1 for w in workers if not w.busy and now - w.idle_since >= limits.idle_s)
        target = live - expired
    return max(floor, min(limits.max, target))
