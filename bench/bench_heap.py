"""FibonacciHeap vs heapq: what the O(1) decrease-key costs and buys in CPython.

heapq is C; the Fibonacci heap is pure Python, so raw push/pop is expected to be several
times slower. The decrease-key workload compares against the usual heapq substitute, lazy
deletion (push a new entry, skip stale ones on pop), which grows the heap instead.
Run: python -m bench.bench_heap  (or python bench/bench_heap.py)
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable

from bench.check import require, require_count
from p2p.scheduler.heap import FibonacciHeap


def _best_of(fn: Callable[[], int], repeat: int = 3) -> tuple[float, int]:
    """(best seconds, ops) over ``repeat`` runs: the least-disturbed run on a shared machine."""
    best, ops = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        ops = fn()
        best = min(best, time.perf_counter() - t0)
    return best, ops


def _keys(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(1, 10), i) for i in range(n)]


def push_pop_fib(keys: list[tuple[int, int]], out: list[int] | None = None) -> int:
    heap: FibonacciHeap[int] = FibonacciHeap()
    for i, k in enumerate(keys):
        heap.push(k, i)
    for _ in range(len(keys)):
        _, item = heap.pop()
        if out is not None:
            out.append(item)
    return 2 * len(keys)


def push_pop_heapq(keys: list[tuple[int, int]], out: list[int] | None = None) -> int:
    heap: list[tuple[tuple[int, int], int]] = []
    for i, k in enumerate(keys):
        heapq.heappush(heap, (k, i))
    for _ in range(len(keys)):
        _, item = heapq.heappop(heap)
        if out is not None:
            out.append(item)
    return 2 * len(keys)


def _decrease_plan(n: int, m: int, seed: int) -> list[int]:
    """m random item indices; each decrease lowers that item's priority number by one."""
    rng = random.Random(seed)
    return [rng.randrange(n) for _ in range(m)]


def decrease_fib(keys: list[tuple[int, int]], plan: list[int], out: list[int] | None = None) -> int:
    heap: FibonacciHeap[int] = FibonacciHeap()
    handles = [heap.push(k, i) for i, k in enumerate(keys)]
    _, first = heap.pop()  # consolidate once so decrease-keys hit real trees (as in a running queue)
    for idx in plan:
        h = handles[idx]
        if h.alive:
            prio, order = h.key
            heap.decrease_key(h, (prio - 1, order))
    if out is not None:
        out.append(first)
    while heap:
        _, item = heap.pop()
        if out is not None:
            out.append(item)
    return len(keys) + len(plan) + len(keys)


def decrease_heapq(keys: list[tuple[int, int]], plan: list[int], out: list[int] | None = None) -> int:
    heap: list[tuple[tuple[int, int], int]] = [(k, i) for i, k in enumerate(keys)]
    heapq.heapify(heap)
    current = list(keys)
    alive = [True] * len(keys)
    _, first = heapq.heappop(heap)
    alive[first] = False
    if out is not None:
        out.append(first)
    for idx in plan:
        if alive[idx]:
            prio, order = current[idx]
            new = (prio - 1, order)
            current[idx] = new
            heapq.heappush(heap, (new, idx))  # old entry becomes stale
    while heap:
        key, idx = heapq.heappop(heap)
        if alive[idx] and current[idx] == key:
            alive[idx] = False
            if out is not None:
                out.append(idx)
    return len(keys) + len(plan) + len(keys)


def verify(keys: list[tuple[int, int]], plan: list[int]) -> None:
    """Once, untimed: both heaps drain every item, in the same (key) order, for both workloads."""
    fib: list[int] = []
    hq: list[int] = []
    push_pop_fib(keys, fib)
    push_pop_heapq(keys, hq)
    require_count(len(fib), len(keys), "push+pop: FibonacciHeap items drained")
    require(fib == hq == sorted(range(len(keys)), key=lambda i: keys[i]), "push+pop: pop order is not key order")
    fib, hq = [], []
    decrease_fib(keys, plan, fib)
    decrease_heapq(keys, plan, hq)
    require_count(len(fib), len(keys), "decrease-key: FibonacciHeap items drained")
    require(fib == hq, "decrease-key: FibonacciHeap and heapq drained in different orders")


def main() -> None:
    n, m = 100_000, 200_000
    keys = _keys(n, seed=1)
    plan = _decrease_plan(n, m, seed=2)

    verify(keys, plan)
    t_fib, ops = _best_of(lambda: push_pop_fib(keys))
    t_hq, _ = _best_of(lambda: push_pop_heapq(keys))
    print(f"push+pop {n:,}: FibonacciHeap {ops / t_fib:,.0f} ops/s, heapq {ops / t_hq:,.0f} ops/s, "
          f"fib/heapq = {t_hq / t_fib:.2f}x")

    t_fib, ops = _best_of(lambda: decrease_fib(keys, plan))
    t_hq, _ = _best_of(lambda: decrease_heapq(keys, plan))
    print(f"decrease-key {n:,} items + {m:,} decreases + drain: FibonacciHeap {ops / t_fib:,.0f} ops/s, "
          f"heapq+lazy deletion {ops / t_hq:,.0f} ops/s, fib/heapq = {t_hq / t_fib:.2f}x")


if __name__ == "__main__":
    main()
