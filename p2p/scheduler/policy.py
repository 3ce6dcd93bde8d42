"""The assignment policy: what this peer should do about one task, given the state and who is alive.

It is the leaderless rule of DESIGN.md made into one decision function, apart from the
scheduler's queue and executor so that it can be tested with an injected clock and no sleeping:

- the top-ranked live, eligible, compatible peer (weighted rendezvous, ``assignment``) claims a
  queued task; the k-th ranked peer claims one its betters left unclaimed for ``k * lease_s``
  (a peer that advertises a model but never claims must not starve the task);
- a claim whose owner is silent for ``lease_s`` is superseded by the next attempt's top peer; on
  the last attempt (or with no peer left to take it) one live peer records the expiry;
- an owner that has been *running* a task for ``task_timeout_s`` (plus a lease of grace for its
  own timeout to land in the clock) loses the attempt the same way: the task's errors say why;
- a peer still running a task whose attempt was superseded (it was paused, or judged silent by
  mistake) re-asserts it with a *continuation* claim, which the fold ranks above the superseding
  claim: the work is not done twice;
- no work is taken from a submitter whose consensus settings differ from ours (nor offered to
  such a peer: the peer table leaves it out of ``live``);
- nothing is claimed or expired while ``ready()`` is False (this peer is still catching up with
  its peers' history after joining or after a pause of its own).

Time enters only through ``now`` (this peer's monotonic clock): how long a task has gone
unclaimed, how long its owner has been running it. Those are local observations, so they never
enter the fold; the claims they lead to do, and the fold resolves them the same everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from p2p.config import SchedulerConfig
from p2p.peers.caps import PeerCaps
from p2p.scheduler.assignment import choose_owner, rank_peers
from p2p.scheduler.ops import WorkflowTag
from p2p.scheduler.state import TERMINAL_TASK, TaskState, TaskStatus, WorkflowState

log = structlog.get_logger("p2p.scheduler")


@dataclass(frozen=True, slots=True)
class Own:
    """This peer owns ``attempt``: queue it here."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Drop:
    """Another peer owns the task: drop it from the local queue (unless already running)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim ``attempt`` of the task (a supersede when ``supersedes`` says why)."""

    attempt: int
    supersedes: str | None = None  # why the previous attempt was abandoned
    continues: bool = False  # a live owner re-asserting the task it is running


@dataclass(frozen=True, slots=True)
class Expire:
    """Record that ``attempt`` was lost (``retryable``: another attempt may follow)."""

    attempt: int
    error: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class Forget:
    """The task reached a terminal state: forget every local note about it."""


Decision = Own | Drop | Claim | Expire | Forget


