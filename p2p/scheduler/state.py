"""Workflow and task state: a pure fold over the clock's events.

Why the fold can be incremental and still agree on every peer: events are applied in causal
order (the clock applies an event only after its parents), and every derived value is a
function of the *set* of events (and of the DAG they form), never of the order in which
concurrent events arrived. Everything a tool shows (state, attempts, peer, error, errors and
their order, results, counts, workflow state) is read from this state, so two peers that hold
the same events answer alike. ``tests/scheduler/test_state.py`` and
``tests/scheduler/test_fold_*.py`` check this with hypothesis, field by field.

Causal order ("X is before Y"). Each folded event gets a version vector, ``{author: highest
seq in its past}`` (its parents' vectors merged, plus itself): a function of the DAG. A record
X (a claim, result, fail, submit or cancel) is *before* record Y when Y's event has X's event in
its past (``vv_Y[author_X] >= seq_X``) and X's stamp is smaller (which orders ops within one
event). The stamp of an op is ``(height, event cid, op index)``: unique, and equal on every peer.
The vector is exact for authors whose events form a chain, as the clock writes them; for an
author seen to fork (two events with one seq, or one that skips its own predecessor) the
answer comes from walking parents instead (``p2p.scheduler.causality``), so "before" is the
DAG's own relation for every author.
Without ``parents``/``seq`` (the old call), "before" falls back to "folded before": arrival order.
What writers must uphold (the clock does): an op is written in an event whose parents are the
clock's heads, which cover every event this state had folded when the op was decided; an event
written over older heads could make the writer's own honest ops look unjustified.

Rules, all set-based:

- Validity: an op about a task or workflow counts only if a submit defining it is *before* the
  op. An honest peer only writes about a task after folding its submit, so its op always
  follows the submit; an op that does not is never justified and is dropped (counted in
  ``State.rejected_total``). Nothing waits for a submit: memory for unknown ids stays bounded.
- ``task.done``/``task.fail`` count only when their author's live claim on that attempt is
  before them (claim, run, report); others are forgeries, kept out and listed by
  ``State.forged()``.
- Authorisation (issue 8): only the submitter's ``workflow.cancel``/``reprioritize``/``accept``
  count. A claim counts only after its author's ``peer.advertise`` listed the task's model (and
  the content id it pins), and weighs at most the capacity advertised then; a claim on attempt
  k+1 needs attempt k ended (a counted failure) in its past. Refused claims are kept and listed
  by ``State.refused()``; these verdicts are read-time functions of the set, memoised per task.
- Owner of an attempt: among its *live* claims, a *continuation* wins; otherwise the highest
  rendezvous score (``assignment.claim_beats``, exact integers). A claim is *late* (not live)
  when a result of the task, a counted fail of the same attempt, or another counting claim on
  the same attempt is before it: it was written by a peer that had seen the attempt taken or
  ended, so it cannot take it over or reopen it.
- Continuation (pause and resume): a ``task.claim`` with ``continues: true`` on attempt k+1, by
  the owner of attempt k that has a ``task.start`` for attempt k, is a live owner re-asserting
  the task it is running after its attempt was recorded lost (it was paused, or the judge
  could not hear it). It beats every other claim on attempt k+1, and its start on attempt k
  counts as a start of k+1. A result for attempt k from its owner stands even after attempt k+1
  is claimed.
- A failure counts for an attempt when it comes from the attempt's owner, or is an expiry that
  counts (``TaskState.counts``: from the attempt's judge or the submitter, or with a second
  peer concurring; the last attempt always takes two). It is *final* on attempt
  ``max_attempts``, or when the owner says not retryable; a task with a final failure is FAILED.
  Every failure is kept: a backdated copy never replaces the original.
- The result that stands: the one the submitter sealed (``workflow.accept``) when there is one;
  else a valid result not *late*, i.e. with no final failure before it, from its attempt's owner
  (a losing claimant's result is kept, never used), the earliest stamp. A later duplicate never
  replaces it.
- Priority: the ``workflow.reprioritize`` with the greatest stamp, else the submit's priority.
- Compaction (docs/compaction.md §4): a ``workflow.compact`` counts when its author is the
  submitter, every submit with a smaller stamp is before it, and the workflow was finished in
  its past; the counting one with the smallest stamp is in force, and the workflow then reads
  as its records restricted to that op's cut (``_freeze``): ops about it that are not before
  the cut are kept in its full records and count for nothing.
- Two submits under one workflow id (only a faulty peer does that): the smaller stamp defines
  the workflow; task ids only other submits define are kept apart (``State.undefined``).

Terminal means terminal (issue 7, item 10). Task precedence: DONE (a result stands), then
FAILED (a final failure), then CANCELLED, then queued/claimed/running. So a result arriving
after the task failed for good — written by a peer that had seen the failure — is kept and shown
(``late_results``) but the task stays FAILED; a failure written after a result changes nothing
(DONE comes first). A ``workflow.cancel`` is *late*, and ignored, when every task of the
workflow was already terminal in the cancel's past (the canceller saw it finished); any other
cancel makes the workflow CANCELLED for good, even when running tasks then finish (their
results are kept and shown; the tasks are DONE). A workflow is COMPLETED when every task is
DONE and no live cancel exists, FAILED when every task is DONE or FAILED and one FAILED.
Hence: if the events a tool has seen make a workflow terminal, any events written by peers
that had seen those (descendants) leave it in that state. What no rule can prevent is two
*concurrent* decisions that each alone are terminal (a cancel concurrent with the last result,
an owner's result concurrent with a final expiry, or a higher-scoring concurrent claim whose
result lands on an attempt another claimant failed): the set holding both resolves them by the
precedence above, the same on every peer, and a peer that saw only one of them may have shown
the other outcome first.

Bounded memory: besides what legitimate events add (tasks, their records, one version vector
per event: one small dict entry per author, a few hundred bytes per event, and events carry
many ops; each event's parents, height and fold index for ``causality``'s walks, and at most
``causality.MEMO_MAX`` remembered walk answers), the fold keeps nothing per rejected op but a counter and the last
``REJECTIONS_KEPT`` rejections (``State.rejected``; ``State.last_rejected`` holds those of the
latest ``apply_event`` call, for the caller to log).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from multiformats import CID
from pydantic import ValidationError

from p2p.scheduler.assignment import claim_beats, judge_of
from p2p.scheduler.causality import VV, Causality
from p2p.scheduler.dropped import Dropped, TaskIds
from p2p.scheduler.replicas import SlotView, Verdict, Vote, decide, slot_index, slots_for, split_index
from p2p.scheduler.ops import (
    AcceptOp,
    AdvertOp,
    CancelOp,
    ClaimOp,
    CompactOp,
    DoneOp,
    MAX_TASKS,
    FailOp,
    ReprioritizeOp,
    StartOp,
    SubmitOp,
    WorkflowTag,
    parse_op,
    submitter_prefix,
    task_id_for,
)

# A causal timestamp: (height, event cid bytes, op index). Unique per op, equal on every peer.
Stamp = tuple[int, bytes, int]

REJECTIONS_KEPT = 256
_LEGACY = ""  # the pseudo-author of the fold-order clock used when events come without parents


class TaskStatus(str, enum.Enum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_TASK = frozenset({TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED})
TERMINAL_WORKFLOW = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})


@dataclass(slots=True, frozen=True)
class Where:
    """Where an op sits in the DAG: its stamp, its event's (author, seq) and version vector,
    and the fold's causality (exact for authors that fork: ``p2p.scheduler.causality``)."""

    stamp: Stamp
    who: str
    seq: int
    vv: VV = field(compare=False, hash=False, repr=False)
    dag: Causality | None = field(default=None, compare=False, hash=False, repr=False)

    def before(self, other: Where) -> bool:
        """Whether this op is causally before ``other`` (its event is in ``other``'s past)."""
        if not (self.stamp < other.stamp and other.vv.get(self.who, 0) >= self.seq):
            return False
        dag = other.dag
        if dag is None or self.who not in dag.forked:
            return True
        return dag.in_past(self.stamp[1], self.who, self.seq, self.stamp[0], other.stamp[1])


@dataclass(slots=True, frozen=True)
class Spec:
    """What one task runs, as the fold keeps it. ``TaskSpec`` is the op's wire form, a pydantic
    model of about 1.1 KB each; this plain record of the same fields is about 100 B, and the
    tasks of a compact submit share its template's strings and params (read-only) and the op's
    input strings. Everything downstream reads the fields only."""

    model: str
    model_cid: str | None
    input: str  # "" in a chunked submit: the input is in the block ``ref`` names
    task: str | None
    params: dict[str, Any]
    # (chunk CID, position) of a chunked submit's input (``SubmitOp.chunks``), resolved by the
    # peers that need the text (``p2p.content.inputs``); None when the input is inline
    ref: tuple[Any, int] | None = None


def _spec(op: SubmitOp, i: int) -> Spec:
    if op.chunks is not None:
        t = op.template
        assert t is not None
        return Spec(t.model, t.model_cid, "", t.task, t.params, op.chunk_of(i))
    if op.tasks is not None:
        t: Any = op.tasks[i]
        return Spec(t.model, t.model_cid, t.input, t.task, t.params)
    t, inputs = op.template, op.inputs
    assert t is not None and inputs is not None
    return Spec(t.model, t.model_cid, inputs[i], t.task, t.params)


@dataclass(slots=True)
class Claim:
    peer: str
    capacity: float
    stamp: Stamp
    supersedes: str | None = None
    continues: bool = False
    where: Where | None = field(default=None, repr=False)


@dataclass(slots=True)
class Outcome:
    """A task.done or task.fail as recorded in the clock."""

    peer: str
    attempt: int
    stamp: Stamp
    result: dict[str, Any] | None = None
    result_cid: Any = None
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = True
    expired: bool = False
    cached: bool = False
    where: Where | None = field(default=None, repr=False)


@dataclass(slots=True, eq=False)
class Advert:
    """A ``peer.advertise`` as folded: what its author offered from then on."""

    where: Where
    capacity: float
    models: frozenset[str]
    model_cids: dict[str, str]


def _before(a: Where | None, b: Where | None) -> bool:
    return a is not None and b is not None and a.before(b)


@dataclass(slots=True, eq=False)
class Shared:
    """What every task's rules read besides the task's own records: the peers' adverts. A
    verdict cached on a record never needs recomputing when an advert arrives: an advert folded
    later is never before a record folded earlier (causality is exact, forks included)."""

    adverts: dict[str, list[Advert]] = field(default_factory=dict)
    # the replicated-slot rule of State (``_replica_refusal``): why a claim on a slot does not
    # count, judged from the claim's past; None without replicated workflows
    replica_check: Any = None

    def advert_before(self, peer: str, where: Where | None) -> Advert | None:
        """``peer``'s latest ``peer.advertise`` causally before ``where``, over every advert
        held (a function of the set, never of which arrived first)."""
        if where is None:
            ads = self.adverts.get(peer)
            return ads[-1] if ads else None
        for adv in reversed(self.adverts.get(peer, ())):
            if adv.where.before(where):
                return adv
        return None


