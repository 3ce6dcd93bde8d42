"""Batching executor: concurrent requests for one model become one model call.

Batching is worth ~1.85x throughput on CPU here (and far more on a GPU), so requests for the
same lane key — (model, task, backend) — are gathered up to ``max_batch`` items or until the
oldest has waited ``max_wait_ms``, then run in a worker thread (``trio.to_thread.run_sync``) so
the event loop keeps serving. While one batch runs, new requests keep queueing and form the next
batch, which starts as soon as the thread returns (their wait deadline has usually passed).

A bad item fails only its own request: the batch function returns an exception in that item's
slot, and if the whole call raises, its items are rerun one by one to find the culprit.

A lane's target is either a plain function run in a thread (in-process inference), or a
``Dispatcher`` (inference.pool: worker processes). With a dispatcher the lane first waits for a
free worker, then takes up to ``max_batch`` items — while every worker is busy, requests keep
queueing into full batches — and runs as many batches at once as there are free workers. A batch
whose worker died (``RetryBatchError``) goes back to the head of its lane and runs again; after
``MAX_BATCH_RETRIES`` its items fail with that (retryable) error.

Structured concurrency: lanes are tasks in the executor's nursery, which lives inside
``async with BatchingExecutor.open(...)``; leaving the block (or cancelling it) stops them and
fails whatever was still queued.
"""

from __future__ import annotations

from collections import deque
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Callable, Hashable, Protocol, Sequence, runtime_checkable

import structlog
import trio

from inference import observe
from inference.errors import InferenceError, one_line, unwrap_group

log = structlog.get_logger()

BatchFn = Callable[[list[Any]], Sequence[Any]]
MAX_BATCH_RETRIES = 1  # reruns of a batch whose worker died under it


@runtime_checkable
class Dispatcher(Protocol):
    """Where a lane's batches run when not in a thread of this process (inference.pool)."""

    def demand(self) -> None:
        """Items were queued: the dispatcher may scale up."""

    async def acquire(self) -> Any:
        """A free slot (a worker), waited for."""

    def release(self, slot: Any) -> None: ...

    async def run(self, slot: Any, items: list[Any]) -> Sequence[Any]:
        """One result per item; raises RetryBatchError when the batch should run again elsewhere."""


class RetryBatchError(InferenceError):
    """The batch did not run through no fault of its items (its worker died): run it again."""


class ExecutorClosedError(InferenceError):
    """The executor stopped before the request ran."""


class BatchCallError(InferenceError):
    """The model call failed for this item even when run alone."""


@dataclass(slots=True)
class LaneStats:
    requests: int = 0
    items: int = 0
    batches: int = 0
    largest_batch: int = 0
    isolated_reruns: int = 0  # batches whose call raised and were rerun item by item

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Request:
    __slots__ = ("items", "results", "remaining", "done", "cancelled", "arrived", "retries")

    def __init__(self, items: list[Any], arrived: float) -> None:
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.remaining = len(items)
        self.done = trio.Event()
        self.cancelled = False
        self.arrived = arrived
        self.retries = 0  # reruns of a batch holding its items after the batch's worker died


