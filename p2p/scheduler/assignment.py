"""Leaderless task assignment by weighted rendezvous hashing, decided in exact arithmetic.

Every peer ranks the eligible peers for a task from the same data (task id, peer ids,
capacities) and gets the same answer, so no leader is needed. Each (task, peer) pair has an
independent score ``capacity / L`` with ``L = -ln(h)`` and ``h`` uniform in (0, 1); the top score
owns the task. Two properties follow, and are why this scheme was chosen over the seed's Hamming
distance:

* a peer's share of tasks is ``capacity / sum(capacities)`` (``L / capacity`` is exponential
  with rate ``capacity``, and the minimum of independent exponentials picks each with
  probability proportional to its rate);
* a task moves only when its owner leaves, or to a peer that joins (scores of other pairs do
  not change), so churn reshuffles as little work as possible.

Why no float decides anything: the winner of a claim race is part of the replicated state, so
every peer on every platform must compute the very same comparison. ``math.log`` is not
required to round alike everywhere. So ``L`` is computed once per (task, peer) as an integer,
``floor(-ln(h) * 2**160)`` give or take a few units (a table of ``ln(1 + i/1024)`` plus a short
``atanh`` series, all integer shifts and divisions: the same bits on every machine), and two
scores are compared by cross-multiplying with the capacities taken as exact fractions of their
floats: ``a`` beats ``b`` iff ``cap_a * L_b > cap_b * L_a``, equal products broken by the
smaller peer id. That is a strict total order on distinct peers (a comparison of exact
rationals, then of strings). ``rendezvous_score`` stays, as a float, for display and tests only.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction

__all__ = ["rendezvous_score", "rank_peers", "choose_owner", "claim_beats", "neg_ln_fixed", "judge_of"]

# Fixed-point scale of L: 160 fractional bits. L ranges from ~2**-65 (h next to 1) to ~44.4, so
# even the smallest L keeps ~95 significant bits; the distribution is the real-number one.
_P = 160
_ONE = 1 << _P
_GUARD = 16
_TABLE_BITS = 10


def _two_atanh(num: int, den: int, prec: int) -> int:
    """``2 * atanh(num / den) * 2**prec`` (truncated), for ``0 <= num / den <= 1/3``."""
    z = (num << prec) // den
    z2 = (z * z) >> prec
    total = term = z
    k = 3
    while True:
        term = (term * z2) >> prec
        if not term:
            return 2 * total
        total += term // k
        k += 2


_LN2 = _two_atanh(1, 3, _P + _GUARD) >> _GUARD  # ln 2 = 2 atanh(1/3)
# ln(1 + i/1024) = 2 atanh(i / (2048 + i)), computed with guard bits, then truncated.
_LN_TABLE = tuple(
    _two_atanh(i, (2 << _TABLE_BITS) + i, _P + _GUARD) >> _GUARD for i in range(1 << _TABLE_BITS)
)


def _neg_ln_int(x: int) -> int:
    """``-ln(h) * 2**160`` as an integer, ``h = (x + 0.5) / 2**64`` (``0 <= x < 2**64``); > 0.

    ``h = m / 2**65`` with ``m = 2x + 1`` odd. Write ``m = 2**e * y`` with ``y`` in [1, 2) and
    ``c = 1 + i/1024`` the table point just below ``y``; then ``-ln(h) = (65 - e) ln 2 - ln c -
    ln(y / c)`` and ``ln(y / c) = 2 atanh(z)`` with ``z < 2**-11``: a few series terms.
    Only integers are involved, so every platform gets the same bits.
    """
    if not 0 <= x < 1 << 64:
        raise ValueError("x must be a 64-bit unsigned integer")
    m = 2 * x + 1
    e = m.bit_length() - 1
    i = ((m << _TABLE_BITS) >> e) & ((1 << _TABLE_BITS) - 1)
    a = m << _TABLE_BITS
    b = ((1 << _TABLE_BITS) + i) << e
    ln_y = _LN_TABLE[i] + _two_atanh(a - b, a + b, _P)
    out = (65 - e) * _LN2 - ln_y
    return out if out > 0 else 1  # never 0: h < 1 always (guards the last unit of rounding)


def _neg_ln_h(x: int) -> float:
    """``-ln(h)`` as a float (display and tests only; decisions use ``_neg_ln_int``)."""
    return _neg_ln_int(x) / _ONE


def _hash_int(task_id: str, peer_id: str) -> int:
    """First 8 bytes of ``sha256(task_id + '\\x00' + peer_id)`` (UTF-8), big-endian."""
    digest = hashlib.sha256(f"{task_id}\x00{peer_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


@functools.lru_cache(maxsize=1 << 15)
def neg_ln_fixed(task_id: str, peer_id: str) -> int:
    """``L`` of the pair as an exact integer (scale ``2**160``); cached, the scheduler re-ranks
    the same open tasks often and the integer series costs a few microseconds."""
    return _neg_ln_int(_hash_int(task_id, peer_id))


def _ratio(capacity: float) -> tuple[int, int]:
    if not (capacity > 0) or not math.isfinite(capacity):
        raise ValueError(f"capacity must be finite and > 0, got {capacity!r}")
    return float(capacity).as_integer_ratio()


def _exact_score(task_id: str, peer_id: str, capacity: float) -> Fraction:
    """The score as an exact rational: ``capacity / L`` (L in units of ``2**-160``)."""
    p, q = _ratio(capacity)
    return Fraction(p, q * neg_ln_fixed(task_id, peer_id))


def rendezvous_score(task_id: str, peer_id: str, capacity: float) -> float:
    """Score of ``peer_id`` for ``task_id`` as a float: higher wins. For display and tests;
    ``capacity`` must be finite and > 0.

    ``score = -capacity / ln(h)`` where ``h = (x + 0.5) / 2**64`` and ``x`` is the first 8 bytes
    of ``sha256(task_id + '\\x00' + peer_id)`` as a big-endian integer, so ``h`` is never 0 or 1.
    """
    _ratio(capacity)
    return capacity / _neg_ln_h(_hash_int(task_id, peer_id))


def rank_peers(task_id: str, peers: Mapping[str, float]) -> list[str]:
    """Peer ids by descending exact score for ``task_id``; equal scores by ascending peer id.

    The sort key is total, so the result does not depend on the mapping's iteration order.
    """
    # (peer, p, q * L) with capacity = p / q: compared by cross-multiplying integers, the same
    # order as sorting by the exact Fractions without their gcd work (the scheduler ranks
    # every open task on every peer change; this was a tenth of a busy node's event loop)
    scored = []
    for pid, cap in peers.items():
        p, q = _ratio(cap)
        scored.append((pid, p, q * neg_ln_fixed(task_id, pid)))
    scored.sort(key=_SCORE_ORDER)
    return [pid for pid, _, _ in scored]


def _score_cmp(a: tuple[str, int, int], b: tuple[str, int, int]) -> int:
    left, right = a[1] * b[2], b[1] * a[2]  # score_a = p_a / den_a > score_b  <=>  left > right
    if left != right:
        return -1 if left > right else 1
    return -1 if a[0] < b[0] else (1 if a[0] > b[0] else 0)


_SCORE_ORDER = functools.cmp_to_key(_score_cmp)


def choose_owner(task_id: str, peers: Mapping[str, float]) -> str | None:
    """The peer that should claim ``task_id`` (top of ``rank_peers``); None if no peers."""
    best: tuple[str, float] | None = None
    for pid, cap in peers.items():
        _ratio(cap)
        if best is None or claim_beats(task_id, (pid, cap), best):
            best = (pid, cap)
    return None if best is None else best[0]


def claim_beats(task_id: str, a: tuple[str, float], b: tuple[str, float]) -> bool:
    """Whether claim ``a = (peer_id, capacity)`` beats claim ``b`` for ``task_id``.

    The higher exact score wins (``cap_a * L_b > cap_b * L_a``, all integers); on equal scores
    the smaller peer id wins, the same order as ``rank_peers``, so for distinct peers exactly
    one of ``claim_beats(t, a, b)`` and ``claim_beats(t, b, a)`` is True and every peer resolves
    a conflict the same way.
    """
    pa, qa = _ratio(a[1])
    pb, qb = _ratio(b[1])
    left = pa * qb * neg_ln_fixed(task_id, b[0])
    right = pb * qa * neg_ln_fixed(task_id, a[0])
    if left != right:
        return left > right
    return a[0] < b[0]


def judge_of(task_id: str, attempt: int, candidates: Iterable[str]) -> str | None:
    """The peer entitled to judge that ``attempt`` of ``task_id`` was lost (its owner silent or
    too slow), among ``candidates``; None when there are none.

    Unweighted rendezvous on ``task_id#attempt``: every candidate is judge of an equal share of
    attempts whatever capacity it claims, and each attempt of a task has its own judge, so a
    peer that judged wrongly once (the owner was alive and continued) is unlikely to judge the
    same task again. The fold accepts an expiry from the judge alone (see ``state``)."""
    key = f"{task_id}#{attempt}"
    best: tuple[int, str] | None = None
    for peer in candidates:
        score = (neg_ln_fixed(key, peer), peer)  # smallest L is the top of an unweighted ranking
        if best is None or score < best:
            best = score
    return None if best is None else best[1]