class AssignmentPolicy:
    """Decides, for one task at a time, what this peer should do (see the module doc)."""

    def __init__(
        self,
        me: str,
        config: SchedulerConfig,
        is_alive: Callable[[str], bool],
        *,
        ready: Callable[[], bool] = lambda: True,
        now: Callable[[], float] = time.monotonic,
        compatible: Callable[[str], bool] = lambda peer: True,
    ) -> None:
        self.me = me
        self.compatible = compatible
        self.config = config
        self.is_alive = is_alive
        self.ready = ready
        self.now = now
        self._unclaimed_since: dict[str, dict[int, float]] = {}  # task -> attempt -> first seen unclaimed
        self._running_since: dict[str, tuple[int, float]] = {}  # task -> (attempt, first seen running)

    def forget(self, tid: str) -> None:
        self._unclaimed_since.pop(tid, None)
        self._running_since.pop(tid, None)

    def timed(self) -> set[str]:
        """Tasks whose decision may change with time alone (a fallback claim or a timeout due);
        everything else changes only with events or liveness, which re-decide it anyway."""
        return set(self._unclaimed_since) | set(self._running_since)

    def decide(self, task: TaskState, wf: WorkflowState, status: TaskStatus, live: Sequence[PeerCaps],
               running_attempt: int | None = None) -> list[Decision]:
        """What to do about ``task``. ``running_attempt``: the attempt this peer is executing now."""
        tid = task.task_id
        if status in TERMINAL_TASK:
            self.forget(tid)
            return [Forget()]
        if status not in (TaskStatus.CLAIMED, TaskStatus.RUNNING):  # queued
            claim = self._maybe_claim(task, wf, live, task.attempt + 1, None)
            return [claim] if claim else []
        owner = task.owner()
        assert owner is not None
        if owner.peer == self.me:
            return [Own(task.attempt)]
        out: list[Decision] = [Drop()]
        if running_attempt is not None and running_attempt < task.attempt and self._may_continue(task, running_attempt):
            out.append(Claim(task.attempt, continues=True))
            return out
        if not self.ready():
            return out
        if self.is_alive(owner.peer):
            reason = self._timed_out(task, owner.peer, status)
            if reason is None:
                return out
        else:
            reason = f"owner {owner.peer} silent for over {self.config.lease_s:g} s"
        last = task.attempt >= self.config.max_attempts
        # the owner being superseded is not a candidate for the next attempt (dead or too slow)
        ranking = [p for p in self.ranking(task, wf, live) if p != owner.peer]
        if last or not ranking:
            # The last attempt is lost, or no live peer may take the next one: one live peer
            # (eligible or not) records the expiry, so the task fails, or goes back to queued
            # until a peer that serves its model appears, instead of hanging.
            if choose_owner(tid, {p.peer_id: p.capacity for p in live}) == self.me:
                out.append(Expire(task.attempt, reason, retryable=not last))
            return out
        claim = self._maybe_claim(task, wf, live, task.attempt + 1, reason, ranking)
        if claim:
            out.append(claim)
        return out

    def _may_continue(self, task: TaskState, attempt: int) -> bool:
        """We run ``attempt`` and own it; a later attempt was claimed over us (we were judged
        silent). Re-assert it, unless that later attempt's owner is us already."""
        prev = task.owner(attempt)
        cur = task.owner()
        return prev is not None and prev.peer == self.me and cur is not None and cur.peer != self.me \
            and task.attempt == attempt + 1

    def _timed_out(self, task: TaskState, owner: str, status: TaskStatus) -> str | None:
        if status is not TaskStatus.RUNNING:
            return None
        now = self.now()
        seen = self._running_since.get(task.task_id)
        if seen is None or seen[0] != task.attempt:
            seen = self._running_since[task.task_id] = (task.attempt, now)
        since = seen[1]
        limit = self.config.task_timeout_s + self.config.lease_s  # the owner's own timeout lands first
        if now - since <= limit:
            return None
        return f"owner {owner} did not finish within task_timeout_s={self.config.task_timeout_s:g} s"

    def _maybe_claim(self, task: TaskState, wf: WorkflowState, live: Sequence[PeerCaps], attempt: int,
                     why: str | None, ranking: list[str] | None = None) -> Claim | None:
        if not self.ready():
            return None
        if wf.submitter != self.me and not self.compatible(wf.submitter):
            return None  # its submitter runs other consensus settings: we take no work from it
        ranking = self.ranking(task, wf, live) if ranking is None else ranking
        if self.me not in ranking:
            return None
        rank = ranking.index(self.me)
        if rank > 0:
            # The peers ranked above us should have claimed by now; one that advertises the model
            # but never claims (broken, or a fake identity) must not starve the task. Concurrent
            # claims still resolve by score, so an honest top peer that claims late still wins.
            now = self.now()
            first_seen = self._unclaimed_since.setdefault(task.task_id, {}).setdefault(attempt, now)
            if now - first_seen < rank * self.config.lease_s:
                return None
            log.info("claiming a task its higher-ranked peers left unclaimed", task_id=task.task_id, rank=rank)
        return Claim(attempt, why)

    def ranking(self, task: TaskState, wf: WorkflowState, live: Sequence[PeerCaps]) -> list[str]:
        """The live, eligible peers in the rendezvous rule's order for this task; peers that
        already failed it go last when others can take it."""
        eligible = {p.peer_id: p.capacity for p in live if allowed(p, task, wf)}
        failed = {peer for (a, peer), f in task.fails.items()
                  if not f.expired and task.claimed_before(peer, a, f.where)}  # fails that count
        if failed and any(p not in failed for p in eligible):
            eligible = {p: c for p, c in eligible.items() if p not in failed}
        return rank_peers(task.task_id, eligible)


def allowed(peer: PeerCaps, task: TaskState, wf: WorkflowState) -> bool:
    """Whether ``peer`` may run ``task`` at all: it serves the model and the tag allows it."""
    if task.spec.model not in peer.models:
        return False
    if wf.tag is WorkflowTag.P2P_ONLY:
        return peer.peer_id != wf.submitter
    if wf.tag is WorkflowTag.LOCAL_ONLY:
        return peer.peer_id == wf.submitter
    return True
