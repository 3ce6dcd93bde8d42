"""The assignment policy: what this peer should do about one task, given the state and who is alive.

It is the leaderless rule of DESIGN.md made into one decision function, apart from the
scheduler's queue and executor so that it can be tested with an injected clock and no sleeping:

- the top-ranked live, eligible, compatible peer (weighted rendezvous, ``assignment``) claims a
  queued task; the k-th ranked peer claims one its betters left unclaimed for ``k * lease_s``
  (a peer that advertises a model but never claims must not starve the task), and
  ``UNHEARD_GRACE_LEASES`` leases longer while the top peer has shown no sign of holding the
  workflow at all;
- a claim whose owner is silent for ``lease_s`` is recorded lost (an expiry) by the attempt's
  *judge* (``TaskState.judge``: the fold counts an expiry from it alone). When the judge is not
  alive either, or has not acted for two leases, this peer writes a *suspicion* (an expiry the
  fold counts only once a second peer's concurs), and concurs with another peer's suspicion it
  shares. Once the attempt is lost the task is queued again and the next attempt is claimed by
  the usual rule; on the last attempt the expiry fails the task;
- an owner that has been *running* a task for ``task_timeout_s`` (plus a lease of grace for its
  own timeout to land in the clock) loses the attempt the same way: the task's errors say why;
  so does an owner that holds a claim and has started or finished no task at all for that long
  (``_hoarded``: claiming without working must not hold tasks for ever);
- a peer still running a task whose attempt was recorded lost (it was paused, or judged silent
  by mistake) re-asserts it with a *continuation* claim on the next attempt, which the fold
  ranks above any other claim: the work is not done twice;
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
from p2p.scheduler.assignment import rank_peers
from p2p.scheduler.ops import WorkflowTag
from p2p.scheduler.replicas import split_index
from p2p.scheduler.state import TERMINAL_TASK, TaskState, TaskStatus, WorkflowState

log = structlog.get_logger("p2p.scheduler")

# Extra leases a fallback claim waits while the top-ranked peer has written nothing about the
# workflow (no claim, start, result or failure of any of its tasks). A 10,000-task submit is a
# 2 MiB block: under load it reached the other peers only after the submitter's own fallback
# timer (one lease) had run out, and the submitter took a third of the workflow they would
# also claim. A top peer that holds the workflow shows it within a lease by claiming its share.
UNHEARD_GRACE_LEASES = 3


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
    concur: bool = False  # this peer suspected before; now a second peer's suspicion is folded


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
        judge: Callable[[TaskState, int], tuple[str | None, bool]] = lambda task, attempt: (None, False),
        lagging: Callable[[str], bool] = lambda peer: False,
        siblings: Callable[[TaskState], list[TaskState]] = lambda task: [],
        outvoted: Callable[[str], int] = lambda peer: 0,
    ) -> None:
        self.me = me
        self.compatible = compatible
        self.config = config
        self.is_alive = is_alive
        self.ready = ready
        self.now = now
        # (the attempt's judge, whether another peer's suspicion of it is folded)
        self.judge = judge
        self.lagging = lagging  # peers whose announced events we do not hold yet
        self.siblings = siblings  # the other slots of a replicated task
        self.outvoted = outvoted  # how often a peer's replicated results were outvoted
        self._suspect_since: dict[str, tuple[int, float]] = {}  # task -> (attempt, first suspected)
        self._unclaimed_since: dict[str, dict[int, float]] = {}  # task -> attempt -> first seen unclaimed
        self._running_since: dict[str, tuple[int, float]] = {}  # task -> (attempt, first seen running)
        self._claimed_since: dict[str, tuple[int, float]] = {}  # task -> (attempt, first seen claimed)
        self._worked_at: dict[str, float] = {}  # peer -> when we last saw it start or finish a task

    def forget(self, tid: str) -> None:
        self._unclaimed_since.pop(tid, None)
        self._running_since.pop(tid, None)
        self._claimed_since.pop(tid, None)
        self._suspect_since.pop(tid, None)

    def timed(self) -> set[str]:
        """Tasks whose decision may change with time alone (a fallback claim or a timeout due);
        everything else changes only with events or liveness, which re-decide it anyway."""
        return set(self._unclaimed_since) | set(self._running_since) | set(self._suspect_since)

    def decide(self, task: TaskState, wf: WorkflowState, status: TaskStatus, live: Sequence[PeerCaps],
               running_attempt: int | None = None) -> list[Decision]:
        """What to do about ``task``. ``running_attempt``: the attempt this peer is executing now."""
        tid = task.task_id
        if status in TERMINAL_TASK:
            self.forget(tid)
            return [Forget()]
        if running_attempt is not None and self._may_continue(task, running_attempt):
            # we are running an attempt that was recorded lost: re-assert it, whatever else
            return [Claim(running_attempt + 1, continues=True)]
        if status not in (TaskStatus.CLAIMED, TaskStatus.RUNNING):  # queued
            self._suspect_since.pop(tid, None)
            claim = self._maybe_claim(task, wf, live, task.attempt + 1, None)
            return [claim] if claim else []
        owner = task.owner()
        assert owner is not None
        if owner.peer == self.me:
            return [Own(task.attempt)]
        out: list[Decision] = [Drop()]
        if not self.ready():
            return out
        if self.is_alive(owner.peer):
            reason = self._timed_out(task, owner.peer, status)
            if reason is None:
                self._suspect_since.pop(tid, None)
                return out
        else:
            reason = f"owner {owner.peer} silent for over {self.config.lease_s:g} s"
        expire = self._may_expire(task, reason)
        if expire is not None:
            out.append(expire)
        return out

    def _may_expire(self, task: TaskState, reason: str) -> Expire | None:
        """The owner is gone (or too slow): record it if we are the judge; otherwise suspect
        when the judge is gone too or idle for two leases, and concur with a peer's suspicion."""
        attempt = task.attempt
        last = attempt >= self.config.max_attempts
        retryable = not last  # informative only: the fold never takes an expiry's word for it
        judge, others_suspect = self.judge(task, attempt)
        if not last and self.me in (judge, task.submitter):
            return Expire(attempt, reason, retryable)  # counts alone
        now = self.now()
        since = self._suspect_since.get(task.task_id)
        if since is None or since[0] != attempt:
            since = self._suspect_since[task.task_id] = (attempt, now)
        waited = now - since[1] > 2 * self.config.lease_s
        judge_gone = judge is None or not self.is_alive(judge)
        if others_suspect and (judge_gone or waited or last):
            # concur with another peer's suspicion we share; not at once while a live judge
            # may still act (a flood of suspicions must not turn every blip into an expiry)
            return Expire(attempt, f"{reason} (concurring with another peer)", retryable, concur=True)
        if judge_gone or waited or (last and judge == self.me):
            why = "the last attempt: a second peer must concur" if last else f"judge {judge} did not record it"
            return Expire(attempt, f"{reason} ({why})", retryable)
        return None

    def _may_continue(self, task: TaskState, attempt: int) -> bool:
        """We run ``attempt`` and owned it, and it was recorded lost (we were judged silent):
        re-assert it on the next attempt, unless we own that already or it is past the last."""
        if attempt >= self.config.max_attempts or task.attempt > attempt + 1:
            return False
        prev = task.owner(attempt)
        if prev is None or prev.peer != self.me:
            return False
        lost = task.fail_for(attempt)
        if lost is None or not lost.expired:
            return False
        cur = task.owner(attempt + 1)
        return cur is None or cur.peer != self.me

    def worked(self, peer: str) -> None:
        """``peer`` was seen making progress now (an event of its with a start, result or
        failure of its own was folded)."""
        self._worked_at[peer] = self.now()

    def _timed_out(self, task: TaskState, owner: str, status: TaskStatus) -> str | None:
        if status is TaskStatus.CLAIMED:
            return self._hoarded(task, owner)
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

    def _hoarded(self, task: TaskState, owner: str) -> str | None:
        """A live owner that claimed the task and has started or finished nothing at all for
        ``task_timeout_s`` (plus a lease) since we saw the claim loses the attempt. An honest
        owner with a long local queue keeps starting tasks, so it keeps its claims however many
        it holds; a peer that claims (say, with a huge advertised capacity) and never works
        would otherwise hold every task it outranks, alive and heartbeating, for ever.
        Re-decided once a lease (not in ``timed``: it would put every claimed task there)."""
        if self.lagging(owner):
            return None  # its starts may be among the events it announced and we lack
        now = self.now()
        seen = self._claimed_since.get(task.task_id)
        if seen is None or seen[0] != task.attempt:
            seen = self._claimed_since[task.task_id] = (task.attempt, now)
        since = max(seen[1], self._worked_at.get(owner, seen[1]))
        if now - since <= self.config.task_timeout_s + self.config.lease_s:
            return None
        return (f"owner {owner} claimed it and started or finished no task for over "
                f"task_timeout_s={self.config.task_timeout_s:g} s")

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
            wait = rank * self.config.lease_s
            top = ranking[0]
            if top != wf.submitter and top not in wf.heard_from:
                # Nothing shows the top peer even holds the workflow yet (a big submit still on
                # its way to it): give it UNHEARD_GRACE_LEASES more leases before taking its work.
                wait += UNHEARD_GRACE_LEASES * self.config.lease_s
            if now - first_seen < wait:
                return None
            if any(self.lagging(p) for p in ranking[:rank]):
                # a peer above us wrote events we have not received: its claim may be among
                # them (a slow replication under load must not turn into thousands of re-runs)
                return None
            log.info("claiming a task its higher-ranked peers left unclaimed", task_id=task.task_id, rank=rank)
        return Claim(attempt, why)

    def ranking(self, task: TaskState, wf: WorkflowState, live: Sequence[PeerCaps]) -> list[str]:
        """The live, eligible peers in the rendezvous rule's order for this task; peers that
        already failed it go last when others can take it."""
        eligible = {p.peer_id: p.capacity for p in live if allowed(p, task, wf)}
        limit = self.config.max_outvoted
        if any(self.outvoted(p) > limit for p in eligible):
            # outvoted too often (wrong results caught by replicas): no more work from this node
            eligible = {p: c for p, c in eligible.items() if self.outvoted(p) <= limit}
        failed = {peer for (a, peer, _), f in task.fails.items()
                  if not f.expired and task.claimed_before(peer, a, f.where)}  # fails that count
        for (a, _, _), f in task.fails.items():  # owners whose attempt was recorded lost
            if f.expired and task.counts(f) and (own := task.owner(a)) is not None:
                failed.add(own.peer)
        if wf.replicas > 1:
            return self._replica_ranking(task, wf, eligible, failed)
        if failed and any(p not in failed for p in eligible):
            eligible = {p: c for p, c in eligible.items() if p not in failed}
        return rank_peers(task.task_id, eligible)

    def _replica_ranking(self, task: TaskState, wf: WorkflowState, eligible: dict[str, float],
                         failed: set[str]) -> list[str]:
        """Slot ``s`` of a replicated task: the peers in the rendezvous order of the *task*
        (slot 0's id), rotated by ``s``, so each slot's top peer is a different one from the
        start; then without the peers that hold another slot (own its current attempt, not
        ended, or whose result stands there: each peer runs one slot of a task, and the fold
        refuses the claim otherwise); peers that failed this slot go last. Rotating before
        removing keeps a slot's top peer where it was when another peer claims a sibling slot;
        a peer that only lost a race on a sibling holds nothing and stays in."""
        order = rank_peers(wf.task_ids[split_index(task.index, len(wf.task_ids))[0]], eligible)
        if not order:
            return order
        shift = task.replica % len(order)
        order = order[shift:] + order[:shift]
        busy: set[str] = set()
        for sib in self.siblings(task):
            res = sib.result
            if res is not None:
                busy.add(res.peer)
            own = sib.owner()
            if own is not None and sib.fail_for(sib.attempt) is None:
                busy.add(own.peer)
        order = [p for p in order if p not in busy]
        return [p for p in order if p not in failed] + [p for p in order if p in failed]


def allowed(peer: PeerCaps, task: TaskState, wf: WorkflowState) -> bool:
    """Whether ``peer`` may run ``task`` at all: it serves the model and the tag allows it."""
    if task.spec.model not in peer.models:
        return False
    if task.spec.model_cid is not None and dict(peer.model_cids).get(task.spec.model) != task.spec.model_cid:
        return False  # other files under the same name (a fine-tune, a corrupted copy)
    if wf.tag is WorkflowTag.P2P_ONLY:
        return peer.peer_id != wf.submitter
    if wf.tag is WorkflowTag.LOCAL_ONLY:
        return peer.peer_id == wf.submitter
    return True
