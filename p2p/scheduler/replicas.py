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

- a slot that failed for good fails the task (its error says why);
- until every open slot has a standing result, nothing is decided;
- each peer votes once: a second slot with a result by the same peer is void (a peer cannot
  agree with itself; an honest peer never takes two slots of one task);
- with the first N slots: accepted when N distinct peers' results all agree pairwise (``agree``);
- otherwise one more slot opens; with more than N open, a result stands when the results that
  agree with it are a strict majority of the open slots (the earliest such slot's result wins);
  when the last reserve slot is in and there is no majority, the task fails with
  "replicas disagree", naming the peers.

Agreement has a tolerance because CPUs and providers round differently: embeddings agree at
cosine >= 0.999; classifications on the same label with every score within 1e-3; fill-mask on
the same top-1 token; anything else must be equal. The arithmetic is exact where it must be:
products of float32 values are exact in float64 and ``math.fsum`` rounds their sum correctly, so
the cosine is the same IEEE number on every peer and a result on the threshold cannot make two
peers decide differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

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
    """One open slot's standing result: who computed it and what (the stored form)."""

    slot: int
    peer: str
    result: dict[str, Any] | None
    result_cid: Any = None


@dataclass(frozen=True, slots=True)
class SlotView:
    """What ``decide`` needs to know about one slot: finished (with its vote), failed for good
    (with the error), or neither yet."""

    vote: Vote | None = None
    failed: str | None = None  # the error of a final failure
    failed_peer: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The logical task's outcome so far."""

    open: int  # slots that may run (the first N, plus reserves opened by disagreement)
    accepted: Vote | None = None  # the result that stands
    error: str | None = None  # the task failed (a slot failed for good, or no majority)
    peers: tuple[str, ...] = ()  # peers whose results agree with the accepted one (or all that ran)
    disputed_by: tuple[str, ...] = ()  # peers whose results disagreed

    @property
    def decided(self) -> bool:
        return self.accepted is not None or self.error is not None


def decide(replicas: int, slots: Sequence[SlotView]) -> Verdict:
    """The outcome of one logical task from its slots (see the module doc); pure."""
    total = len(slots)
    opened = min(replicas, total)
    while True:
        window = slots[:opened]
        for view in window:
            if view.failed is not None:
                ran = _peers([v.vote for v in window if v.vote is not None])
                return Verdict(opened, error=view.failed, peers=ran,
                               disputed_by=())
        if any(v.vote is None for v in window):
            return Verdict(opened)
        votes, seen = [], set()
        for view in window:
            assert view.vote is not None
            if view.vote.peer not in seen:  # one vote per peer; a second slot of its is void
                seen.add(view.vote.peer)
                votes.append(view.vote)
        if opened == replicas:
            if len(votes) == replicas and all(agree(a, b) for i, a in enumerate(votes) for b in votes[i + 1:]):
                return Verdict(opened, accepted=votes[0], peers=_peers(votes))
        else:
            for v in votes:
                support = [w for w in votes if w is v or agree(v, w)]
                if 2 * len(support) > opened:
                    others = [w for w in votes if w not in support]
                    return Verdict(opened, accepted=v, peers=_peers(support), disputed_by=_peers(others))
        if opened < total:
            opened += 1
            continue
        names = ", ".join(f"{v.peer} (slot {v.slot})" for v in votes)
        need = opened // 2 + 1
        return Verdict(opened, error=f"replicas disagree: no {need} of {opened} results agree; results from {names}",
                       peers=(), disputed_by=_peers(votes))


def _peers(votes: Sequence[Vote]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.peer for v in votes))


def agree(a: Vote, b: Vote) -> bool:
    """Whether two results agree within the task kind's tolerance (see the module doc)."""
    if a.result is None or b.result is None:
        # stored as separate blocks: only the very same content agrees
        return a.result is None and b.result is None and a.result_cid is not None and a.result_cid == b.result_cid
    return results_agree(a.result, b.result)


def results_agree(x: dict[str, Any], y: dict[str, Any]) -> bool:
    """Stored results (``pack_result`` form) agree: cosine, label and scores, or top token."""
    try:
        if _PACKED in x or _PACKED in y:
            return _PACKED in x and _PACKED in y and cosine_at_least(x[_PACKED], y[_PACKED], COSINE_MIN)
        if "label" in x or "label" in y:
            return _classification_agrees(x, y)
        if "predictions" in x or "predictions" in y:
            px, py = x.get("predictions"), y.get("predictions")
            return bool(px) and bool(py) and isinstance(px, list) and isinstance(py, list) \
                and isinstance(px[0], dict) and isinstance(py[0], dict) \
                and isinstance(px[0].get("token"), str) and px[0].get("token") == py[0].get("token")
    except (TypeError, ValueError, KeyError, AttributeError, IndexError):
        return False  # a malformed result agrees with nothing
    return x == y


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


def cosine_at_least(a: Any, b: Any, threshold: float) -> bool:
    """cos(a, b) >= threshold for two little-endian float32 vectors, decided identically on
    every platform: float32 products are exact in float64 and ``math.fsum`` is correctly
    rounded, so no BLAS or summation order can move a value across the threshold."""
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