class _Lane:
    def __init__(self, key: Hashable, fn: BatchFn | Dispatcher, max_batch: int, max_wait_s: float,
                 nursery: trio.Nursery) -> None:
        self.key = key
        self.fn = fn
        self.dispatcher = fn if isinstance(fn, Dispatcher) else None
        self.nursery = nursery
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.pending: deque[tuple[_Request, int]] = deque()
        self.stats = LaneStats()
        self._wake = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.closed = False

    def put(self, req: _Request) -> None:
        self.pending.extend((req, i) for i in range(len(req.items)))
        self.stats.requests += 1
        self.stats.items += len(req.items)
        self._wake.set()
        if self.dispatcher is not None:
            self.dispatcher.demand()

    def queued(self) -> int:
        return len(self.pending)

    async def _wait_for_more(self, deadline: float | None) -> None:
        self._wake = trio.Event()
        if deadline is None:
            await self._wake.wait()
        else:
            with trio.move_on_at(deadline):
                await self._wake.wait()

    def _take(self) -> list[tuple[_Request, int]]:
        batch: list[tuple[_Request, int]] = []
        while self.pending and len(batch) < self.max_batch:
            entry = self.pending.popleft()
            if not entry[0].cancelled:
                batch.append(entry)
        return batch

    async def serve(self) -> None:
        try:
            while True:
                while not self.pending:
                    await self._wait_for_more(None)
                slot = None
                if self.dispatcher is not None:
                    try:
                        slot = await self.dispatcher.acquire()
                    except InferenceError as exc:  # no worker can run it: the waiting items fail
                        for req, i in self._take():
                            self._deliver(req, i, exc)
                        continue
                if self.pending and self.max_wait_s > 0 and len(self.pending) < self.max_batch:
                    deadline = self.pending[0][0].arrived + self.max_wait_s
                    while len(self.pending) < self.max_batch and trio.current_time() < deadline:
                        await self._wait_for_more(deadline)
                batch = self._take()
                if self.dispatcher is None:
                    if batch:
                        await self._run(batch)
                elif batch:
                    self.nursery.start_soon(self._run_on, slot, batch)
                else:
                    self.dispatcher.release(slot)
        finally:
            self.closed = True
            err = ExecutorClosedError("the inference executor stopped before this request ran")
            while self.pending:
                req, i = self.pending.popleft()
                self._deliver(req, i, err)

    def _call(self, items: list[Any]) -> Sequence[Any]:
        results = self.fn(items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    def _isolate(self, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            try:
                out.append(self._call([item])[0])
            except Exception as exc:
                out.append(BatchCallError(f"model call failed: {one_line(exc)}"))
        return out

    async def _run(self, batch: list[tuple[_Request, int]]) -> None:
        items = [req.items[i] for req, i in batch]
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        t0 = trio.current_time()
        try:
            results = await trio.to_thread.run_sync(self._call, items, limiter=self._limiter)
        except Exception as exc:
            log.warning("executor.batch_failed_isolating", lane=str(self.key), items=len(items), error=one_line(exc))
            self.stats.isolated_reruns += 1
            results = await trio.to_thread.run_sync(self._isolate, items, limiter=self._limiter)
        self._made(len(items), t0)
        for (req, i), res in zip(batch, results):
            self._deliver(req, i, res)

    async def _run_on(self, slot: Any, batch: list[tuple[_Request, int]]) -> None:
        """One batch on a dispatcher's slot (released after); a batch whose worker died goes
        back to the head of the lane (its items keep their order), once, then fails retryably."""
        assert self.dispatcher is not None
        items = [req.items[i] for req, i in batch]
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        t0 = trio.current_time()
        try:
            try:
                results = list(await self.dispatcher.run(slot, items))
                if len(results) != len(items):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            except RetryBatchError as exc:
                self._retry(batch, exc)
                return
            except Exception as exc:
                log.warning("executor.batch_failed_isolating", lane=str(self.key), items=len(items), error=one_line(exc))
                self.stats.isolated_reruns += 1
                results = []
                for item in items:
                    try:
                        results.append((await self.dispatcher.run(slot, [item]))[0])
                    except RetryBatchError as exc2:  # the worker died: the rest go back to the lane
                        self._retry(batch[len(results):], exc2)
                        batch = batch[:len(results)]
                        break
                    except Exception as exc2:
                        results.append(BatchCallError(f"model call failed: {one_line(exc2)}"))
            self._made(len(items), t0)
        finally:
            self.dispatcher.release(slot)
        for (req, i), res in zip(batch, results):
            self._deliver(req, i, res)

    def _made(self, size: int, t0: float) -> None:
        """Count a finished model call (a batch) and tell the observers, at the same moment, so
        ``batches`` and the batch histograms never disagree (a batch is counted once it returns;
        one whose worker died and goes back to the lane is counted when it finally runs)."""
        self.stats.batches += 1
        observe.record_batch(self.key, size, trio.current_time() - t0)

    def _retry(self, batch: list[tuple[_Request, int]], exc: RetryBatchError) -> None:
        again: list[tuple[_Request, int]] = []
        for req, i in batch:
            if req.cancelled:
                continue
            if req.retries < MAX_BATCH_RETRIES and not self.closed:
                again.append((req, i))
            else:
                self._deliver(req, i, type(exc)(f"{exc}; it had been rerun {req.retries} time(s) already: "
                                                "retry the request"))
        for req in {id(r): r for r, _ in again}.values():
            req.retries += 1
        log.warning("executor.batch_retried", lane=str(self.key), items=len(again), failed=len(batch) - len(again),
                    error=one_line(exc))
        self.pending.extendleft(reversed(again))
        self._wake.set()
        self.dispatcher.demand()  # type: ignore[union-attr]

    @staticmethod
    def _deliver(req: _Request, i: int, result: Any) -> None:
        req.results[i] = result
        req.remaining -= 1
        if req.remaining == 0:
            req.done.set()


class BatchingExecutor:
    """Gathers concurrent ``submit`` calls per lane key into batched calls of the lane's function."""

    def __init__(self, nursery: trio.Nursery, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._nursery = nursery
        self.max_batch = int(max_batch)
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self._lanes: dict[Hashable, _Lane] = {}
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(cls, max_batch: int = 32, max_wait_ms: float = 5.0) -> AsyncIterator["BatchingExecutor"]:
        """The executor and its lanes live exactly as long as this block."""
        try:
            async with trio.open_nursery() as nursery:
                ex = cls(nursery, max_batch, max_wait_ms)
                try:
                    yield ex
                finally:
                    ex._closed = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = unwrap_group(group)  # the caller's own exception, not trio's wrapper
            if leaf is group:
                raise
            raise leaf from None

    async def submit(self, key: Hashable, fn: BatchFn | Dispatcher, items: list[Any]) -> list[Any]:
        """Run ``items`` through ``fn`` (batched with other callers of ``key``); one result per item, in order.

        A result is the value or the exception for that item; the caller decides what to raise.
        ``fn`` (a function, or a Dispatcher) is bound to the lane on its first use: one key, one
        function.
        """
        if not items:
            return []
        lane = self._lanes.get(key)
        if lane is None or lane.closed:
            if self._closed or lane is not None:
                raise ExecutorClosedError("the inference executor is closed")
            lane = self._lanes[key] = _Lane(key, fn, self.max_batch, self.max_wait_s, self._nursery)
            self._nursery.start_soon(lane.serve, name=f"batch-lane:{key}")
        req = _Request(list(items), trio.current_time())
        lane.put(req)
        try:
            await req.done.wait()
        except BaseException:
            req.cancelled = True  # its queued items are skipped; a running batch's results are dropped
            raise
        return req.results

    def stats(self, key: Hashable | None = None) -> dict[str, Any]:
        """Per-lane counters (requests, items, batches...), or one lane's."""
        if key is not None:
            lane = self._lanes.get(key)
            return lane.stats.to_dict() if lane else LaneStats().to_dict()
        return {str(k): lane.stats.to_dict() for k, lane in self._lanes.items()}

    def queued(self) -> int:
        """Items waiting in every lane for a batch (the pool's queue depth)."""
        return sum(lane.queued() for lane in self._lanes.values())

    @property
    def batch_count(self) -> int:
        """Model calls made so far, all lanes together."""
        return sum(lane.stats.batches for lane in self._lanes.values())
