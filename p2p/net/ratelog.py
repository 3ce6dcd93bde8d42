"""Rate-limited logging of what peers do wrong: once per peer per minute, with a count.

A peer that sends one malformed frame deserves a warning; a peer that sends ten thousand must
not turn our stderr into its amplifier. :class:`PeerLogLimiter` lets the first record of a
(peer, kind) pair through, then swallows repeats for ``interval_s`` and reports how many it
swallowed with the next record that gets through. Its table is capped (oldest pairs dropped),
so peers cannot grow it without bound either.

Use the module-level :data:`peer_log` (shared by the net layer) or make your own for another
layer (replication, scheduler) so their budgets stay independent::

    from p2p.net.ratelog import peer_log
    peer_log.warning(peer, "malformed heads announcement", error=str(exc))
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog

DEFAULT_INTERVAL_S = 60.0
DEFAULT_MAX_KEYS = 4096


class PeerLogLimiter:
    """Logs each (peer, event) at most once per ``interval_s``; repeats are counted, not logged.

    Why: bad input from the network is logged "once per peer per minute, not once per frame"
    (issue 7). Not thread-safe; use it from the trio thread (or one limiter per thread).
    """

    def __init__(
        self,
        logger: Any | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or max_keys <= 0:
            raise ValueError("interval_s and max_keys must be positive")
        self._log = logger if logger is not None else structlog.get_logger("p2p.net.peers")
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        # (peer, event) -> [time of the last record let through, repeats suppressed since]
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def should_log(self, peer: str, event: str) -> tuple[bool, int]:
        """(True, repeats suppressed since the last record) when a record is due, else (False, 0)."""
        key = (peer, event)
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self._interval_s:
            entry[1] += 1
            return False, 0
        suppressed = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        return True, suppressed

    def log(self, level: str, peer: str, event: str, **fields: Any) -> bool:
        """Log ``event`` about ``peer`` at ``level`` if due; returns whether it was logged."""
        due, suppressed = self.should_log(peer, event)
        if not due:
            return False
        if suppressed:
            fields["suppressed_repeats"] = suppressed
        getattr(self._log, level)(event, peer=peer, **fields)
        return True

    def warning(self, peer: str, event: str, **fields: Any) -> bool:
        return self.log("warning", peer, event, **fields)

    def info(self, peer: str, event: str, **fields: Any) -> bool:
        return self.log("info", peer, event, **fields)


peer_log = PeerLogLimiter()
"""The net layer's shared limiter (stream handlers, pubsub reader, decoders)."""

__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_MAX_KEYS", "PeerLogLimiter", "peer_log"]
