"""Batching and pacing for gossipsub publishes.

py-libp2p's gossipsub drops bursts: a router accepts at most
``max_messages_per_topic_per_second`` messages per topic from each *forwarding* peer (our own
publishes count against ourselves too), and a subscription queue holds 32 messages. Heads
announcements are "latest state" messages, so the right answer is to coalesce: gather what
arrives within ``delay_s``, publish it as one message, and keep successive publishes at least
``min_interval_s`` apart.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Generic, NoReturn, TypeVar

import structlog
import trio

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Debouncer(Generic[T]):
    """Coalesces :meth:`submit` calls into paced :func:`flush` calls; run :meth:`run` in a nursery.

    ``flush`` receives every item submitted since the previous flush, oldest first, and decides
    how to merge them (e.g. a union of heads). An exception from ``flush`` is logged and the
    items are dropped: announcements are periodic, so the next one repairs the gap.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[None]],
        *,
        delay_s: float = 0.02,
        min_interval_s: float | Callable[[], float] = 0.2,
        name: str = "debouncer",
    ) -> None:
        """``min_interval_s`` may be a function, asked before each flush (a spacing that
        depends on the moment, such as whether direct push reaches every peer)."""
        if delay_s < 0 or (not callable(min_interval_s) and min_interval_s < 0):
            raise ValueError("delay_s and min_interval_s must be >= 0")
        self._flush = flush
        self._delay_s = delay_s
        self._min_interval_s = min_interval_s
        self._name = name
        self._pending: list[T] = []
        self._wake = trio.Event()
        self.flushes = 0
        self.items = 0

    def submit(self, item: T) -> None:
        """Queue ``item`` for the next flush; never blocks (safe from any trio task)."""
        self._pending.append(item)
        self._wake.set()

    @property
    def pending(self) -> int:
        """Items waiting for the next flush."""
        return len(self._pending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Flush loop; returns only by cancellation. Pending items at cancellation are dropped."""
        task_status.started()
        last_flush = -math.inf
        while True:
            await self._wake.wait()
            now = trio.current_time()
            interval = self._min_interval_s() if callable(self._min_interval_s) else self._min_interval_s
            await trio.sleep_until(max(now + self._delay_s, last_flush + max(0.0, interval)))
            items, self._pending = self._pending, []
            self._wake = trio.Event()
            last_flush = trio.current_time()
            if not items:
                continue
            self.flushes += 1
            self.items += len(items)
            try:
                await self._flush(items)
            except Exception as exc:  # noqa: BLE001 - one failed publish must not stop announcing
                log.warning("flush failed", debouncer=self._name, items=len(items), error=repr(exc))


class Pacer:
    """Token bucket: ``await acquire()`` returns when a send fits in ``rate_per_s`` (bursts up to ``burst``)."""

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._interval = 1.0 / rate_per_s
        self._burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        """Wait for one token (FIFO among waiters)."""
        async with self._lock:
            now = trio.current_time()
            if self._stamp is None:
                self._stamp = now
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) / self._interval)
            self._stamp = now
            if self._tokens < 1:
                wait = (1 - self._tokens) * self._interval
                await trio.sleep(wait)
                self._tokens = 1.0
                self._stamp = trio.current_time()
            self._tokens -= 1
