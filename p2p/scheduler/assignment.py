"""Leaderless task assignment by weighted rendezvous hashing.

Every peer ranks the eligible peers for a task from the same data (task id, peer ids,
capacities) and gets the same answer, so no leader is needed. Each (task, peer) pair has an
independent score ``-capacity / ln(h)`` with ``h`` uniform in (0, 1); the top score owns the task.
Two properties follow, and are why this scheme was chosen over the seed's Hamming distance:

* a peer's share of tasks is ``capacity / sum(capacities)`` (``-ln(h) / capacity`` is exponential
  with rate ``capacity``, and the minimum of independent exponentials picks each with
  probability proportional to its rate);
* a task moves only when its owner leaves, or to a peer that joins (scores of other pairs do
  not change), so churn reshuffles as little work as possible.

Scores are 64-bit-hash floats, so ties practically never happen; ranking still breaks them by
peer id so every peer agrees even then.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

__all__ = ["rendezvous_score", "rank_peers", "choose_owner", "claim_beats"]

_TWO_64 = float(2**64)
_HALF = 2**63


def _neg_ln_h(x: int) -> float:
    """``-ln(h)`` for ``h = (x + 0.5) / 2**64``, ``0 <= x < 2**64``; always finite and > 0.

    Computed without forming ``h`` near 1: there ``(x + 0.5) / 2**64`` rounds to exactly 1.0 in
    a double (for x within ~2**10 of 2**64) and ``ln`` would give 0, a division by zero. For the
    upper half we use ``log1p(-(1 - h))`` with ``1 - h = (2**64 - 1 - x + 0.5) / 2**64``, which is
    exact for small values. Both branches agree with the real-number formula to full precision.
    """
    if x < _HALF:
        return -math.log((x + 0.5) / _TWO_64)
    y = (2**64 - 1) - x
    return -math.log1p(-((y + 0.5) / _TWO_64))


def _hash_int(task_id: str, peer_id: str) -> int:
    """First 8 bytes of ``sha256(task_id + '\\x00' + peer_id)`` (UTF-8), big-endian."""
    digest = hashlib.sha256(f"{task_id}\x00{peer_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def rendezvous_score(task_id: str, peer_id: str, capacity: float) -> float:
    """Score of ``peer_id`` for ``task_id``: higher wins. ``capacity`` must be finite and > 0.

    ``score = -capacity / ln(h)`` where ``h = (x + 0.5) / 2**64`` and ``x`` is the first 8 bytes
    of ``sha256(task_id + '\\x00' + peer_id)`` as a big-endian integer, so ``h`` is never 0 or 1.
    """
    if not (capacity > 0) or not math.isfinite(capacity):
        raise ValueError(f"capacity must be finite and > 0, got {capacity!r}")
    return capacity / _neg_ln_h(_hash_int(task_id, peer_id))


def rank_peers(task_id: str, peers: Mapping[str, float]) -> list[str]:
    """Peer ids by descending score for ``task_id``; equal scores by ascending peer id.

    The sort key is total, so the result does not depend on the mapping's iteration order.
    """
    scored = [(-rendezvous_score(task_id, pid, cap), pid) for pid, cap in peers.items()]
    scored.sort()
    return [pid for _, pid in scored]


def choose_owner(task_id: str, peers: Mapping[str, float]) -> str | None:
    """The peer that should claim ``task_id`` (top of ``rank_peers``); None if no peers."""
    best: tuple[float, str] | None = None
    for pid, cap in peers.items():
        cand = (-rendezvous_score(task_id, pid, cap), pid)
        if best is None or cand < best:
            best = cand
    return None if best is None else best[1]


def claim_beats(task_id: str, a: tuple[str, float], b: tuple[str, float]) -> bool:
    """Whether claim ``a = (peer_id, capacity)`` beats claim ``b`` for ``task_id``.

    The higher score wins; on equal scores the smaller peer id wins, the same order as
    ``rank_peers``, so for distinct peers exactly one of ``claim_beats(t, a, b)`` and
    ``claim_beats(t, b, a)`` is True and every peer resolves a conflict the same way.
    """
    ka = (-rendezvous_score(task_id, a[0], a[1]), a[0])
    kb = (-rendezvous_score(task_id, b[0], b[1]), b[0])
    return ka < kb