@dataclass(slots=True)
class TaskState:
    task_id: str
    workflow_id: str
    index: int
    spec: Spec
    # Which of its logical task's replica slots this is (0 for every task of a workflow with
    # replicas=1), and whether its workflow is replicated; see p2p/scheduler/replicas.py
    replica: int = 0
    replicated: bool = False
    claims: dict[int, dict[str, Claim]] = field(default_factory=dict)
    started: dict[tuple[int, str], Where | None] = field(default_factory=dict)  # earliest start
    results: dict[Stamp, Outcome] = field(default_factory=dict)  # keyed by stamp: idempotent
    # (attempt, peer) -> its failure; expiries too, whether they count or not (``counts``)
    # (attempt, author, stamp) -> a failure; every one is kept (a backdated copy of its own
    # fail must not replace the original, which later claims were justified by); expiries
    # too, whether they count or not (``counts``)
    fails: dict[tuple[int, str, Stamp], Outcome] = field(default_factory=dict)
    max_attempts: int = 3
    # the submitter's seals: accept op stamp -> (sealed result's stamp, where the seal is)
    accepts: dict[Stamp, tuple[tuple[bytes, int], Where]] = field(default_factory=dict)
    submitter: str = ""
    submit_where: Where | None = field(default=None, repr=False)
    shared: Shared = field(default_factory=Shared, repr=False)
    # owners as this object's records give them: cleared on any change
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    # verdicts on one claim or expiry, which depend only on that record's past (and the
    # adverts): shared with the restricted views of this task, so each is derived once
    _verdicts: dict[Any, Any] = field(default_factory=dict, repr=False)
    # A forking author's other claims and starts on one attempt (("claim"|"start", attempt,
    # author) -> records): only the earliest stamp counts, but a cut may hold a later one and
    # not the earliest, and ``restricted`` must then see that one (empty for honest authors).
    _others: dict[tuple[str, int, str], list[Any]] = field(default_factory=dict, repr=False)

    def changed(self) -> None:
        self._memo.clear()
        self._verdicts.clear()

    def _cache(self) -> dict[Any, Any]:
        return self._memo

    @property
    def attempt(self) -> int:
        """The highest attempt with a claim that counts (0: never claimed). A refused claim
        (no advert, a takeover of an attempt that had not ended) moves nothing."""
        memo = self._cache()
        got = memo.get("attempt")
        if got is None:
            got = memo["attempt"] = max((k for k, claims in self.claims.items()
                                         if any(self.refusal(c, k) is None for c in claims.values())), default=0)
        return got

    def holds_claim(self, peer: str, attempt: int) -> bool:
        return peer in self.claims.get(attempt, ())

    # ------------------------------------------------------------ what counts

    def refusal(self, c: Claim, attempt: int) -> str | None:
        """Why claim ``c`` on ``attempt`` does not count (None when it does): its author had not
        advertised the task's model (or the pinned content id) before it, or it claims attempt
        k+1 while attempt k had not ended in its past (a takeover needs a counted failure or
        expiry first). Its weight is then at most the capacity advertised before it."""
        self._cache()
        memo = self._verdicts
        key = ("refusal", attempt, c.peer, c.stamp)
        if key in memo:
            return memo[key]
        why: str | None = None
        adv = self._advert(c)
        spec = self.spec
        if adv is None:
            why = "claim without a peer.advertise of its author before it"
        elif spec.model not in adv.models:
            why = f"claim for model {spec.model[:128]!r}, which its author did not advertise"
        elif spec.model_cid is not None and adv.model_cids.get(spec.model) != spec.model_cid:
            why = (f"claim for model {spec.model[:128]!r} pinned to {spec.model_cid[:80]}, but its author advertised "
                   f"{str(adv.model_cids.get(spec.model))[:80]} (other files under the same name)")
        elif attempt >= 2 and c.where is not None and not self.ended_before(attempt - 1, c.where):
            why = f"claim on attempt {attempt} while attempt {attempt - 1} had not failed or expired before it"
        elif self.replicated and c.where is not None and self.shared.replica_check is not None:
            memo[key] = None  # a cycle (forks only) resolves to "counts"
            why = self.shared.replica_check(self, c)
        memo[key] = why
        return why

    def _advert(self, c: Claim) -> Advert | None:
        """The advert before claim ``c`` (memoised: a peer may have advertised many times)."""
        self._cache()
        key = ("advert", c.peer, c.stamp)
        if key not in self._verdicts:
            self._verdicts[key] = self.shared.advert_before(c.peer, c.where)
        return self._verdicts[key]

    def weight(self, c: Claim) -> float:
        """A claim's weight in the race: its word, capped by what its author advertised before."""
        adv = self._advert(c)
        return c.capacity if adv is None else min(c.capacity, adv.capacity)

    def counts(self, f: Outcome) -> bool:
        """Whether failure ``f`` counts for its attempt. An owner's own failure does (when its
        claim is before it). An expiry says "the owner is gone": silence is not in the events,
        so the fold checks the *right* to say it. The attempt must have had an owner in the
        expiry's past, not the expirer; and the expirer must be that attempt's judge
        (``judge``: one peer per attempt by rendezvous among the peers active in the workflow,
        read from the owner claim's past), or concur with another peer's expiry of the same
        attempt written before it. So one admitted peer expires only the attempts it judges (a
        1/N share, a fresh judge per attempt), a live owner answers a wrong expiry with a
        continuation, and a judge that is gone too is replaced by two peers that agree. A
        function of the expiry's past, so of the set."""
        if not f.expired:
            return self.claimed_before(f.peer, f.attempt, f.where)
        return self.expiry_verdict(f) is None

    def expiry_verdict(self, f: Outcome) -> str | None:
        """Why expiry ``f`` does not count (None when it does)."""
        self._cache()
        memo = self._verdicts
        key = ("expiry", f.stamp)
        if key in memo:
            return memo[key]
        view = self if f.where is None else self.restricted(f.where)
        own = view.owner(f.attempt)
        why: str | None
        if own is None:
            why = f"expiry of attempt {f.attempt}, which nobody owned before it"
        elif own.peer == f.peer:
            why = "a peer does not expire its own attempt (it fails it)"
        elif own.where is None or own.where.who == _LEGACY:
            why = None  # the old parentless fold: no causality to judge by
        else:
            judge = view.judge(f.attempt, own)
            last = f.attempt >= self.max_attempts  # it fails the task for good: two peers must agree
            if not last and f.peer in (judge, self.submitter):
                why = None  # the judge, or the submitter, which steers its workflow anyway
            elif any(g.expired and g.attempt == f.attempt and g.peer != f.peer and _before(g.where, f.where)
                     for g in self.fails.values()):
                why = None  # a second peer concurs
            elif last:
                why = f"expiry of the last attempt ({f.attempt}) not counted: it fails the task for good, so another peer must concur"
            elif judge is None:
                why = f"expiry of attempt {f.attempt} not counted: it has no judge (only its owner was active); another peer must concur"
            else:
                why = f"expiry of attempt {f.attempt} not counted: its judge is {judge}; another peer must concur"
        memo[key] = why
        return why

    def judge_candidates(self, attempt: int, owner: Claim) -> set[str]:
        """Who may judge ``attempt`` lost: the workflow's submitter and every peer the owner's
        claim shows active since the submit (it had seen an event of that peer the submit had
        not), minus the owners of this and earlier attempts. Taken from the *claim's* past,
        which a judge cannot choose, so an expirer cannot shrink the set by writing over old
        parents; peers gone before the workflow existed are not in it. Two version vectors
        decide it, so forks and arrival order do not."""
        cands = {self.submitter} if self.submitter else set()
        c, sub = owner.where, self.submit_where
        if c is not None and sub is not None:
            cands.update(who for who, seq in c.vv.items() if seq > sub.vv.get(who, 0) and who != _LEGACY)
        for k in range(1, attempt + 1):
            own = self.owner(k)
            if own is not None:
                cands.discard(own.peer)
        return cands

    def judge(self, attempt: int, owner: Claim | None = None) -> str | None:
        """The peer whose expiry of ``attempt`` counts alone; None when there is none (only the
        owner was active when it claimed, or the old parentless fold): then two peers must agree."""
        owner = owner if owner is not None else self.owner(attempt)
        if owner is None or owner.where is None or owner.where.who == _LEGACY:
            return None
        return judge_of(self.task_id, attempt, self.judge_candidates(attempt, owner))

    def claimed_before(self, peer: str, attempt: int, where: Where | None) -> bool:
        """Whether ``peer``'s claim on ``attempt`` counts and is causally before ``where`` (an
        outcome it wrote): an honest peer claims, then runs, then reports; a report whose claim
        comes later (or concurrently), or does not count, never counts either."""
        c = self.claims.get(attempt, {}).get(peer)
        if c is None or self.refusal(c, attempt) is not None or self._late(c, attempt):
            return False
        return where is None or c.where is None or c.where.before(where)

    def _late(self, c: Claim, attempt: int) -> bool:
        """``_late_claim``, memoised (it recurses only into records before ``c``)."""
        memo = self._cache()
        key = ("late", attempt, c.peer)
        got = memo.get(key)
        if got is None:
            memo[key] = False  # a cycle (forks only) resolves to "not late"
            got = memo[key] = self._late_claim(c, attempt)
        return got

    def _late_claim(self, c: Claim, attempt: int) -> bool:
        """Written by a peer that had seen the task done, this attempt failed, or another
        counting claim on this attempt: an honest peer claims only a queued task, so a claim
        over a known one is a takeover, and whatever its capacity it never displaces the claim
        before it (nor an owner that started or finished). Only concurrent claims race, by
        score. A continuation is the previous owner itself, so exempt."""
        if c.where is None:
            return False
        if not self._continuation(c, attempt):  # only a genuine continuation is exempt
            for peer, other in self.claims.get(attempt, {}).items():
                if peer != c.peer and _before(other.where, c.where) and self.refusal(other, attempt) is None:
                    return True
        if not (self.results or self.fails):
            return False
        for o in self.results.values():
            if _before(o.where, c.where) and self.claimed_before(o.peer, o.attempt, o.where):
                return True
        for (a, peer, _), f in self.fails.items():
            if a == attempt and _before(f.where, c.where) and self.counts(f):
                return True
        return False

    def _continuation(self, c: Claim, attempt: int) -> bool:
        if not c.continues or attempt < 2:
            return False
        prev = self.owner(attempt - 1)
        return prev is not None and prev.peer == c.peer and (attempt - 1, c.peer) in self.started

    def owner(self, attempt: int | None = None) -> Claim | None:
        """The winning live claim of an attempt (see the module docstring); None if none."""
        k = self.attempt if attempt is None else attempt
        claims = self.claims.get(k)
        if not claims:
            return None
        memo = self._cache()
        key = ("owner", k)
        if key in memo:
            return memo[key]
        memo[key] = None  # a cycle through a refusal or an expiry resolves to "no owner yet"
        best: Claim | None = None
        prev: list[Claim | None] = []  # owner(k - 1), computed at most once: linear, not A ** k
        for c in claims.values():
            if self.refusal(c, k) is not None or self._late(c, k):
                continue
            if c.continues and k >= 2 and (k - 1, c.peer) in self.started:
                if not prev:
                    prev.append(self.owner(k - 1))
                if prev[0] is not None and prev[0].peer == c.peer:
                    best = c  # at most one peer owns attempt k - 1; an author's earliest claim counts
                    break
            if best is None or claim_beats(self.task_id, (c.peer, self.weight(c)), (best.peer, self.weight(best))):
                best = c
        memo[key] = best
        return best

    def started_attempt(self, attempt: int, peer: str) -> bool:
        """Whether ``peer`` started ``attempt`` (a continuation's start on the attempt before counts)."""
        if (attempt, peer) in self.started:
            return True
        own = self.owner(attempt)
        return own is not None and own.peer == peer and own.continues and self._continuation(own, attempt) \
            and (attempt - 1, peer) in self.started

    @property
    def valid_results(self) -> list[Outcome]:
        """Results whose author holds a claim on their attempt, oldest first."""
        return sorted((o for o in self.results.values() if self.claimed_before(o.peer, o.attempt, o.where)),
                      key=lambda o: o.stamp)

    def fail_for(self, attempt: int) -> Outcome | None:
        """The failure recorded for an attempt, by its owner or as a counted expiry; the
        earliest stamp when there are several (never arrival order)."""
        owner = None
        found = []
        for (a, peer, _), f in self.fails.items():
            if a != attempt:
                continue
            if f.expired:
                if self.counts(f):
                    found.append(f)
                continue
            owner = owner or self.owner(attempt)
            if owner is not None and peer == owner.peer and self.claimed_before(peer, a, f.where):
                found.append(f)
        return min(found, key=lambda f: f.stamp) if found else None

    def _is_final(self, f: Outcome) -> bool:
        """Final on the last attempt, or when the owner itself says a retry cannot help; an
        expiry's ``retryable`` is another peer's word about someone else's run: ignored."""
        return f.attempt >= self.max_attempts or (not f.expired and not f.retryable)

    def final_fails(self) -> list[Outcome]:
        """Failures that end the task for good, oldest first."""
        out = []
        for attempt in sorted({k[0] for k in self.fails}):
            f = self.fail_for(attempt)
            if f is not None and self._is_final(f):
                out.append(f)
        return out

    def _split_results(self) -> tuple[list[Outcome], list[Outcome]]:
        finals = self.final_fails()
        standing, late = [], []
        for o in self.valid_results:
            (late if any(_before(f.where, o.where) for f in finals) else standing).append(o)
        return standing, late

    @property
    def late_results(self) -> list[Outcome]:
        """Valid results written after the task had failed for good: kept and shown, not used."""
        return self._split_results()[1]

    @property
    def result(self) -> Outcome | None:
        """The result that stands: the sealed one, else the earliest valid result from the owner
        of its attempt (the winning claim). A peer that merely claimed too (a race it lost, or a
        forger writing a shallow claim + done) never provides it, not even until the owner
        reports; among owners' results, later duplicates never replace the first."""
        memo = self._cache()  # memoised like status: an export or a status page reads it per task
        key = ("result", self.max_attempts)
        if key in memo:
            return memo[key]
        memo[key] = got = self._standing()
        return got

    def _standing(self) -> Outcome | None:
        sealed = self.sealed()
        if sealed is not None:
            return sealed
        standing = self._split_results()[0]
        if not standing:
            return None
        # Only an attempt's owner's result stands. A losing claimant's result standing in until
        # the owner reports made the task DONE, so the owner dropped it and the submitter sealed
        # the loser's answer: a hostile peer claiming everything and answering at once got its
        # zero vectors accepted on every task it was faster on, whatever races it lost (found
        # under a CPU hog, where honest owners were slower). For a replica it also kept a verdict
        # from flipping when the owner reported later.
        owned = [o for o in standing if (own := self.owner(o.attempt)) is not None and own.peer == o.peer]
        return owned[0] if owned else None

    def sealed(self) -> Outcome | None:
        """The result the submitter sealed (``workflow.accept``): the earliest seal naming a
        valid result in its own past. It stands whatever arrives later, concurrent or not."""
        for stamp in sorted(self.accepts):
            (cid, index), where = self.accepts[stamp]
            for o in self.results.values():
                if o.stamp[1] == cid and o.stamp[2] == index and _before(o.where, where) \
                        and self.claimed_before(o.peer, o.attempt, o.where):
                    return o
        return None

    def errors(self) -> list[dict[str, Any]]:
        """Every failed attempt's error, by attempt; within an attempt the failures that count
        by stamp, then the reason an old-style superseding claim gave. A function of the set
        alone: the superseding reason is the owner's of the next attempt when it gives one,
        else the one with the smallest stamp."""
        keyed: list[tuple[tuple[int, int, Stamp], dict[str, Any]]] = []
        for f in self.fails.values():
            if self.counts(f):
                keyed.append(((f.attempt, 0, f.stamp),
                              {"attempt": f.attempt, "peer": f.peer, "error": f.error, "expired": f.expired}))
        for attempt, claims in self.claims.items():
            with_reason = [c for c in claims.values() if c.supersedes and self.refusal(c, attempt) is None]
            if not with_reason:
                continue
            own = self.owner(attempt)
            pick = own if own is not None and own.supersedes else min(with_reason, key=lambda c: c.stamp)
            keyed.append(((attempt - 1, 1, pick.stamp),
                          {"attempt": attempt - 1, "peer": None, "error": pick.supersedes, "expired": True}))
        keyed.sort(key=lambda kv: kv[0])
        return [v for _, v in keyed]

    def status(self, cancelled: bool, max_attempts: int) -> TaskStatus:
        if self.max_attempts != max_attempts:
            self.max_attempts = max_attempts
            self.changed()
        memo = self._cache()
        key = ("status", cancelled)
        got = memo.get(key)
        if got is None:
            got = memo[key] = self._status(cancelled)
        return got

    def _status(self, cancelled: bool) -> TaskStatus:
        if self.results and self.result is not None:
            return TaskStatus.DONE
        if self.fails and self.final_fails():
            return TaskStatus.FAILED
        if cancelled:
            return TaskStatus.CANCELLED
        attempt = self.attempt
        if not attempt:
            return TaskStatus.QUEUED
        if self.fails and self.fail_for(attempt) is not None:
            return TaskStatus.QUEUED  # retryable and not the last: the next attempt is up for claiming
        owner = self.owner(attempt)
        if owner is None:  # only late or refused claims: nobody live holds it
            return TaskStatus.QUEUED
        if (attempt, owner.peer) in self.started:
            return TaskStatus.RUNNING
        if owner.continues and (attempt - 1, owner.peer) in self.started and self._continuation(owner, attempt):
            return TaskStatus.RUNNING  # a continuation: its start on the attempt before counts
        return TaskStatus.CLAIMED

    def as_of(self, cut: Where) -> TaskState:
        """``restricted(cut)``, or this very object when every record is before ``cut`` — the
        usual case for a compaction's cut, which a finished task's records all precede. A
        compacted workflow's view then shares its tasks with the full records instead of
        copying them (``_freeze``), and a late op copies a task before it lands (``_apply_op``)."""
        every = (all(_before(c.where, cut) for claims in self.claims.values() for c in claims.values())
                 and all(_before(o.where, cut) for o in self.results.values())
                 and all(_before(f.where, cut) for f in self.fails.values())
                 and all(w is None or _before(w, cut) for w in self.started.values())
                 and all(_before(v[1], cut) for v in self.accepts.values())
                 and not self._others)
        return self if every else self.restricted(cut)

    def restricted(self, cut: Where) -> TaskState:
        """This task as it stood in the past of ``cut`` (only records before it)."""
        self._cache()
        t = TaskState(self.task_id, self.workflow_id, self.index, self.spec, replica=self.replica,
                      replicated=self.replicated, max_attempts=self.max_attempts,
                      submitter=self.submitter, submit_where=self.submit_where, shared=self.shared,
                      _verdicts=self._verdicts)
        others = self._others
        for a, claims in self.claims.items():
            kept: dict[str, Claim] = {}
            for p, c in claims.items():
                best = c if _before(c.where, cut) else None
                for o in others.get(("claim", a, p), ()) if others else ():
                    if _before(o.where, cut) and (best is None or o.stamp < best.stamp):
                        best = o
                if best is not None:
                    kept[p] = best
            if kept:
                t.claims[a] = kept
        t.results = {s: o for s, o in self.results.items() if _before(o.where, cut)}
        t.fails = {k: f for k, f in self.fails.items() if _before(f.where, cut)}
        for k, w in self.started.items():
            best = w if w is None or _before(w, cut) else None
            for o in others.get(("start", *k), ()) if others else ():
                if _before(o, cut) and (best is None or o.stamp < best.stamp):
                    best = o
            if best is not None or w is None:
                t.started[k] = best
        t.accepts = {k: v for k, v in self.accepts.items() if _before(v[1], cut)}
        if (len(t.results) == len(self.results) and len(t.fails) == len(self.fails)
                and len(t.accepts) == len(self.accepts) and t.started == self.started and t.claims == self.claims):
            # the same records (the usual case: a cut over everything this task holds): what
            # was derived from them holds for the copy too
            t._memo = dict(self._memo)
        return t

    def ended_before(self, attempt: int, where: Where) -> bool:
        """Whether ``attempt`` had ended in the past of ``where``: its owner failed it, or an
        expiry that counts recorded it lost. Only then may anyone claim the next attempt."""
        candidates = [f for (a, _, _), f in self.fails.items() if a == attempt and _before(f.where, where)]
        if not candidates:
            return False
        return self.restricted(where).fail_for(attempt) is not None

    def refusals(self) -> list[tuple[Stamp, str, str, str]]:
        """(stamp, author, op, reason) of every claim and expiry of this task that does not count."""
        out = []
        for attempt, claims in self.claims.items():
            for c in claims.values():
                why = self.refusal(c, attempt)
                if why is not None:
                    out.append((c.stamp, c.peer, "task.claim", why))
        for f in self.fails.values():
            if f.expired:
                why = self.expiry_verdict(f)
                if why is not None:
                    out.append((f.stamp, f.peer, "task.fail", why))
        return out


