"""Weighted rendezvous hashing: determinism, minimal disruption, weighting, no ties."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.scheduler.assignment import (
    _hash_int,
    _neg_ln_h,
    _neg_ln_int,
    choose_owner,
    claim_beats,
    neg_ln_fixed,
    rank_peers,
    rendezvous_score,
)

IDS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
)
CAPACITY = st.floats(min_value=0.01, max_value=1000.0, allow_nan=False, allow_infinity=False)
PEERS = st.dictionaries(IDS, CAPACITY, min_size=1, max_size=8)
TASKS = [f"task-{i}" for i in range(300)]

SETTINGS = settings(max_examples=60, deadline=None)


def _reference_score(task_id: str, peer_id: str, capacity: float) -> float:
    """The formula as DESIGN.md states it, for the mid range where floats are exact enough."""
    x = int.from_bytes(hashlib.sha256((task_id + "\x00" + peer_id).encode()).digest()[:8], "big")
    h = (x + 0.5) / 2**64
    return -capacity / math.log(h)


def test_score_matches_reference_formula() -> None:
    for i in range(500):
        task, peer, cap = f"t{i}", f"peer-{i % 7}", 1.0 + i % 5
        assert math.isclose(rendezvous_score(task, peer, cap), _reference_score(task, peer, cap),
                            rel_tol=1e-12)


def test_neg_ln_h_is_finite_positive_at_the_extremes() -> None:
    for x in [0, 1, 2**52, 2**63 - 1, 2**63, 2**64 - 2**11, 2**64 - 2, 2**64 - 1]:
        v = _neg_ln_h(x)
        assert math.isfinite(v) and v > 0, x
    # near h = 1 the naive formula rounds h to 1.0 and divides by zero; ours stays exact
    assert (2**64 - 1 + 0.5) / 2**64 == 1.0
    assert math.isclose(_neg_ln_h(2**64 - 1), 0.5 / 2**64, rel_tol=1e-12)
    # non-increasing in x (h increases), also across the branch switch at 2**63 where
    # neighbours round to the same double, and strictly so near 1 where ln(h) -> 0
    xs = [0, 5, 2**40, 2**63 - 2**11, 2**63 - 1, 2**63, 2**63 + 2**11, 2**64 - 3, 2**64 - 2, 2**64 - 1]
    vals = [_neg_ln_h(x) for x in xs]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert abs(_neg_ln_h(2**63 - 1) - math.log(2)) < 1e-15 and abs(_neg_ln_h(2**63) - math.log(2)) < 1e-15
    assert vals[-3] > vals[-2] > vals[-1]


@pytest.mark.parametrize("capacity", [0, 0.0, -1, -1e-9, float("nan"), float("inf"), float("-inf")])
def test_bad_capacity_raises(capacity: float) -> None:
    with pytest.raises(ValueError):
        rendezvous_score("t", "p", capacity)
    with pytest.raises(ValueError):
        rank_peers("t", {"p": capacity, "q": 1.0})
    with pytest.raises(ValueError):
        claim_beats("t", ("p", capacity), ("q", 1.0))


@given(capacity=st.floats(max_value=0.0, allow_nan=False))
@SETTINGS
def test_non_positive_capacity_raises(capacity: float) -> None:
    with pytest.raises(ValueError):
        rendezvous_score("task", "peer", capacity)


def test_empty() -> None:
    assert rank_peers("t", {}) == []
    assert choose_owner("t", {}) is None


@given(task=IDS, peers=PEERS, seed=st.integers(0, 2**32))
@SETTINGS
def test_deterministic_regardless_of_mapping_order(task: str, peers: dict[str, float], seed: int) -> None:
    items = list(peers.items())
    random.Random(seed).shuffle(items)
    shuffled = dict(items)
    ranking = rank_peers(task, peers)
    assert ranking == rank_peers(task, shuffled)
    assert sorted(ranking) == sorted(peers)
    assert choose_owner(task, peers) == choose_owner(task, shuffled) == ranking[0]
    scores = [rendezvous_score(task, p, peers[p]) for p in ranking]
    assert all(a >= b for a, b in zip(scores, scores[1:]))


@given(task=IDS, peers=PEERS)
@SETTINGS
def test_claim_beats_agrees_with_ranking(task: str, peers: dict[str, float]) -> None:
    ranking = rank_peers(task, peers)
    for i, a in enumerate(ranking):
        for b in ranking[i + 1:]:
            ca, cb = (a, peers[a]), (b, peers[b])
            assert claim_beats(task, ca, cb)
            assert not claim_beats(task, cb, ca)
        assert not claim_beats(task, (a, peers[a]), (a, peers[a]))


@pytest.mark.parametrize("task", ["t", "bafy-1", "task-42"])
def test_exact_ties_break_by_peer_id(task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact ties never happen by chance (L has ~95+ significant bits); force one by giving every
    pair the same L, then equal capacities tie exactly and the smaller peer id wins."""
    import p2p.scheduler.assignment as assignment

    monkeypatch.setattr(assignment, "neg_ln_fixed", lambda t, p: 12345 << 100)
    for cap in (1.0, 0.1, 3.5):
        for peers in ({"peer-a": cap, "peer-b": cap}, {"peer-b": cap, "peer-a": cap}):
            assert rank_peers(task, peers) == ["peer-a", "peer-b"]
            assert choose_owner(task, peers) == "peer-a"
        assert claim_beats(task, ("peer-a", cap), ("peer-b", cap))
        assert not claim_beats(task, ("peer-b", cap), ("peer-a", cap))
    # 0.1 + 0.2 != 0.3 as floats: capacities are compared as the exact values of their floats
    assert claim_beats(task, ("peer-z", 0.1 + 0.2), ("peer-a", 0.3))


