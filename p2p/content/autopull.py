"""Auto-pull (``inference.auto_pull``): an idle peer fetches a model that queued work needs.

Why: a machine that joins with nothing on disk (``inference.serve = []``) cannot know which
model to fetch until work for one shows up; and a model nobody near the work serves leaves its
tasks waiting. With ``auto_pull`` on, a peer that has nothing to run looks at the open tasks it
would be allowed to run if it had their model (the workflow's tag permits it, and the model's
content id, which the task pins, is advertised by a peer to pull from) and pulls the model with
the most such tasks, through ``Node.pull_model`` (every block verified; served and advertised
at once, so the usual assignment rule then hands it its share).

Off by default: a pull costs bandwidth and disk the operator should choose to spend. A failed
pull of a content id is not retried for ``RETRY_S`` (a model over ``max_model_bytes`` would
otherwise be refused every few seconds).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog
import trio

from p2p.scheduler.ops import WorkflowTag
from p2p.scheduler.state import State, TaskStatus

log = structlog.get_logger("p2p.content.autopull")

RETRY_S = 600.0
EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class Want:
    model: str
    cid: str
    tasks: int


def wanted(state: State, task_ids: Iterable[str], me: str, local: set[str],
           offered: Callable[[str, str], bool]) -> list[Want]:
    """Models (name, pinned content id) of open, queued tasks this peer may run but does not
    serve, that some peer offers (``offered(model, cid)``), most tasks first. Tasks that pin no
    content id are skipped: there is nothing to verify a pull against."""
    counts: Counter[tuple[str, str]] = Counter()
    for tid in task_ids:
        task = state.task(tid)
        if task is None or task.spec.model in local or task.spec.model_cid is None:
            continue
        wf = state.workflows.get(task.workflow_id)
        if wf is None or state.task_status(task) is not TaskStatus.QUEUED:
            continue
        if (wf.tag is WorkflowTag.LOCAL_ONLY and wf.submitter != me) or (wf.tag is WorkflowTag.P2P_ONLY and wf.submitter == me):
            continue
        counts[(task.spec.model, task.spec.model_cid)] += 1
    out = [Want(m, c, n) for (m, c), n in counts.items() if offered(m, c)]
    return sorted(out, key=lambda w: (-w.tasks, w.model, w.cid))


class AutoPuller:
    """The loop: every ``EVERY_S``, when this peer is idle, pull the most wanted model."""

    def __init__(self, *, wants: Callable[[], list[Want]], idle: Callable[[], bool],
                 pull: Callable[[str], Awaitable[object]], now: Callable[[], float] = time.monotonic) -> None:
        self._wants = wants
        self._idle = idle
        self._pull = pull
        self._now = now
        self._failed: dict[str, float] = {}  # content id -> when its pull last failed
        self.pulled: list[str] = []

    async def run(self) -> None:
        while True:
            await trio.sleep(EVERY_S)
            await self.once()

    async def once(self) -> str | None:
        """One look; the content id pulled, or None."""
        if not self._idle():
            return None
        now = self._now()
        for want in self._wants():
            failed = self._failed.get(want.cid)
            if failed is not None and now - failed < RETRY_S:
                continue
            log.info("auto-pulling a model queued tasks need", model=want.model, cid=want.cid, tasks=want.tasks)
            try:
                await self._pull(want.cid)
            except Exception as exc:  # noqa: BLE001 - a refused or failed pull is retried later, not fatal
                self._failed[want.cid] = now
                log.warning("auto-pull failed; not retried for a while", model=want.model, cid=want.cid,
                            error=str(exc), retry_s=RETRY_S)
                continue
            self.pulled.append(want.cid)
            return want.cid
        return None