@dataclass(slots=True)
class SubmitRecord:
    where: Where
    op: SubmitOp

    @property
    def stamp(self) -> Stamp:
        return self.where.stamp


@dataclass(slots=True)
class CompactRecord:
    """A ``workflow.compact`` op as folded: where it sits, and the snapshot it names."""

    where: Where
    snapshot: Any  # the snapshot's root CID (never read by the fold)
    # whether it counts (its workflow finished in its past), once judged: its past is folded
    # before it, so only a forking author's late op can change that (then it is judged again)
    counts: bool | None = None

    @property
    def stamp(self) -> Stamp:
        return self.where.stamp


@dataclass(slots=True)
class WorkflowState:
    workflow_id: str
    name: str
    tag: WorkflowTag
    submitter: str
    created_at: float
    task_ids: list[str]
    order: int  # local fold order, used only to break heap ties
    priority: int
    priority_stamp: Stamp
    cancelled: bool = False
    submit_stamp: Stamp = (0, b"", 0)
    submits: list[SubmitRecord] = field(default_factory=list, repr=False)  # by stamp; [0] defines
    reprioritized: tuple[Stamp, int] | None = None
    cancel_records: list[Where] = field(default_factory=list, repr=False)
    replicas: int = 1  # distinct peers that must agree on each task's result
    cache: bool = True  # peers may answer its tasks from the result cache
    cancels: int = 0  # live cancels
    late_cancels: int = 0  # cancels written after the workflow had finished: ignored
    # Authors of any task op of this workflow: peers known to hold its submit. A local hint for
    # the policy's fallback claims (never read by the fold's verdicts, so it need not agree).
    heard_from: set[str] = field(default_factory=set, repr=False)
    # every reprioritise, by stamp (``reprioritized`` is the latest): the priority at a cut
    reprio_records: list[tuple[Where, int]] = field(default_factory=list, repr=False)
    # the submitter's compact ops, by stamp; ``compacted`` is the one in force (docs/compaction.md §4)
    compacts: list[CompactRecord] = field(default_factory=list, repr=False)
    compacted: CompactRecord | None = None
    # the submitter's control ops folded while the workflow is compacted and not before its
    # cut: they cannot change its view, so they wait here, unfolded, for a re-freeze (only a
    # fork brings one) instead of costing a thaw each (a submit re-judges: ``_apply_op``)
    deferred: list[tuple[Any, str, Where]] = field(default_factory=list, repr=False)
    # A lazy workflow (its defining submit is ``SubmitOp.lazy``: chunked, one replica) holds a
    # task's record only once an op is about it; ``virtual`` of its defined tasks have none yet.
    # Such a task is exactly a fresh record (``State.task`` makes one to read): queued, or
    # cancelled with its workflow. So a million-task submit costs the fold a few hundred bytes.
    lazy: bool = False
    virtual: int = 0
    # ids of the records a lazy submit's tasks got (in ``tasks``, ``undefined`` or the full
    # records of a frozen view): what a rebuild or a cancel visits, never the whole range
    made: set[str] = field(default_factory=set, repr=False)

    @property
    def slots(self) -> int:
        """Slots per task (``replicas.slots_for``): 1 without replication."""
        return slots_for(self.replicas)

    def slot_ids(self, index: int) -> list[str]:
        """The task ids of logical task ``index``'s slots, slot 0 (the task's own id) first."""
        n = len(self.task_ids)
        return [task_id_for(self.workflow_id, slot_index(index, s, n)) for s in range(self.slots)]

    def physical_ids(self) -> list[str]:
        """Every task id the fold keeps for this workflow: all slots of all tasks."""
        n = len(self.task_ids)
        return [task_id_for(self.workflow_id, p) for p in range(n * self.slots)]


