"""Where every trio task of this process is waiting, for ``kill -USR1 <pid>`` on a node that
seems stuck (a connection that carries nothing, a ping never answered). Logged to stderr.

A stack of a trio task is the chain of coroutines it awaits (``cr_await``); the frame and line
of each one name what the task waits on: a lock, an event, a socket.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import structlog
import trio

log = structlog.get_logger("p2p.taskdump")


def _frames(coro: Any) -> Iterator[str]:
    depth = 0
    while coro is not None and depth < 64:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield f"{frame.f_code.co_filename.rsplit('site-packages/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        depth += 1


def _tasks(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _tasks(child)


def dump_tasks() -> list[dict[str, Any]]:
    """Every task of the current trio run: its name and the await chain it is parked in."""
    root = trio.lowlevel.current_root_task()
    if root is None:
        return []
    return [{"task": t.name, "stack": list(_frames(t.coro))} for t in _tasks(root)]


async def dump_on_sigusr1() -> None:
    """Log :func:`dump_tasks` each time the process gets SIGUSR1 (runs until cancelled)."""
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            tasks = dump_tasks()
            log.warning("task dump", tasks=len(tasks))
            for t in tasks:
                log.warning("task", name=t["task"], stack=" > ".join(t["stack"]))


class SlowSteps(trio.abc.Instrument):
    """Logs every task step that held the event loop longer than ``threshold_s``: the loop
    lag that delays heartbeats and makes peers look silent. Enabled with the environment
    variable ``IPFS_ACCELERATE_SLOW_STEP_MS`` (a diagnostic: it costs two clock reads a step)."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._started
        if took >= self.threshold_s and self._started:
            log.warning("slow event-loop step", task=task.name, ms=round(took * 1000), now_at=" > ".join(list(_frames(task.coro))[-3:]))


def install_slow_step_log() -> None:
    """Add :class:`SlowSteps` to the running trio loop when ``IPFS_ACCELERATE_SLOW_STEP_MS`` is set."""
    raw = os.environ.get("IPFS_ACCELERATE_SLOW_STEP_MS", "").strip()
    if raw:
        trio.lowlevel.add_instrument(SlowSteps(float(raw) / 1000.0))
