"""Observing inference from outside the inference package, at the cost of one call per batch.

The executor calls :func:`record_batch` when a model call returns; whoever wants to watch
(the Prometheus metrics of ``mcp_server.metrics``) registers a listener with :func:`listen`.

Why a listener registry and not metrics objects here: imports point down (mcp_server -> p2p ->
inference), so inference cannot know prometheus or a node. The hot path pays one function call
and a loop over the listeners (none when nobody listens); a listener that raises is logged once
and never reaches the executor.

The registry is per process. Every node in a process that listens hears every batch of every
engine in that process: ``mcp serve`` runs one node per process, so there it is that node's.

Batches that ran while nobody listened (a node's start-up warm-up runs before its metrics
registry exists) are kept, the last :data:`BACKLOG` of them, and handed to the first listener,
so the histograms count every batch the engine's counters count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import PurePath

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One model call the batching executor made: ``size`` items in ``seconds`` (the call's own
    time, from handing the batch to the worker until its results came back)."""

    model: str
    task: str
    size: int
    seconds: float


BatchListener = Callable[[BatchRecord], None]

_listeners: list[BatchListener] = []
BACKLOG = 256
_backlog: deque["BatchRecord"] = deque(maxlen=BACKLOG)  # batches no listener heard yet
_failed: set[int] = set()  # ids of listeners whose failure was logged already (log once each)


def listen(fn: BatchListener) -> Callable[[], None]:
    """Call ``fn`` with every :class:`BatchRecord` from now on (and, for the first listener, the
    batches that ran while nobody listened); returns the function that stops it."""
    _listeners.append(fn)
    while _backlog:
        _deliver(fn, _backlog.popleft())

    def stop() -> None:
        try:
            _listeners.remove(fn)
        except ValueError:
            pass

    return stop


def lane_names(lane: Hashable) -> tuple[str, str]:
    """(model, task) of an executor lane key. The engine's keys are (model path, task, backend):
    the model is named by its folder's name, never by its full path (metric labels must stay
    few and must not leak the data directory). Any other key is named as a whole."""
    if isinstance(lane, tuple) and len(lane) >= 2:
        return PurePath(str(lane[0])).name or str(lane[0]), str(lane[1])
    return str(lane), ""


def record_batch(lane: Hashable, size: int, seconds: float) -> None:
    """Tell the listeners that a batch of ``size`` items ran in ``seconds``. Never raises."""
    try:
        model, task = lane_names(lane)
        rec = BatchRecord(model, task, int(size), float(seconds))
    except Exception as exc:  # noqa: BLE001 - observation must never fail the batch
        log.debug("batch not recorded", error=str(exc))
        return
    if not _listeners:
        _backlog.append(rec)
        return
    for fn in list(_listeners):
        _deliver(fn, rec)


def _deliver(fn: BatchListener, rec: BatchRecord) -> None:
    try:
        fn(rec)
    except Exception as exc:  # noqa: BLE001 - a listener's bug is its own
        if id(fn) not in _failed:
            _failed.add(id(fn))
            log.warning("batch listener failed", listener=getattr(fn, "__qualname__", repr(fn)), error=str(exc))