@dataclass(slots=True)
class Rejection:
    event_cid: bytes
    author: str
    op: str
    reason: str


@dataclass
class State:
    """Everything derived from the clock. Mutated only by ``apply_event``."""

    max_attempts: int = 3
    workflows: dict[str, WorkflowState] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    # task ids only a non-defining duplicate submit defines (a faulty submitter): kept apart
    undefined: dict[str, TaskState] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)  # the latest, at most 2 * REJECTIONS_KEPT
    rejected_total: int = 0
    # the peers' peer.advertise ops, by stamp (a chain per author: rarely more than a few)
    shared: Shared = field(default_factory=Shared, repr=False)
    # those of the last apply_event call (the first REJECTIONS_KEPT): what a caller logs
    last_rejected: list[Rejection] = field(default_factory=list)
    events: int = 0
    # Version vectors, parents and heights of folded events (by cid bytes), for causal order.
    _causal: Causality = field(default_factory=Causality, repr=False)
    _folded: int = 0  # the fold-order clock of the old, parentless call
    # Derived caches, kept current by ``refresh`` for the tasks each event touches, so status
    # and progress reads cost O(1) per task instead of re-deriving every task on each read.
    _status: dict[str, TaskStatus] = field(default_factory=dict, repr=False)
    _counts: dict[str, dict[TaskStatus, int]] = field(default_factory=dict, repr=False)
    _claimed: set[str] = field(default_factory=set, repr=False)  # tasks holding a claim that counts
    _claimed_per_wf: dict[str, int] = field(default_factory=dict, repr=False)
    # Replicated workflows (replicas.py): each logical task's verdict and status (keyed by the
    # id of its slot 0; ``_status`` holds every slot's own status, which the scheduler acts on),
    # and how often each peer's result was outvoted.
    _verdict: dict[str, Verdict] = field(default_factory=dict, repr=False)
    _lstatus: dict[str, TaskStatus] = field(default_factory=dict, repr=False)
    _verdict_sig: dict[str, tuple[Any, ...]] = field(default_factory=dict, repr=False)
    outvoted: dict[str, int] = field(default_factory=dict)
    # The listing index (``listed``): every workflow's key (-created_at, id), newest first, in
    # one sorted list and in its status's, kept by ``apply_event`` for the workflows an event
    # touched, so a listing costs what it returns, not a sort of every workflow. Derived from
    # the state alone, so every peer holding the same events lists the same workflows.
    _listing: list[tuple[float, str]] = field(default_factory=list, repr=False)
    _listing_by: dict[WorkflowStatus, list[tuple[float, str]]] = field(default_factory=dict, repr=False)
    _listed_as: dict[str, tuple[tuple[float, str], WorkflowStatus]] = field(default_factory=dict, repr=False)
    # Compacted workflows (``_freeze``): ``workflows``/``tasks`` hold their views at the cut in
    # force; the full records, which every op keeps updating, wait here (a compact op with a
    # smaller stamp, a late submit, or an op before a compact op re-derives the view from them).
    _full_wf: dict[str, WorkflowState] = field(default_factory=dict, repr=False)
    _full_tasks: dict[str, TaskState] = field(default_factory=dict, repr=False)
    _frozen_ids: dict[str, list[str]] = field(default_factory=dict, repr=False)
    # ops about a compacted workflow folded after its compaction and not before its cut: they do
    # not count. A diagnostic only: whether such an op came before or after the compact op
    # depends on arrival, so this count may differ between peers (nothing else does).
    late_for_compacted: int = 0
    # workflow id -> events that touched it so far (a compactor checks nothing moved while it
    # built a snapshot a slice at a time)
    changes: dict[str, int] = field(default_factory=dict, repr=False)
    # Compacted workflows whose records this peer dropped (``drop``, docs/compaction.md §5):
    # ``workflows`` keeps a slim entry (no submits, ``TaskIds`` for its ids, no tasks), counts
    # stay in ``_counts``, and the answers come from the verified snapshot. Ops about them are
    # skipped (``dropped_ops`` counts them): on a restart that is most of a compacted history.
    dropped: dict[str, Dropped] = field(default_factory=dict, repr=False)
    dropped_ops: int = 0
    # dropped workflows whose result blocks this peer deleted after results.retention_s
    # (p2p.compaction.expiry): local, like dropping; their pages show result_cid only
    expired: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.shared.replica_check = self._replica_refusal

    def reject(self, event_cid: bytes, author: str, op: str, reason: str) -> None:
        rej = Rejection(event_cid, author, op, reason)
        self.rejected_total += 1
        if len(self.last_rejected) < REJECTIONS_KEPT:
            self.last_rejected.append(rej)
        self.rejected.append(rej)
        if len(self.rejected) > 2 * REJECTIONS_KEPT:
            del self.rejected[:-REJECTIONS_KEPT]

    def note(self, event_cid: bytes, author: str, op: str, reason: str) -> None:
        """An op kept but not counting (a refused claim, an expiry without the right to it):
        for the caller to log, like a rejection, but not a rejection: whether it counts is
        decided from the whole set (``refused``), so a later fork cannot make peers disagree."""
        if len(self.last_rejected) < REJECTIONS_KEPT:
            self.last_rejected.append(Rejection(event_cid, author, op, reason))

    def refresh(self, task_ids: Iterable[str]) -> None:
        """Recompute the cached status of these tasks and their workflows' counts."""
        decided: set[str] = set()  # replicated logical tasks already re-decided in this call
        for tid in task_ids:
            task = self.tasks.get(tid)
            if task is None:
                continue
            wid = task.workflow_id
            wf = self.workflows[wid]
            if wf.replicas > 1:
                self._refresh_replicated(task, wf, decided)
                continue
            new = task.status(wf.cancelled, self.max_attempts)
            self._count(wid, tid, self._status.get(tid), new)
            self._status[tid] = new
            self._note_claimed(task, tid, wid)

    def _count(self, wid: str, tid: str, old: TaskStatus | None, new: TaskStatus) -> None:
        counts = self._counts.get(wid)
        if counts is None:  # built once per workflow, never per task (the issue's hot spot)
            counts = self._counts[wid] = dict.fromkeys(TaskStatus, 0)
        if old is not new:
            if old is not None:
                counts[old] -= 1
            counts[new] += 1

    def _note_claimed(self, task: TaskState, key: str, wid: str) -> None:
        """Whether the task holds a claim that counts (then its workflow has started). Claims
        are never removed and no advert folded later changes whether one counts (causality is
        exact, forks included), so folding only turns it on; it turns off only when a
        compaction's re-judgement puts a task's view back in place of its records (or the
        reverse), where the view may hold fewer claims."""
        claimed = bool(task.claims) and task.attempt > 0
        if claimed and key not in self._claimed:
            self._claimed.add(key)
            self._claimed_per_wf[wid] = self._claimed_per_wf.get(wid, 0) + 1
        elif not claimed and key in self._claimed:
            self._claimed.discard(key)
            self._claimed_per_wf[wid] -= 1

    # ------------------------------------------------------------ replicas

    def slots_of(self, wf: WorkflowState, index: int) -> list[TaskState]:
        return [self.tasks[t] for t in wf.slot_ids(index)]

    def group_verdict(self, wf: WorkflowState, slots: Sequence[TaskState]) -> Verdict:
        """Decide a replicated task from its slots' own statuses and standing results."""
        return decide(wf.replicas, [self._slot_view(t) for t in slots])

    def _slot_view(self, t: TaskState) -> SlotView:
        """A slot's vote: its owner's result, or its owner's final failure (by error class);
        void for a cached result or a last attempt others recorded lost."""
        st = t.status(False, self.max_attempts)
        if st is TaskStatus.DONE:
            r = t.result
            assert r is not None
            if r.cached:
                return SlotView(void=True)
            return SlotView(vote=Vote(t.replica, r.peer, r.result, r.result_cid))
        if st is TaskStatus.FAILED:
            f = t.final_fails()[0]
            if f.expired:
                return SlotView(void=True)
            return SlotView(vote=Vote(t.replica, f.peer, None, error=f.error.split(":", 1)[0].strip()[:128] or "failed",
                                      message=f.error))
        return SlotView()

    def _slot_signature(self, slots: Sequence[TaskState]) -> tuple[Any, ...]:
        """What a verdict depends on: each slot's status and its vote's stamp."""
        out: list[Any] = []
        for t in slots:
            st = t.status(False, self.max_attempts)
            if st is TaskStatus.DONE:
                r = t.result
                out.append((st, r.stamp if r is not None else None))
            elif st is TaskStatus.FAILED:
                out.append((st, t.final_fails()[0].stamp))
            else:
                out.append((st, None))
        return tuple(out)

    def _replica_refusal(self, task: TaskState, c: Claim) -> str | None:
        """Why claim ``c`` on a replicated slot does not count, judged from the claim's past
        (so the same on every peer, and final once the claim is folded): the slot was not
        open there (a reserve nobody needed yet, or a task already decided), or its author
        then held another slot of the task (owned an attempt not ended, or its result stood).
        A peer that only lost a race on a sibling holds nothing and may take another slot."""
        wf = self.workflows.get(task.workflow_id)
        if wf is None or wf.replicas <= 1 or c.where is None or task.task_id not in self.tasks:
            return None
        index = split_index(task.index, len(wf.task_ids))[0]
        past = [t.restricted(c.where) for t in self.slots_of(wf, index)]
        v = self.group_verdict(wf, past)
        if v.decided:
            return "claim on a replica of a task already decided in its past"
        if task.replica >= v.open:
            return f"claim on replica slot {task.replica}, which was not open in its past ({v.open} were)"
        for t in past:
            if t.replica == task.replica:
                continue
            r = t.result
            own = t.owner()
            if (r is not None and r.peer == c.peer) or (
                    own is not None and own.peer == c.peer and t.fail_for(t.attempt) is None):
                return f"claim on replica slot {task.replica} by a peer holding slot {t.replica} of the same task"
        return None

    def _slot_status(self, task: TaskState, wf: WorkflowState, v: Verdict) -> TaskStatus:
        """A slot's own status: a dormant reserve slot, or any slot of a decided task that has
        not finished, is CANCELLED (nobody runs it); otherwise the task's usual status."""
        base = task.status(wf.cancelled, self.max_attempts)
        if (task.replica >= v.open or v.decided) and base not in (TaskStatus.DONE, TaskStatus.FAILED):
            return TaskStatus.CANCELLED
        return base

    def _logical(self, wf: WorkflowState, v: Verdict, slots: Sequence[TaskState]) -> TaskStatus:
        if v.accepted is not None:
            return TaskStatus.DONE
        if v.error is not None:
            return TaskStatus.FAILED
        if wf.cancelled:
            return TaskStatus.CANCELLED
        states = {t.status(False, self.max_attempts) for t in slots[:v.open]}
        if TaskStatus.RUNNING in states or TaskStatus.DONE in states:
            return TaskStatus.RUNNING
        if TaskStatus.CLAIMED in states:
            return TaskStatus.CLAIMED
        return TaskStatus.QUEUED

    def _refresh_replicated(self, task: TaskState, wf: WorkflowState, decided: set[str]) -> None:
        n = len(wf.task_ids)
        index, _ = split_index(task.index, n)
        lid = wf.task_ids[index]
        if lid not in decided:
            decided.add(lid)
            slots = self.slots_of(wf, index)
            sig = self._slot_signature(slots)
            old = self._verdict.get(lid)
            # ops that change no slot's status or vote (most do not) cost no agreement check
            v = old if old is not None and self._verdict_sig.get(lid) == sig else self.group_verdict(wf, slots)
            self._verdict_sig[lid] = sig
            if old is not None and old.accepted is not None:
                for p in old.disputed_by:
                    self.outvoted[p] -= 1
                    if not self.outvoted[p]:
                        del self.outvoted[p]
            if v.accepted is not None:
                for p in v.disputed_by:
                    self.outvoted[p] = self.outvoted.get(p, 0) + 1
            self._verdict[lid] = v
            new = self._logical(wf, v, slots)
            self._count(wf.workflow_id, lid, self._lstatus.get(lid), new)
            self._lstatus[lid] = new
            for t in slots:
                self._note_claimed(t, lid, wf.workflow_id)
                self._status[t.task_id] = self._slot_status(t, wf, v)
        # (every slot of a touched task is touched with it: its status was set above)

    def verdict(self, wf: WorkflowState, index: int) -> Verdict:
        """The current verdict on logical task ``index`` of a replicated workflow."""
        lid = wf.task_ids[index]
        v = self._verdict.get(lid)
        return v if v is not None else self.group_verdict(wf, self.slots_of(wf, index))

    def logical_status(self, task: TaskState) -> TaskStatus:
        """The status a tool shows for a task (slot 0's id): its verdict's, when replicated."""
        wf = self.workflows[task.workflow_id]
        if wf.replicas <= 1:
            return self.task_status(task)
        got = self._lstatus.get(task.task_id)
        if got is not None:
            return got
        index = split_index(task.index, len(wf.task_ids))[0]
        slots = self.slots_of(wf, index)
        return self._logical(wf, self.group_verdict(wf, slots), slots)

    def siblings(self, task: TaskState) -> list[TaskState]:
        """The other slots of a replicated task (empty without replication)."""
        wf = self.workflows.get(task.workflow_id)
        if wf is None or wf.replicas <= 1 or task.task_id not in self.tasks:
            return []
        index = split_index(task.index, len(wf.task_ids))[0]
        return [t for t in self.slots_of(wf, index) if t is not task]

    @property
    def adverts(self) -> dict[str, list[Advert]]:
        return self.shared.adverts

    def latest_advert(self, peer: str) -> Advert | None:
        return self.shared.advert_before(peer, None)

    def refused(self) -> list[Rejection]:
        """Claims and expiries that do not count (no advert, a takeover without a lost attempt,
        an expiry its author had no right to make), with the reason: a function of the set."""
        out = []
        for t in self.tasks.values():
            for stamp, author, op, why in t.refusals():
                out.append(Rejection(stamp[1], author, op, why))
        return out

    def forged(self) -> list[Rejection]:
        """Ops from a peer that holds no claim on the attempt they speak for."""
        out = []
        for t in self.tasks.values():
            for o in t.results.values():
                if not t.claimed_before(o.peer, o.attempt, o.where):
                    out.append(Rejection(o.stamp[1], o.peer, "task.done", "task.done for a claim its author does not hold"))
            for f in t.fails.values():
                if not f.expired and not t.claimed_before(f.peer, f.attempt, f.where):
                    out.append(Rejection(f.stamp[1], f.peer, "task.fail", "task.fail for a claim its author does not hold"))
        return out

    def task(self, task_id: str) -> TaskState | None:
        """The task's record, or for a task of a lazy workflow that no op is about yet, a fresh
        one made to be read (not kept: it equals what the fold would create for it)."""
        got = self.tasks.get(task_id)
        if got is not None:
            return got
        wid, _, idx = task_id.partition("/")
        wf = self.workflows.get(wid)
        if wf is None or not wf.lazy or wid in self.dropped or not idx.isdigit():
            return None
        i = int(idx)
        if i >= len(wf.task_ids):
            return None
        return _fresh(self, wf, i)

    def virtual_status(self, wf: WorkflowState) -> TaskStatus:
        """The status of a lazy workflow's tasks that have no record yet."""
        return TaskStatus.CANCELLED if wf.cancelled else TaskStatus.QUEUED

    def task_status(self, task: TaskState) -> TaskStatus:
        """A task's (a slot's) own status: what the scheduler acts on."""
        cached = self._status.get(task.task_id)
        if cached is not None:
            return cached
        wf = self.workflows[task.workflow_id]
        if wf.replicas > 1:
            index = split_index(task.index, len(wf.task_ids))[0]
            return self._slot_status(task, wf, self.verdict(wf, index))
        return task.status(wf.cancelled, self.max_attempts)

    def workflow_status(self, wf: WorkflowState) -> WorkflowStatus:
        gone = self.dropped.get(wf.workflow_id)
        if gone is not None:
            return WorkflowStatus(gone.summary["state"])
        counts = self.counts(wf)
        total = len(wf.task_ids)
        if wf.cancelled:  # a live cancel is for good (a late one was never counted)
            return WorkflowStatus.CANCELLED
        if counts[TaskStatus.DONE] == total:
            return WorkflowStatus.COMPLETED
        if counts[TaskStatus.DONE] + counts[TaskStatus.FAILED] == total:
            return WorkflowStatus.FAILED
        if counts[TaskStatus.QUEUED] == total and not self._claimed_per_wf.get(wf.workflow_id):
            return WorkflowStatus.PENDING
        return WorkflowStatus.RUNNING

    def listed(self, status: WorkflowStatus | None = None, limit: int | None = None) -> list[WorkflowState]:
        """Workflows newest first (created_at, then id), only those in ``status`` when given:
        the first ``limit`` of them, read off the listing index in O(limit)."""
        keys = self._listing if status is None else self._listing_by.get(status, [])
        return [self.workflows[wid] for _, wid in (keys if limit is None else keys[:limit])]

    def reindex(self, workflow_ids: Iterable[str]) -> None:
        """File these workflows in the listing index under their current key and status."""
        for wid in workflow_ids:
            wf = self.workflows.get(wid)
            if wf is None:
                continue
            now = ((-wf.created_at, wid), self.workflow_status(wf))
            was = self._listed_as.get(wid)
            if was == now:
                continue
            if was is not None:
                _unfile(self._listing_by[was[1]], was[0])
                if was[0] != now[0]:
                    _unfile(self._listing, was[0])
            if was is None or was[0] != now[0]:
                bisect.insort(self._listing, now[0])
            bisect.insort(self._listing_by.setdefault(now[1], []), now[0])
            self._listed_as[wid] = now

    def counts(self, wf: WorkflowState) -> dict[TaskStatus, int]:
        out = dict(self._counts.get(wf.workflow_id) or dict.fromkeys(TaskStatus, 0))
        if wf.virtual:  # a lazy workflow's tasks without records: counted where they stand
            out[self.virtual_status(wf)] += wf.virtual
        return out

    def recount(self, wf: WorkflowState) -> dict[TaskStatus, int]:
        """Counts derived from scratch (tests check the caches against this)."""
        if wf.workflow_id in self.dropped:
            return _dropped_counts(self.dropped[wf.workflow_id])
        counts = dict.fromkeys(TaskStatus, 0)
        for i, tid in enumerate(wf.task_ids):
            t = self.task(tid)
            assert t is not None
            if wf.replicas > 1:
                slots = self.slots_of(wf, i)
                counts[self._logical(wf, self.group_verdict(wf, slots), slots)] += 1
            else:
                counts[t.status(wf.cancelled, self.max_attempts)] += 1
        return counts

    def forked_authors(self) -> list[str]:
        """Authors whose history forks, sorted (``causality``: the fold stays exact for them)."""
        return sorted(self._causal.forked)

    def is_compacted(self, workflow_id: str) -> bool:
        """Whether a compaction is in force for the workflow (it reads as its cut)."""
        return workflow_id in self._full_wf or workflow_id in self.dropped

    def compacted_ids(self) -> list[str]:
        return [*self._full_wf, *self.dropped]

    # ------------------------------------------------------------ dropping (compaction §5)

    def outvoted_share(self, workflow_id: str) -> dict[str, int]:
        """How much of ``outvoted`` this workflow's verdicts account for."""
        wf = self.workflows[workflow_id]
        share: dict[str, int] = {}
        if wf.replicas > 1:
            for lid in wf.task_ids:
                v = self._verdict.get(lid)
                if v is not None and v.accepted is not None:
                    for p in v.disputed_by:
                        share[p] = share.get(p, 0) + 1
        return share

    def drop(self, gone: Dropped) -> None:
        """Free a compacted workflow's records; it answers from ``gone`` (its verified snapshot)
        from now on. The caller verified the snapshot of the compaction in force: the fold's
        answers are then the snapshot's content, so nothing a tool shows changes. Every later op
        about it is skipped — an op after the cut never counted; one before it cannot arrive
        after the compact op (causal delivery); only a forking submitter's compact op with a
        smaller stamp, or its late submit, would have moved the cut, and that harms only its own
        workflow (docs/compaction.md §7)."""
        wid = gone.workflow_id
        wf = self.workflows[wid]
        if wf.compacted is None or wf.compacted.stamp != gone.stamp:
            raise ValueError(f"workflow {wid} is not compacted at {gone.stamp!r}")
        self._full_wf.pop(wid, None)
        ids = self._frozen_ids.pop(wid, None) or (wf.physical_ids() if wf.replicas > 1 else _made_ids(self, wf))
        for tid in ids:
            self.tasks.pop(tid, None)
            self._full_tasks.pop(tid, None)
            self._status.pop(tid, None)
            self._claimed.discard(tid)
            self._verdict.pop(tid, None)
            self._lstatus.pop(tid, None)
            self._verdict_sig.pop(tid, None)
        prefix = wid + "/"
        for tid in [t for t in self.undefined if t.startswith(prefix)]:
            del self.undefined[tid]
        self._claimed_per_wf.pop(wid, None)
        self.workflows[wid] = _slim(wf, gone)
        self._counts[wid] = _dropped_counts(gone)
        self.dropped[wid] = gone

    def adopt_dropped(self, gone: Dropped) -> None:
        """A compacted workflow this peer learns from peers that pruned its events
        (p2p.compaction.joining): filed as dropped, like a restart's. One this peer had folded
        in part (back after a long absence, or a mixed event folded first) loses those records:
        the snapshot its peers vouch for is the workflow's answer from now on."""
        wid = gone.workflow_id
        if wid in self.dropped:
            return
        wf = self.workflows.get(wid)
        if wf is None:
            self.restore_dropped(gone)
            return
        share = self.outvoted_share(wid)
        wf.compacted = CompactRecord(Where(gone.stamp, gone.by, 0, {}), CID.decode(gone.snapshot), True)
        self.drop(gone)
        for p, n in share.items():
            left = self.outvoted.get(p, 0) - n
            if left > 0:
                self.outvoted[p] = left
            else:
                self.outvoted.pop(p, None)
        for p, n in gone.outvoted.items():
            self.outvoted[p] = self.outvoted.get(p, 0) + n
        self.reindex([wid])

    def restore_dropped(self, gone: Dropped) -> None:
        """A workflow dropped before a restart (the clock's ``dropped`` table), filed before
        the history is re-folded: every op about it is then skipped."""
        wid = gone.workflow_id
        if wid in self.workflows:
            raise ValueError(f"workflow {wid} is already folded: restore dropped workflows before folding")
        s = gone.summary
        wf = WorkflowState(workflow_id=wid, name=str(s["name"]), tag=WorkflowTag(s["tag"]), submitter=str(s["submitter"]),
                           created_at=float(s["created_at"]), task_ids=[], order=-1, priority=int(s["priority"]),
                           priority_stamp=(0, b"", 0), cancelled=s["state"] == WorkflowStatus.CANCELLED.value,
                           replicas=int(s["replicas"]), cache=bool(s["cache"]))
        self.workflows[wid] = _slim(wf, gone)
        self._counts[wid] = _dropped_counts(gone)
        self.dropped[wid] = gone
        for p, n in gone.outvoted.items():
            self.outvoted[p] = self.outvoted.get(p, 0) + n
        self.reindex([wid])

    @property
    def orphans(self) -> dict[str, Any]:
        """Always empty: ops before their submit are dropped, never held (kept for callers)."""
        return {}

    def snapshot(self) -> dict[str, Any]:
        """A plain, comparable picture of the whole state (tests compare peers with it)."""
        out: dict[str, Any] = {}
        for wid, wf in sorted(self.workflows.items()):
            if wid in self.dropped:  # its records are gone: what it answers from
                gone = self.dropped[wid]
                out[wid] = ("dropped", gone.snapshot, sorted(gone.summary.items()))
                continue
            tasks: list[Any] = []
            for i, lid in enumerate(wf.task_ids if wf.replicas > 1 else ()):
                v = self.verdict(wf, i)
                tasks.append((lid, self.logical_status(self.tasks[lid]).value, v.open,
                              (v.accepted.slot, v.accepted.peer) if v.accepted else None, v.error, v.peers, v.disputed_by))
            for tid in (wf.physical_ids() if wf.replicas > 1 else wf.task_ids):
                t = self.task(tid)
                assert t is not None
                res = t.result
                owner = t.owner()
                tasks.append(
                    (
                        tid,
                        self.task_status(t).value,
                        t.attempt,
                        owner.peer if owner else None,
                        (res.peer, res.attempt, repr(res.result), str(res.result_cid)) if res else None,
                        len(t.valid_results),
                        tuple((o.peer, o.attempt) for o in t.late_results),
                        tuple(tuple(sorted(e.items())) for e in t.errors()),
                        t.spec.input if t.spec.ref is None else (str(t.spec.ref[0]), t.spec.ref[1]),
                    )
                )
            out[wid] = (wf.name, wf.priority, wf.tag.value, wf.cancelled, self.workflow_status(wf).value,
                        wf.submitter, wf.created_at, tasks)
        # (those with records: one no op is about is a fresh record, which a lazy submit's
        # tasks do not hold until an op is about them)
        out["_undefined"] = sorted(t for t, u in self.undefined.items() if u.claims or u.started or u.results or u.fails or u.accepts)
        out["_outvoted"] = sorted(self.outvoted.items())
        out["_adverts"] = sorted((p, a[-1].capacity, sorted(a[-1].models), sorted(a[-1].model_cids.items()))
                                 for p, a in self.adverts.items())
        out["_forged"] = sorted((r.event_cid, r.op, r.reason) for r in self.forged())
        out["_refused"] = sorted((r.event_cid, r.author, r.op, r.reason) for r in self.refused())
        return out


