"""Noticing that this process itself could not run.

A laptop lid closes, a process is stopped with SIGSTOP, the garbage collector or a long
synchronous step holds the event loop. While that lasts no heartbeat is heard, so when the
process runs again every other peer *looks* silent for the length of the pause, though the one
that was silent was us. A node that trusted that picture would supersede every live owner's
claims: a re-claim wave (measured: 1,410 of 1,500 tasks re-claimed after a 12 s stop).

So a node doubts its own clock before it doubts its peers. :class:`PauseDetector` compares
successive observations of a clock that keeps running while the process is stopped or the
machine sleeps (``CLOCK_BOOTTIME`` on Linux; ``CLOCK_MONOTONIC`` stops during suspend). A gap
between two observations longer than ``threshold_s`` is a pause of ours. The peer table then
measures every peer's silence from the moment we resumed, not from its last heartbeat, so a
peer is declared dead only after a full lease of silence that we were awake to hear.

Observations come from a ticker task (every ``threshold_s / 4``) *and* from every liveness read,
so the first scheduling decision after a resume already sees the gap, whichever task trio runs
first. Time is injected: tests drive it by hand and never sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("p2p.peers.pause")


def awake_clock() -> float:
    """Seconds on a clock that advances while this process is stopped or the machine sleeps."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()  # macOS/Windows: monotonic advances through sleep there


class PauseDetector:
    """Remembers when this process last resumed from a pause it could not see happening."""

    def __init__(self, threshold_s: float = 1.0, now: Callable[[], float] = awake_clock) -> None:
        if threshold_s <= 0:
            raise ValueError("threshold_s must be > 0")
        self.threshold_s = threshold_s
        self._now = now
        self._last = now()
        self.resumed_at = self._last  # a fresh start is a resume: we have heard nobody yet
        self.pauses = 0
        self.longest_s = 0.0

    def observe(self) -> float:
        """Note that the process is running now; returns the current time. A gap since the
        previous observation longer than the threshold is recorded as a pause."""
        now = self._now()
        gap = now - self._last
        self._last = now
        if gap > self.threshold_s:
            self.resumed_at = now
            self.pauses += 1
            self.longest_s = max(self.longest_s, gap)
            log.warning("this process was paused; peers get a fresh lease before any is judged silent",
                        paused_s=round(gap, 3), pauses=self.pauses)
        return now