def test_no_float_decides_the_comparison() -> None:
    """The decision is integer cross-multiplication; it agrees with the real-number formula
    (here checked against float scores where they are far apart) and L is exact integers."""
    for i in range(300):
        task = f"task-{i}"
        la, lb = neg_ln_fixed(task, "peer-a"), neg_ln_fixed(task, "peer-b")
        assert isinstance(la, int) and la > 0 and isinstance(lb, int) and lb > 0
        fa, fb = rendezvous_score(task, "peer-a", 2.0), rendezvous_score(task, "peer-b", 1.0)
        if abs(fa - fb) > 1e-9 * max(fa, fb):
            assert claim_beats(task, ("peer-a", 2.0), ("peer-b", 1.0)) == (fa > fb)
    # the integer L agrees with the float formula to full double precision
    for x in [0, 1, 2**52, 2**63 - 1, 2**63, 2**64 - 2**11, 2**64 - 1]:
        ref = -math.log((x + 0.5) / 2**64) if x < 2**63 else -math.log1p(-((2**64 - 1 - x + 0.5) / 2**64))
        assert math.isclose(_neg_ln_int(x) / 2**160, ref, rel_tol=1e-14), x


@given(task=IDS, peers=st.dictionaries(IDS, CAPACITY, min_size=3, max_size=8))
@SETTINGS
def test_claim_beats_is_a_strict_total_order(task: str, peers: dict[str, float]) -> None:
    items = list(peers.items())
    for a in items:
        assert not claim_beats(task, a, a)  # irreflexive
        for b in items:
            if a[0] != b[0]:
                assert claim_beats(task, a, b) != claim_beats(task, b, a)  # total, antisymmetric
            for c in items:
                if claim_beats(task, a, b) and claim_beats(task, b, c):
                    assert claim_beats(task, a, c)  # transitive
    ranking = rank_peers(task, peers)
    assert all(claim_beats(task, (x, peers[x]), (y, peers[y])) for x, y in zip(ranking, ranking[1:]))


@given(peers=st.dictionaries(IDS, CAPACITY, min_size=2, max_size=8), data=st.data())
@SETTINGS
def test_removing_a_peer_moves_only_its_tasks(peers: dict[str, float], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(sorted(peers)))
    rest = {p: c for p, c in peers.items() if p != gone}
    for task in TASKS:
        before = choose_owner(task, peers)
        after = choose_owner(task, rest)
        if before != gone:
            assert after == before
        else:
            assert after == rank_peers(task, peers)[1]  # the runner-up takes over