def apply_event(
    state: State,
    cid: bytes,
    author: str,
    height: int,
    ops: Iterable[Any],
    *,
    parents: Sequence[Any] | None = None,
    seq: int | None = None,
) -> set[str]:
    """Fold one event into ``state``; returns the ids of tasks (and ``wf:<id>``) it touched.

    Parents must have been applied first (the clock guarantees causal delivery). Pass the
    event's ``parents`` (CIDs or bytes) and ``seq``: causality then comes from the DAG, and the
    state is a function of the set of events. Without them causality is the fold order (the old
    behaviour; only for callers that fold one linear history). Folding an event twice (same cid,
    with parents) changes nothing. ``wf:<id>`` alone means the workflow changed but none of its
    tasks' statuses did (a reprioritise: the scheduler moves queued tasks in its heap).
    """
    cid = bytes(cid)
    state.last_rejected = []
    if parents is not None and seq is not None:
        if cid in state._causal:
            return set()
        vv = state._causal.add(cid, author, seq, height, parents)
        who, at, dag = author, seq, state._causal
    else:
        state._folded += 1
        who, at, dag = _LEGACY, state._folded, None
        vv = {_LEGACY: at}
    state.events += 1
    touched: set[str] = set()
    slots = 0  # task slots the event's submits define so far
    for index, raw in enumerate(ops):
        if state.dropped and _raw_workflow(raw) in state.dropped and raw.get("op") != "workflow.submit":
            state.dropped_ops += 1  # not even parsed: a restart skips a compacted history cheaply
            continue  # (a submit is parsed: it counts towards the event's task slots below)
        where = Where((height, cid, index), who, at, vv, dag)
        try:
            op = parse_op(raw)
        except ValidationError as exc:
            name = raw.get("op", "?") if isinstance(raw, dict) else "?"
            state.reject(cid, author, str(name)[:64], f"malformed op: {exc.errors()[0]['msg']}")
            continue
        except Exception as exc:  # noqa: BLE001 - a peer's op never ends the fold
            state.reject(cid, author, "?", f"malformed op: {type(exc).__name__}")
            continue
        if isinstance(op, SubmitOp):
            # one event's submits share MAX_TASKS slots: compact submits cost a few bytes a task,
            # so without this one 2 MiB event could define millions of tasks on every peer
            # (a lazy submit's tasks cost nothing until ops are about them: its chunks count)
            slots += len(op.chunks or ()) if op.lazy else op.count * slots_for(op.replicas)
            if slots > MAX_TASKS:
                state.reject(cid, author, op.op, f"malformed op: the event's submits define over {MAX_TASKS} task slots")
                continue
        _apply_op(state, op, author, where, touched)
    _with_siblings(state, touched)
    state.refresh(t for t in touched if not t.startswith("wf:"))
    wids = {t[3:] if t.startswith("wf:") else t.partition("/")[0] for t in touched}
    state.reindex(wids)
    for wid in wids:
        state.changes[wid] = state.changes.get(wid, 0) + 1
    return touched


