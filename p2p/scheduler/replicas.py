"""Replicated tasks: a result stands only when distinct peers computed results that agree.

Why: a network of ordinary machines admits careless and hostile peers; a peer that returns zero
vectors for every task it claims is caught only by running the task elsewhere too (BOINC's
replicated jobs with a quorum). ``submit_workflow(replicas=N)`` makes each task N *slots* of the
same spec; the fold treats every slot as an ordinary task (claims, attempts, expiries, seals all
apply unchanged) and this module decides, from the slots' standing results alone, what the
logical task's outcome is. Every peer folds the same slots, so every peer decides the same.

Layout. A workflow of T tasks with ``replicas = N > 1`` has ``S = N + 2`` slots per task: slot
``s`` of task ``i`` is the task index ``i + s * T`` (slot 0 is the task's own id, so a workflow
with N = 1 is laid out exactly as before). The first N slots are open from the start; the two
reserve slots stay dormant (nobody runs them) until the open ones disagree.

The rule (``decide``), over the open slots in slot order:

- each slot's owner votes with its outcome: its result, or a failure it says a retry cannot fix
  (two such failures agree when their error class is the same: an invalid input fails every
  replica alike, and then the task fails; one peer's word alone never fails it);
- a slot finished by no vote is void: a result answered from the result cache (no peer computed
  it for this task: any member can seal an entry, so it is nobody's independent replica), or a
  last attempt recorded lost by others;
- until every open slot is finished, nothing is decided;
- each peer votes once: a second slot finished by the same peer is void (a peer cannot agree
  with itself; an honest peer never takes two slots of one task, and the fold refuses a claim
  on a slot by a peer holding a sibling in the claim's past, or on a slot not yet open there);
- with the first N slots: decided when N distinct peers' votes all agree pairwise (``agree``);
- otherwise one more slot opens; with more than N open, a vote stands when the votes that agree
  with it are at least two and a strict majority of the distinct peers' votes (the earliest such
  slot's wins); when the last reserve slot is in and there is none, the task fails with
  "replicas disagree", naming the peers.

Agreement has a tolerance because CPUs and providers round differently: embeddings agree at
cosine >= 0.999 with norms within 1e-3; classifications on the same label with every score
within 1e-3; fill-mask on the same ranked tokens with scores within 1e-3 (stricter than "the
same top-1 token": the result shown is one of the agreeing ones, so every field in it must
have been vouched for); every other field must be equal, and anything else must be equal. The arithmetic is exact where it must be:
products of float32 values are exact in float64 and ``math.fsum`` rounds their sum correctly, so
the cosine is the same IEEE number on every peer and a result on the threshold cannot make two
peers decide differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


RESERVE_SLOTS = 2
COSINE_MIN = 0.999
SCORE_TOLERANCE = 1e-3
_PACKED = "embedding_f32"  # p2p.scheduler.results: the stored form of an embedding


def slots_for(replicas: int) -> int:
    """Slots per task: the N replicas and two reserves; 1 when there is no replication."""
    return 1 if replicas <= 1 else replicas + RESERVE_SLOTS


def slot_index(index: int, slot: int, tasks: int) -> int:
    """The task index of ``slot`` of logical task ``index`` in a workflow of ``tasks`` tasks."""
    return index + slot * tasks


def split_index(physical: int, tasks: int) -> tuple[int, int]:
    """(logical task index, slot) of a task index."""
    return physical % tasks, physical // tasks


@dataclass(frozen=True, slots=True)
class Vote:
    """One open slot's outcome as its owner asserts it: a result (the stored form), or an error
    it says a retry cannot fix (``error``: its exception class, e.g. ``InvalidInputError``)."""

    slot: int
    peer: str
    result: dict[str, Any] | None
    result_cid: Any = None
    error: str | None = None  # the error class of a final failure its owner wrote
    message: str | None = None  # that failure's text, shown when errors win


@dataclass(frozen=True, slots=True)
class SlotView:
    """What ``decide`` needs to know about one slot: finished with a vote, finished without one
    (``void``: a result from the cache, which no peer computed for this task, or a last attempt
    recorded lost by others), or neither yet."""

    vote: Vote | None = None
    void: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """The logical task's outcome so far."""

    open: int  # slots that may run (the first N, plus reserves opened by disagreement)
    accepted: Vote | None = None  # the result that stands
    error: str | None = None  # the task failed (the replicas agreed it fails, or no majority)
    peers: tuple[str, ...] = ()  # peers whose outcomes agree with the verdict (or all that ran)
    disputed_by: tuple[str, ...] = ()  # peers whose outcomes disagreed with an agreed verdict

    @property
    def decided(self) -> bool:
        return self.accepted is not None or self.error is not None


def decide(replicas: int, slots: Sequence[SlotView]) -> Verdict:
    """The outcome of one logical task from its slots (see the module doc); pure."""
    total = len(slots)
    opened = min(replicas, total)
    while True:
        window = slots[:opened]
        if any(v.vote is None and not v.void for v in window):
            return Verdict(opened)
        votes, seen = [], set()
        for view in window:
            if view.vote is not None and view.vote.peer not in seen:  # one vote per peer
                seen.add(view.vote.peer)
                votes.append(view.vote)
        if opened == replicas:
            if len(votes) == replicas and all(agree(a, b) for i, a in enumerate(votes) for b in votes[i + 1:]):
                return _agreed(opened, votes[0], votes, [])
        else:
            # a strict majority of the distinct peers' votes, and never fewer than two of them
            for v in votes:
                support = [w for w in votes if w is v or agree(v, w)]
                if len(support) >= 2 and 2 * len(support) > len(votes):
                    return _agreed(opened, v, support, [w for w in votes if w not in support])
        if opened < total:
            opened += 1
            continue
        names = ", ".join(f"{v.peer} (slot {v.slot}: {v.error or 'result'})" for v in votes) or "none"
        return Verdict(opened, error=f"replicas disagree: no majority of at least two distinct peers among "
                                     f"{len(votes)} outcome(s) from {opened} replicas; outcomes from {names}",
                       peers=(), disputed_by=_peers(votes))


