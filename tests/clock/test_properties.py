"""Convergence properties: union semantics whatever the interleaving, delivery order or chunking."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.clock import MerkleClock
from tests.clock.conftest import IDENTITIES
from tests.clock.test_clock import assert_causal

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# a step: ("append", who, n_ops) or ("update", dst, src)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3), st.integers(1, 3)),
        st.tuples(st.just("update"), st.integers(0, 3), st.integers(0, 3)),
    ),
    min_size=1, max_size=25,
)


class Sandbox:
    """Clocks in a temp dir, so each hypothesis example starts clean."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self._n = 0
        self.clocks: list[MerkleClock] = []

    def new(self, who: int = 0) -> MerkleClock:
        self._n += 1
        c = MerkleClock.open(Path(self._dir.name) / f"{self._n}.db", IDENTITIES[who])
        self.clocks.append(c)
        return c

    def path(self, clock: MerkleClock) -> Path:
        return Path(self._dir.name) / f"{self.clocks.index(clock) + 1}.db"

    def close(self) -> None:
        for c in self.clocks:
            c.close()
        self._dir.cleanup()


def build(box: Sandbox, n_peers: int, plan: list[tuple[str, int, int]],
          first_identity: int = 0) -> list[MerkleClock]:
    peers = [box.new(first_identity + i) for i in range(n_peers)]
    for i, (kind, x, y) in enumerate(plan):
        x = x % n_peers
        if kind == "append":
            peers[x].append([{"op": "t", "step": i, "k": k} for k in range(y)])
            continue
        y = y % n_peers
        if x != y:
            before = {e.cid for e in peers[x].events()}
            applied = peers[x].update(peers[y])
            assert_causal([e for e in peers[x].events()])
            assert {e.cid for e in applied}.isdisjoint(before)
    return peers


def union_blocks(peers: list[MerkleClock]) -> dict:  # type: ignore[type-arg]
    out = {}
    for p in peers:
        for e in p.events():
            out[e.cid] = e.data
    return out


def state(c: MerkleClock) -> tuple:  # type: ignore[type-arg]
    return c.heads(), c.get_hash(), frozenset(e.cid for e in c.events()), len(c)


@SETTINGS
@given(st.integers(2, 4), steps, st.randoms(use_true_random=False), st.data())
def test_any_delivery_converges(n: int, plan: list, rnd, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    box = Sandbox()
    try:
        peers = build(box, n, plan)
        blocks = list(union_blocks(peers).items())
        reference = box.new()
        for p in peers:
            reference.update(p)
        ref_state = state(reference)
        assert ref_state[2] == frozenset(dict(blocks))
        for _ in range(2):
            fresh = box.new()
            delivery = blocks + data.draw(st.lists(st.sampled_from(blocks), max_size=5)) if blocks else []
            rnd.shuffle(delivery)
            applied = []
            while delivery:
                k = rnd.randint(1, 5)
                r = fresh.add_blocks(delivery[:k])
                assert r.rejected == []
                applied += r.applied
                delivery = delivery[k:]
            assert fresh.missing() == set()
            assert state(fresh) == ref_state
            assert_causal(applied)
            assert_causal(list(fresh.events()))
            assert len(applied) == len(blocks)
        # persistence: reopen gives the same heads, hash and events
        path = box.path(reference)
        reference.close()
        reopened = MerkleClock.open(path, IDENTITIES[0])
        assert state(reopened) == ref_state
        reopened.close()
    finally:
        box.close()


@SETTINGS
@given(steps, steps, steps)
def test_merge_is_commutative_associative_idempotent(p1: list, p2: list, p3: list) -> None:  # type: ignore[type-arg]
    box = Sandbox()
    try:
        # three single-author DAGs (distinct authors, so they start disjoint)
        a, b, c = (build(box, 1, plan, who)[0] for who, plan in enumerate((p1, p2, p3)))
        results = []
        for order in itertools.permutations([a, b, c]):
            target = box.new()
            for src in order:
                target.update(src)
            results.append(state(target))
        assert len(set(results)) == 1
        # (a ∪ b) ∪ c == a ∪ (b ∪ c), with real intermediate replicas
        ab = box.new(); ab.update(a); ab.update(b)
        bc = box.new(); bc.update(b); bc.update(c)
        left = box.new(); left.update(ab); left.update(c)
        right = box.new(); right.update(a); right.update(bc)
        assert state(left) == state(right) == results[0]
        # commutative pairwise: A.update(B) vs B.update(A) give the same set
        x = box.new(); x.update(a); x.update(b)
        y = box.new(); y.update(b); y.update(a)
        assert state(x) == state(y)
        # idempotent
        before = state(left)
        assert left.update(c) == [] and left.update(left) == []
        r = left.add_blocks([(e.cid, e.data) for e in left.events()])
        assert r.applied == [] and state(left) == before
    finally:
        box.close()