def _unfile(keys: list[tuple[float, str]], key: tuple[float, str]) -> None:
    i = bisect.bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]


def _with_siblings(state: State, touched: set[str]) -> None:
    """Every slot of a replicated task one op touched: its verdict opens, closes or decides the
    others, and the scheduler must re-decide each (a seal touches one slot only)."""
    extra: set[str] = set()
    for tid in touched:
        if tid.startswith("wf:"):
            continue
        task = state.tasks.get(tid)
        if task is None or not task.replicated:
            continue
        wf = state.workflows.get(task.workflow_id)
        if wf is not None and wf.replicas > 1:
            extra.update(wf.slot_ids(split_index(task.index, len(wf.task_ids))[0]))
    touched |= extra


def _defined_by(wf: WorkflowState, index: int | None, where: Where) -> bool:
    """Whether a submit defining the workflow (and task ``index``) is before ``where``."""
    for rec in wf.submits:
        if (index is None or index < rec.op.count * slots_for(rec.op.replicas)) and rec.where.before(where):
            return True
    return False


def _steered_workflow(state: State, op: Any, author: str, where: Where, verb: str) -> WorkflowState | None:
    """The workflow a control op (cancel, reprioritise, accept) steers, or None (rejected, with
    the reason) when it does not follow the submit or its author is not the submitter. Only the
    submitter steers its workflow (issue 8): the id is bound to it, so every peer agrees who."""
    wf = state.workflows.get(op.workflow_id)
    if wf is None or not _defined_by(wf, None, where):
        state.reject(where.stamp[1], author, op.op, "op does not follow its workflow's submit")
        return None
    if author != wf.submitter:
        state.reject(where.stamp[1], author, op.op, f"only the workflow's submitter {wf.submitter} may {verb} it")
        return None
    return wf


def _op_workflow(op: Any) -> str | None:
    """The workflow an op is about (None for adverts)."""
    if isinstance(op, AdvertOp):
        return None
    wid = getattr(op, "workflow_id", None)
    return wid if wid is not None else op.task_id.partition("/")[0]


def raw_op_workflow(raw: Any) -> str | None:
    """The workflow an unparsed op is about (None for adverts and anything malformed): what
    the fold skips for a dropped workflow, and what the pruner checks (p2p.compaction.pruner)."""
    return _raw_workflow(raw)


def _raw_workflow(raw: Any) -> str | None:
    """The workflow an unparsed op is about, read as the parsed op would be (``_op_workflow``):
    a ``workflow.*`` op's ``workflow_id``, a ``task.*`` op's task id's; None for anything else
    (an advert, or an extra field a op carries: parsing ignores those, so must this)."""
    if not isinstance(raw, dict):
        return None
    kind = raw.get("op")
    if not isinstance(kind, str):
        return None
    if kind.startswith("workflow."):
        wid = raw.get("workflow_id")
        return wid if isinstance(wid, str) else None
    if kind.startswith("task."):
        tid = raw.get("task_id")
        return tid.partition("/")[0] if isinstance(tid, str) else None
    return None


def _dropped_counts(gone: Dropped) -> dict[TaskStatus, int]:
    """A dropped workflow's task counts, from its summary (a finished workflow has no claimed
    task: pending is queued)."""
    s = gone.summary
    counts = dict.fromkeys(TaskStatus, 0)
    counts[TaskStatus.DONE] = int(s["completed"])
    counts[TaskStatus.FAILED] = int(s["failed"])
    counts[TaskStatus.CANCELLED] = int(s["cancelled"])
    counts[TaskStatus.RUNNING] = int(s["running"])
    counts[TaskStatus.QUEUED] = int(s["pending"])
    return counts


def _slim(wf: WorkflowState, gone: Dropped) -> WorkflowState:
    """What ``workflows`` keeps of a dropped workflow: its fields, no records."""
    where = Where(gone.stamp, gone.by, 0, {})
    return WorkflowState(
        workflow_id=wf.workflow_id, name=wf.name, tag=wf.tag, submitter=wf.submitter, created_at=wf.created_at,
        task_ids=TaskIds(wf.workflow_id, gone.total), order=wf.order, priority=wf.priority,  # type: ignore[arg-type]
        priority_stamp=wf.priority_stamp, cancelled=wf.cancelled, replicas=wf.replicas, cache=wf.cache,
        compacted=CompactRecord(where, CID.decode(gone.snapshot), True))


def _covering(wf: WorkflowState, index: int) -> SubmitRecord | None:
    """The submit (smallest stamp first) that defines physical task ``index`` of ``wf``."""
    return next((r for r in wf.submits if index < r.op.count * slots_for(r.op.replicas)), None)


def _fresh(state: State, wf: WorkflowState, index: int) -> TaskState:
    """A record for task ``index`` as the fold creates it: no ops about it yet."""
    rec = _covering(wf, index)
    assert rec is not None, "a task index its workflow's submits define"
    logical, slot = split_index(index, rec.op.count)
    return TaskState(task_id=task_id_for(wf.workflow_id, index), workflow_id=wf.workflow_id, index=index,
                     spec=_spec(rec.op, logical), replica=slot, replicated=wf.replicas > 1,
                     max_attempts=state.max_attempts, submitter=wf.submitter, submit_where=rec.where, shared=state.shared)


def _materialize(state: State, wf: WorkflowState, task_id: str, into: dict[str, TaskState]) -> TaskState | None:
    """The record an op about ``task_id`` lands in, created now when the task is one of a lazy
    submit's that no op was about yet (None: no submit of ``wf`` defines it). ``into`` is where
    the workflow's defined tasks live (``tasks``, or the full records of a frozen workflow)."""
    idx = task_id.partition("/")[2]
    if not idx.isdigit():
        return None
    i = int(idx)
    rec = _covering(wf, i)
    if rec is None or not rec.op.lazy:
        return None  # an eager submit created every task it defines
    task = _fresh(state, wf, i)
    first = wf.submits[0]
    if i < first.op.count * slots_for(first.op.replicas):
        into[task_id] = task
        wf.virtual -= 1
    else:  # defined only by a non-defining duplicate submit (a faulty submitter)
        state.undefined[task_id] = task
    wf.made.add(task_id)
    return task