def _agreed(opened: int, v: Vote, support: Sequence[Vote], others: Sequence[Vote]) -> Verdict:
    if v.error is not None:  # the replicas agree the task cannot run (e.g. invalid input)
        return Verdict(opened, error=v.message or v.error, peers=_peers(support), disputed_by=_peers(others))
    return Verdict(opened, accepted=v, peers=_peers(support), disputed_by=_peers(others))


def _peers(votes: Sequence[Vote]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.peer for v in votes))


def agree(a: Vote, b: Vote) -> bool:
    """Whether two votes agree: two errors of one class, or two results within the task kind's
    tolerance (see the module doc)."""
    if a.error is not None or b.error is not None:
        return a.error is not None and a.error == b.error
    if a.result is None or b.result is None:
        # stored as separate blocks: only the very same content agrees
        return a.result is None and b.result is None and a.result_cid is not None and a.result_cid == b.result_cid
    return results_agree(a.result, b.result)


def results_agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Stored results (``pack_result`` form) agree. Every field is compared, because the result
    shown is one of the agreeing ones and must hold nothing its peers did not vouch for: the same
    keys, equal flags (``truncated``), and per kind: embeddings at cosine >= 0.999 with norms
    within 1e-3 of each other; classifications on the label with every score within 1e-3;
    fill-mask on the same ranked tokens with every score within 1e-3."""
    try:
        if set(x) != set(y):
            return False
        if _PACKED in x:
            return cosine_at_least(x[_PACKED], y[_PACKED], COSINE_MIN) and _norms_close(x[_PACKED], y[_PACKED]) \
                and _rest_equal(x, y, {_PACKED})
        if "label" in x:
            return _classification_agrees(x, y) and _rest_equal(x, y, {"label", "score", "scores"})
        if "predictions" in x:
            return _fill_mask_agrees(x["predictions"], y["predictions"]) and _rest_equal(x, y, {"predictions"})
    except (TypeError, ValueError, KeyError, AttributeError, IndexError):
        return False  # a malformed result agrees with nothing
    return x == y


def _rest_equal(x: dict[str, Any], y: dict[str, Any], compared: set[str]) -> bool:
    return all(x[k] == y[k] for k in x if k not in compared)


def _fill_mask_agrees(px: Any, py: Any) -> bool:
    if not isinstance(px, list) or not isinstance(py, list) or not px or len(px) != len(py):
        return False
    for a, b in zip(px, py):
        if not isinstance(a, dict) or not isinstance(b, dict) or set(a) != set(b):
            return False
        if not isinstance(a.get("token"), str) or a["token"] != b.get("token") or not _close(a.get("score"), b.get("score")):
            return False
        if any(a[k] != b[k] for k in a if k not in ("token", "score")):
            return False
    return True


def _classification_agrees(x: dict[str, Any], y: dict[str, Any]) -> bool:
    if not isinstance(x.get("label"), str) or x.get("label") != y.get("label"):
        return False
    if not _close(x.get("score"), y.get("score")):
        return False
    sx, sy = x.get("scores", {}), y.get("scores", {})
    if not isinstance(sx, dict) or not isinstance(sy, dict) or set(sx) != set(sy):
        return False
    return all(_close(sx[k], sy[k]) for k in sx)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return False
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= SCORE_TOLERANCE


def _norms_close(a: bytes, b: bytes) -> bool:
    """Both vectors' lengths within 1e-3 of each other (relative): the direction is not all; a
    vector scaled by 1e30 is not the same embedding."""
    import numpy as np  # lazily: an idle node never pays for numpy

    na = math.sqrt(math.fsum((np.frombuffer(a, dtype="<f4").astype(np.float64) ** 2).tolist()))
    nb = math.sqrt(math.fsum((np.frombuffer(b, dtype="<f4").astype(np.float64) ** 2).tolist()))
    return abs(na - nb) <= SCORE_TOLERANCE * max(na, nb)


def cosine_at_least(a: Any, b: Any, threshold: float) -> bool:
    """cos(a, b) >= threshold for two little-endian float32 vectors, decided identically on
    every platform: float32 products are exact in float64 and ``math.fsum`` is correctly
    rounded, so no BLAS or summation order can move a value across the threshold."""
    import numpy as np  # lazily: an idle node never pays for numpy

    if not isinstance(a, (bytes, bytearray)) or not isinstance(b, (bytes, bytearray)):
        return False
    if len(a) != len(b) or not a or len(a) % 4:
        return False
    va = np.frombuffer(a, dtype="<f4").astype(np.float64)
    vb = np.frombuffer(b, dtype="<f4").astype(np.float64)
    if not (np.isfinite(va).all() and np.isfinite(vb).all()):
        return False
    dot = math.fsum((va * vb).tolist())
    na = math.fsum((va * va).tolist())
    nb = math.fsum((vb * vb).tolist())
    if na == 0.0 or nb == 0.0:
        return False  # a zero vector has no direction: it agrees with nothing
    return dot / math.sqrt(na * nb) >= threshold