@given(peers=PEERS, new=IDS, cap=CAPACITY)
@SETTINGS
def test_adding_a_peer_moves_tasks_only_to_it(peers: dict[str, float], new: str, cap: float) -> None:
    if new in peers:
        return
    grown = {**peers, new: cap}
    for task in TASKS:
        before = choose_owner(task, peers)
        after = choose_owner(task, grown)
        assert after in (before, new)


@given(peers=st.dictionaries(IDS, CAPACITY, min_size=2, max_size=6), data=st.data(), factor=st.floats(0.1, 10))
@SETTINGS
def test_changing_a_capacity_moves_tasks_only_to_or_from_that_peer(
    peers: dict[str, float], data: st.DataObject, factor: float
) -> None:
    peer = data.draw(st.sampled_from(sorted(peers)))
    changed = {**peers, peer: peers[peer] * factor}
    for task in TASKS:
        before = choose_owner(task, peers)
        after = choose_owner(task, changed)
        if before != after:
            assert peer in (before, after)
            assert (after == peer) == (factor > 1)


def _shares(capacities: dict[str, float], n: int, prefix: str) -> dict[str, float]:
    counts = dict.fromkeys(capacities, 0)
    for i in range(n):
        owner = choose_owner(f"{prefix}{i}", capacities)
        assert owner is not None
        counts[owner] += 1
    return {p: c / n for p, c in counts.items()}


@pytest.mark.parametrize(
    "capacities",
    [
        {"peer-a": 1.0, "peer-b": 1.0, "peer-c": 1.0, "peer-d": 1.0},
        {"peer-a": 1.0, "peer-b": 2.0, "peer-c": 3.0, "peer-d": 4.0},
        {"gpu-h100": 10.0, "laptop": 1.0, "cpu-box": 2.5},
        {"big": 100.0, "small": 1.0},
    ],
)
def test_share_follows_capacity(capacities: dict[str, float]) -> None:
    n = 20_000
    total = sum(capacities.values())
    shares = _shares(capacities, n, "bafy-task-")
    for peer, cap in capacities.items():
        # binomial sd <= 0.0036 at n = 20k; 3 points is > 8 sd
        assert abs(shares[peer] - cap / total) < 0.03, (peer, shares[peer], cap / total)


@given(
    capacities=st.lists(st.floats(0.5, 20.0), min_size=2, max_size=5),
    prefix=st.text(alphabet="abcdef0123456789", min_size=1, max_size=8),
)
@settings(max_examples=4, deadline=None)
def test_share_follows_capacity_random_weights(capacities: list[float], prefix: str) -> None:
    peers = {f"12D3KooW{i}": c for i, c in enumerate(capacities)}
    total = sum(capacities)
    shares = _shares(peers, 20_000, prefix)
    for peer, cap in peers.items():
        assert abs(shares[peer] - cap / total) < 0.03


def test_scores_do_not_tie() -> None:
    # The seed's Hamming distance over 256-bit ids had 257 possible values; here 3,000
    # (task, peer) pairs at equal capacity give 3,000 distinct scores.
    scores = {rendezvous_score(f"task-{t}", f"peer-{p}", 1.0) for t in range(60) for p in range(50)}
    assert len(scores) == 60 * 50
    ranking = rank_peers("task-0", {f"peer-{p}": 1.0 for p in range(1000)})
    assert len({rendezvous_score("task-0", p, 1.0) for p in ranking}) == 1000


@given(task=IDS, a=IDS, b=IDS)
@SETTINGS
def test_different_pairs_score_differently(task: str, a: str, b: str) -> None:
    if a != b:
        assert rendezvous_score(task, a, 1.0) != rendezvous_score(task, b, 1.0)


@given(st.text(min_size=1, max_size=20),
       st.dictionaries(st.text(min_size=1, max_size=8),
                       st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False), max_size=6))
def test_rank_peers_orders_by_the_exact_fractions(task: str, peers: dict[str, float]) -> None:
    from fractions import Fraction

    from p2p.scheduler.assignment import neg_ln_fixed

    expect = sorted(peers, key=lambda pid: (-Fraction(peers[pid]) / neg_ln_fixed(task, pid), pid))
    assert rank_peers(task, peers) == expect