def _index(task_id: str) -> int:
    return int(task_id.rpartition("/")[2])


def _made_ids(state: State, wf: WorkflowState, records: dict[str, TaskState] | None = None) -> list[str]:
    """The ids of ``wf``'s defined tasks that have a record (every one, unless it is lazy)."""
    records = state.tasks if records is None else records
    if not wf.lazy:
        return list(wf.task_ids)
    return sorted((t for t in wf.made if t in records), key=_index)


def _control_refusal(state: State, wf: WorkflowState, op: Any, author: str, where: Where) -> str | None:
    """Why a control op or submit about ``wf`` is rejected, as ``_steered_workflow`` and
    ``_submit`` would say it (None: it passes). O(submits), so a stranger's op about a
    compacted workflow is refused without thawing it."""
    if isinstance(op, SubmitOp):
        return None if op.workflow_id.startswith(submitter_prefix(author)) else "workflow id not bound to its submitter"
    if not _defined_by(wf, None, where):
        return "op does not follow its workflow's submit"
    if author != wf.submitter:
        verb = {"workflow.accept": "accept the results of", "workflow.compact": "compact"}.get(op.op, op.op.split(".")[1])
        return f"only the workflow's submitter {wf.submitter} may {verb} it"
    return None


def _apply_op(state: State, op: Any, author: str, where: Where, touched: set[str]) -> None:
    """Fold one op. An op about a compacted workflow does not touch its view at the cut: a task
    op goes to its full records in O(1), a stranger's control op is refused in O(1), the
    submitter's control ops wait (``deferred``), its submits re-judge. It cannot be before the cut — that
    op was folded before the compact op, by causal delivery, forks included (before-ness is
    exact: ``causality``) — except a compact op with a smaller stamp (a forking submitter's), or
    an op whose event was folded without one of its parents (``apply_event`` tolerates it):
    then the workflow is thawed, the op folded, and the compaction in force judged again."""
    wid = _op_workflow(op)
    if wid is not None and wid in state.dropped:
        state.dropped_ops += 1  # its records are gone; no op after its cut counts (``State.drop``)
        return
    wf = state.workflows.get(wid) if wid is not None else None
    if wid is None or wid not in state._full_wf:
        _apply_op_thawed(state, op, author, where, touched)
        if wf is not None and wf.compacts and any(where.before(c.where) for c in wf.compacts):
            _rejudge(state, wid, touched)  # an op before a compact op already folded (docstring)
        return
    full = state._full_wf[wid]
    cut = full.compacted.where if full.compacted is not None else where
    if not isinstance(op, (SubmitOp, AcceptOp, CancelOp, ReprioritizeOp, CompactOp)):
        idx = op.task_id.partition("/")[2]
        if not _defined_by(full, int(idx), where):
            state.reject(where.stamp[1], author, op.op, "op does not follow its task's submit")
            return
        task = state._full_tasks.get(op.task_id) or state.undefined.get(op.task_id)
        if task is None:  # a lazy task no op was about: its record, in the full records only
            task = _materialize(state, full, op.task_id, state._full_tasks)
            if task is None:
                state.reject(where.stamp[1], author, op.op, "unknown task")
                return
            if op.task_id in state._full_tasks:
                state._frozen_ids[wid].append(op.task_id)
        full.heard_from.add(author)
        if state.tasks.get(op.task_id) is task and full.compacted is not None:
            # the view shares this task with the full records (``TaskState.as_of``): it keeps
            # a copy as of the cut before the late op lands in the full records
            state.tasks[op.task_id] = task.restricted(full.compacted.where)
        _apply_task_op(state, task, op, author, where)
        if any(where.before(c.where) for c in full.compacts):
            _rejudge(state, wid, touched)  # an op before a compact op (docstring)
        else:
            state.late_for_compacted += 1
        return
    why = _control_refusal(state, full, op, author, where)
    if why is not None:
        state.reject(where.stamp[1], author, op.op, why)
        return
    # A submit is never deferred: one with a smaller stamp decides whether the compaction
    # counts (rule 1), and any defines task ids apart (``undefined``) that later task ops land
    # in. Only the submitter writes one (rarely: a duplicate, or a fork), so the re-judgement
    # below is paid by its own mistakes, and every arrival order ends in the same state.
    if not where.before(cut) and not isinstance(op, SubmitOp) \
            and not (isinstance(op, CompactOp) and where.stamp < cut.stamp):
        full.deferred.append((op, author, where))
        state.late_for_compacted += 1
        return
    _thaw(state, wid)
    _apply_op_thawed(state, op, author, where, touched)
    _rejudge(state, wid, touched)


def _rejudge(state: State, wid: str, touched: set[str]) -> None:
    """Judge every compact op of the workflow again and freeze it at the one then in force
    (a late submit, a compact op with a smaller stamp, or an op before one of them)."""
    _thaw(state, wid)
    wf = state.workflows[wid]
    for c in wf.compacts:
        c.counts = None
    _freeze(state, wf, touched)


def _view_at(state: State, wf: WorkflowState, where: Where) -> dict[str, TaskState] | None:
    """``wf``'s tasks as they stood in the past of ``where`` when it was finished there (every
    task done or failed, or a cancel that counts before it), else None, as soon as one task
    shows it was not. ``TaskState.restricted`` over the full records (the workflow is thawed)."""
    cancelled = any(c.before(where) and not _late_cancel(state, wf, c) for c in wf.cancel_records)
    view: dict[str, TaskState] = {}
    if wf.virtual and not cancelled:
        return None  # a task without a record is queued
    for i, tid in enumerate(_made_ids(state, wf) if wf.replicas == 1 else wf.task_ids):
        if wf.replicas > 1:
            slots = [state.tasks[t].as_of(where) for t in wf.slot_ids(i)]
            view.update((t.task_id, t) for t in slots)
            if not cancelled and not state.group_verdict(wf, slots).decided:
                return None
            continue
        view[tid] = task = state.tasks[tid].as_of(where)
        if not cancelled and task.status(False, state.max_attempts) not in (TaskStatus.DONE, TaskStatus.FAILED):
            return None
    return view


def _thaw(state: State, wid: str) -> None:
    """Put a compacted workflow's full records back in place (to fold an op into them)."""
    wf = state._full_wf.pop(wid, None)
    if wf is None:
        return
    state.workflows[wid] = wf
    for tid in state._frozen_ids.pop(wid):
        state.tasks[tid] = state._full_tasks.pop(tid)
    deferred, wf.deferred = wf.deferred, []
    for op, author, where in deferred:  # what waited while it was frozen, folded now
        if isinstance(op, CompactOp):
            _record_compact(wf, op, where)
        else:
            _apply_op_thawed(state, op, author, where, set())


def _freeze(state: State, wf: WorkflowState, touched: set[str]) -> None:
    """Compaction (docs/compaction.md §4): among the compact ops of ``wf`` that count — every
    submit of it before them, and it finished in their past — the smallest stamp is in force,
    and the workflow reads as it stood at that op's cut. ``wf`` must be thawed."""
    wid = wf.workflow_id
    winner, frozen = None, None
    for c in wf.compacts:  # by stamp: the first that counts is in force
        if c.counts is False:
            continue
        # the submits that could define it are before it (a later one, only the submitter's
        # own mistake, is late like any op after the cut)
        if not all(r.where.before(c.where) for r in wf.submits if r.stamp < c.stamp):
            c.counts = False
            continue
        frozen = _view_at(state, wf, c.where)
        c.counts = frozen is not None
        if frozen is not None:
            winner = c
            break
    if winner is None and wf.compacted is None:
        return
    wf.compacted = winner
    ids = wf.physical_ids() if wf.replicas > 1 else _made_ids(state, wf)
    touched.update(ids)
    touched.add(f"wf:{wid}")
    if winner is None:
        return
    cut = winner.where
    view = WorkflowState(
        workflow_id=wid, name=wf.name, tag=wf.tag, submitter=wf.submitter, created_at=wf.created_at,
        task_ids=wf.task_ids, order=wf.order, priority=wf.priority, priority_stamp=wf.priority_stamp,
        submit_stamp=wf.submit_stamp, submits=wf.submits, replicas=wf.replicas, cache=wf.cache,
        heard_from=wf.heard_from, compacts=wf.compacts, compacted=winner, lazy=wf.lazy, virtual=wf.virtual, made=wf.made,
        cancel_records=[c for c in wf.cancel_records if c.before(cut)],
        reprio_records=[r for r in wf.reprio_records if r[0].before(cut)],
    )
    if view.reprio_records:
        latest = max(view.reprio_records, key=lambda r: r[0].stamp)
        view.reprioritized = (latest[0].stamp, latest[1])
        view.priority_stamp, view.priority = view.reprioritized
    else:
        view.priority, view.priority_stamp = wf.submits[0].op.priority, wf.submits[0].stamp
    live = sum(1 for c in view.cancel_records if not _late_cancel(state, wf, c))
    view.cancels, view.late_cancels, view.cancelled = live, len(view.cancel_records) - live, live > 0
    assert frozen is not None
    state._full_wf[wid] = wf
    state._frozen_ids[wid] = ids
    for tid, task in frozen.items():
        state._full_tasks[tid] = state.tasks[tid]
        state.tasks[tid] = task
    state.workflows[wid] = view


def _record_compact(wf: WorkflowState, op: CompactOp, where: Where) -> CompactRecord | None:
    """File a compact op by stamp (kept even when it does not count: a fork may change that)."""
    if any(c.stamp == where.stamp for c in wf.compacts):
        return None
    rec = CompactRecord(where, op.snapshot)
    wf.compacts.insert(bisect.bisect_left(wf.compacts, where.stamp, key=lambda c: c.stamp), rec)
    return rec


def _apply_op_thawed(state: State, op: Any, author: str, where: Where, touched: set[str]) -> None:
    stamp = where.stamp
    if isinstance(op, CompactOp):
        wf = _steered_workflow(state, op, author, where, "compact")
        if wf is None:
            return
        rec = _record_compact(wf, op, where)
        if rec is None:
            return  # the same op folded again
        _freeze(state, wf, touched)
        if wf.compacted is not rec:
            state.note(stamp[1], author, op.op, "compaction not in force: the workflow was not finished in its past, "
                                                "or an earlier compaction of it is")
        return

    if isinstance(op, SubmitOp):
        _submit(state, op, author, where, touched)
        return

    if isinstance(op, AdvertOp):
        ads = state.shared.adverts.setdefault(author, [])
        i = bisect.bisect_left(ads, stamp, key=lambda a: a.where.stamp)
        if i < len(ads) and ads[i].where.stamp == stamp:
            return  # the same op folded again
        ads.insert(i, Advert(where, op.capacity, frozenset(op.models), dict(op.model_cids)))
        # No claim folded earlier can have this advert before it: before-ness is exact
        # (``causality``), and an event's past is folded before it, forks included. So nothing
        # is judged again. (A rule here once re-judged every claim of a forking author against
        # its late advert; with exact causality it never found one, and a review measured it
        # walking the forker's whole history once per claim: 6.6 s at 10,000 events.)
        return

    if isinstance(op, AcceptOp):
        wf = _steered_workflow(state, op, author, where, "accept the results of")
        if wf is None:
            return
        # a seal lands on a task a submit in its past defines, whichever submit defines the
        # workflow now (a forking submitter's late submit can change that): a function of the
        # set, like every rule, not of which submit arrived first
        for index, cid, op_index in op.results:
            if not _defined_by(wf, index, where):
                continue
            tid = task_id_for(wf.workflow_id, index)
            task = state.tasks.get(tid) or state.undefined.get(tid) or _materialize(state, wf, tid, state.tasks)
            if task is None:
                continue
            key = (stamp[0], stamp[1], stamp[2] * 100_000 + index)  # one seal per task per op
            if key not in task.accepts:
                task.accepts[key] = ((cid, op_index), where)
                task.changed()
                touched.add(task.task_id)
        touched.add(f"wf:{wf.workflow_id}")
        return

    if isinstance(op, (CancelOp, ReprioritizeOp)):
        wf = _steered_workflow(state, op, author, where, op.op.split(".")[1])
        if wf is None:
            return
        if isinstance(op, ReprioritizeOp):
            if any(r[0].stamp == stamp for r in wf.reprio_records):
                return  # the same op folded again
            wf.reprio_records.append((where, op.priority))
            if wf.reprioritized is None or stamp > wf.reprioritized[0]:
                wf.reprioritized = (stamp, op.priority)
                wf.priority, wf.priority_stamp = op.priority, stamp
            touched.add(f"wf:{wf.workflow_id}")  # no task's status changes
            return
        if any(c.stamp == stamp for c in wf.cancel_records):
            return  # the same op folded again
        wf.cancel_records.append(where)
        _recheck_cancels(state, wf, touched)
        return

    wid, _, idx = op.task_id.partition("/")
    wf = state.workflows.get(wid)
    if wf is None or not _defined_by(wf, int(idx), where):
        state.reject(stamp[1], author, op.op, "op does not follow its task's submit")
        return
    task = state.tasks.get(op.task_id) or state.undefined.get(op.task_id) or _materialize(state, wf, op.task_id, state.tasks)
    if task is None:  # cannot happen: a defining submit created it, or it is lazy
        state.reject(stamp[1], author, op.op, "unknown task")
        return
    touched.add(task.task_id)
    touched.add(f"wf:{task.workflow_id}")
    wf.heard_from.add(author)
    _apply_task_op(state, task, op, author, where)
    if any(where.before(c) for c in wf.cancel_records):
        # Only an event folded without one of its parents can be "before" a cancel folded
        # earlier (before-ness is exact, forks included); whether that cancel is late is then
        # decided again, from the whole set, so peers still agree.
        _recheck_cancels(state, wf, touched)


def _apply_task_op(state: State, task: TaskState, op: Any, author: str, where: Where) -> None:
    stamp = where.stamp
    if isinstance(op, ClaimOp):
        if op.attempt > state.max_attempts:  # never a valid attempt on any peer (same config)
            state.reject(stamp[1], author, op.op, "attempt beyond max_attempts")
            return
        claims = task.claims.setdefault(op.attempt, {})
        old = claims.get(author)
        new = Claim(author, op.capacity, stamp, op.supersedes, op.continues, where)
        if old is not None and stamp != old.stamp:  # a forked author: the other claim is kept aside
            aside = task._others.setdefault(("claim", op.attempt, author), [])
            keep = old if stamp < old.stamp else new
            if all(c.stamp != keep.stamp for c in aside):
                aside.append(keep)
        if old is None or stamp < old.stamp:  # a forked author's claims: the earliest stamp counts
            claims[author] = new
            task.changed()
            why = task.refusal(claims[author], op.attempt)
            if why is not None:  # kept, never counted (State.refused says why); logged here
                state.note(stamp[1], author, op.op, why)
    elif isinstance(op, StartOp):
        key = (op.attempt, author)
        old_start = task.started.get(key)
        if old_start is not None and stamp != old_start.stamp:  # a forked author: kept aside
            aside = task._others.setdefault(("start", *key), [])
            keep = old_start if stamp < old_start.stamp else where
            if all(w.stamp != keep.stamp for w in aside):
                aside.append(keep)
        if key not in task.started or (old_start is not None and stamp < old_start.stamp):
            task.started[key] = where
            task.changed()
    elif isinstance(op, DoneOp):
        if (op.result is not None or op.result_cid is not None) and stamp not in task.results:
            task.results[stamp] = Outcome(
                author, op.attempt, stamp, result=op.result, result_cid=op.result_cid, stats=dict(op.stats),
                cached=op.cached, where=where
            )
            task.changed()
    elif isinstance(op, FailOp):
        key = (op.attempt, author, stamp)
        new = Outcome(author, op.attempt, stamp, error=op.error, retryable=op.retryable, expired=op.expired, where=where)
        if key not in task.fails:
            task.fails[key] = new
            task.changed()
            if new.expired:
                why = task.expiry_verdict(new)
                if why is not None:  # kept (a second peer may concur), not counted; logged here
                    state.note(stamp[1], author, op.op, why)


def _recheck_cancels(state: State, wf: WorkflowState, touched: set[str]) -> None:
    """``wf.cancelled``: whether any cancel is live (not late). Only tasks not done or failed
    change status with it, so only those are touched: a cancel costs what it changes."""
    live = sum(1 for c in wf.cancel_records if not _late_cancel(state, wf, c))
    wf.cancels, wf.late_cancels = live, len(wf.cancel_records) - live
    cancelled = live > 0
    if cancelled != wf.cancelled:
        wf.cancelled = cancelled
        ids = wf.physical_ids() if wf.replicas > 1 else _made_ids(state, wf)
        touched.update(tid for tid in ids if state._status.get(tid) not in (TaskStatus.DONE, TaskStatus.FAILED))
    touched.add(f"wf:{wf.workflow_id}")


def _late_cancel(state: State, wf: WorkflowState, where: Where) -> bool:
    """A cancel whose past already held every task of the workflow done or failed. Decided at
    fold time from the cancel's past only (all folded by then), so the same on every peer."""
    for i, tid in enumerate(wf.task_ids):
        if wf.replicas > 1:
            slots = state.slots_of(wf, i)
            if not any(t.results or t.fails for t in slots):
                return False
            if not state.group_verdict(wf, [t.restricted(where) for t in slots]).decided:
                return False
            continue
        task = state.tasks.get(tid)
        if task is None or (not task.results and not task.fails):
            return False  # (no record: a lazy task no op is about, queued)
        if task.restricted(where).status(False, state.max_attempts) not in (TaskStatus.DONE, TaskStatus.FAILED):
            return False
    return True


def _submit(state: State, op: SubmitOp, author: str, where: Where, touched: set[str]) -> None:
    stamp = where.stamp
    if not op.workflow_id.startswith(submitter_prefix(author)):
        # only the peer an id is bound to may define it (a set-based rule: no race on who's first)
        state.reject(stamp[1], author, op.op, "workflow id not bound to its submitter")
        return
    wid = op.workflow_id
    wf = state.workflows.get(wid)
    rec = SubmitRecord(where, op)
    if wf is None:
        n = op.count
        tids: Any = TaskIds(wid, n) if op.lazy else [task_id_for(wid, i) for i in range(n)]
        wf = WorkflowState(
            workflow_id=wid, name=op.name, tag=op.tag, submitter=author, created_at=op.created_at,
            task_ids=tids, order=len(state.workflows), priority=op.priority, priority_stamp=stamp,
            submit_stamp=stamp, submits=[rec], replicas=op.replicas, cache=op.cache,
        )
        state.workflows[wid] = wf
        if op.lazy:  # no records until ops are about them (``WorkflowState.lazy``)
            wf.lazy, wf.virtual = True, n
            touched.add(f"wf:{wid}")
            return
        physical = wf.physical_ids()
        for p, tid in enumerate(physical):
            i, slot = split_index(p, n)
            state.tasks[tid] = TaskState(task_id=tid, workflow_id=wid, index=p, spec=_spec(op, i), replica=slot,
                                         replicated=wf.replicas > 1, max_attempts=state.max_attempts, submitter=author,
                                         submit_where=where, shared=state.shared)
        touched.update(physical)
        touched.add(f"wf:{wid}")
        return
    if any(r.stamp == stamp for r in wf.submits):
        return  # the same op folded again
    wf.submits.append(rec)
    wf.submits.sort(key=lambda r: r.stamp)
    _redefine(state, wf, touched)


def _redefine(state: State, wf: WorkflowState, touched: set[str]) -> None:
    """Rebuild a workflow from all its submits (a faulty submitter sent several): the smallest
    stamp defines it; every task id any of them defines keeps what was said about it."""
    wid = wf.workflow_id
    first = wf.submits[0]
    n_def = first.op.count * slots_for(first.op.replicas)
    n_all = max(r.op.count * slots_for(r.op.replicas) for r in wf.submits)
    old_ids = wf.physical_ids() if wf.replicas > 1 else _made_ids(state, wf)
    wf.name, wf.tag, wf.created_at = first.op.name, first.op.tag, first.op.created_at
    wf.replicas, wf.cache = first.op.replicas, first.op.cache
    wf.submit_stamp = first.stamp
    if wf.reprioritized is not None:
        wf.priority_stamp, wf.priority = wf.reprioritized
    else:
        wf.priority, wf.priority_stamp = first.op.priority, first.stamp
    wf.lazy = first.op.lazy
    wf.task_ids = TaskIds(wid, first.op.count) if wf.lazy else [task_id_for(wid, i) for i in range(first.op.count)]
    visit: Iterable[int] = range(n_all)
    if any(r.op.lazy for r in wf.submits):
        # a lazy range costs the records it has, not its length (a duplicate submit of a
        # million tasks is a few bytes: visiting every index would cost every peer seconds)
        wanted = {_index(t) for t in wf.made}
        for r in wf.submits:
            if not r.op.lazy:  # an eager submit's tasks all have records (at most MAX_TASKS)
                wanted.update(range(r.op.count * slots_for(r.op.replicas)))
        visit = sorted(i for i in wanted if i < n_all)
    made: set[str] = set()
    held = 0  # defined tasks with a record
    for i in visit:
        tid = task_id_for(wid, i)
        task = state.tasks.pop(tid, None) or state.undefined.pop(tid, None)
        rec = next(r for r in wf.submits if i < r.op.count * slots_for(r.op.replicas))
        if task is None and rec.op.lazy:  # no record until an op is about it
            continue
        made.add(tid)
        held += i < n_def
        logical, slot = split_index(i, rec.op.count)
        spec = _spec(rec.op, logical)
        if task is None:
            task = TaskState(task_id=tid, workflow_id=wid, index=i, spec=spec, max_attempts=state.max_attempts,
                             submitter=wf.submitter, shared=state.shared)
        task.spec, task.submit_where, task.replica = spec, rec.where, slot
        task.replicated = wf.replicas > 1
        task.changed()
        (state.tasks if i < n_def else state.undefined)[tid] = task
    wf.made = made
    wf.virtual = n_def - held if wf.lazy else 0
    new_ids = wf.physical_ids() if wf.replicas > 1 else _made_ids(state, wf)
    for tid in set(old_ids) | set(new_ids):  # the caches are rebuilt for the definition
        state._status.pop(tid, None)
        state._lstatus.pop(tid, None)
        state._claimed.discard(tid)
    state._counts.pop(wid, None)
    state._claimed_per_wf.pop(wid, None)
    for tid in old_ids:
        state._verdict_sig.pop(tid, None)
        v = state._verdict.pop(tid, None)
        if v is not None and v.accepted is not None:
            for p in v.disputed_by:
                state.outvoted[p] -= 1
                if not state.outvoted[p]:
                    del state.outvoted[p]
    touched.update(old_ids)
    touched.update(new_ids)
    touched.add(f"wf:{wid}")
    if wf.cancel_records:  # lateness is judged on the defined tasks, which just changed
        _recheck_cancels(state, wf, touched)
