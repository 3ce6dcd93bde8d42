"""Causality is the DAG's own relation for every author, forks included (p2p/scheduler/causality.py).

Random DAGs whose authors fork (a sibling with a seq already used, or an event that skips its
own predecessor) are noted event by event in a random causal order. After every event, for
every pair already noted, the fold's answer ("x is before c": the vector covers x and, for a
forked author, the walk finds it) equals reachability in the DAG. That is the module's claim
that a fork is always noted before the vector alone could mislead."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from p2p.scheduler.causality import Causality
from tests.scheduler.test_fold_agreement import descends

AUTHORS = ["a", "b", "c"]


@dataclass
class Ev:
    cid: bytes
    author: str
    seq: int
    parents: list[int]
    height: int


@st.composite
def dags(draw: Any) -> list[Ev]:
    events: list[Ev] = []
    last: dict[str, int] = {}
    for i in range(draw(st.integers(1, 14))):
        author = draw(st.sampled_from(AUTHORS))
        extra = set(draw(st.lists(st.integers(0, max(0, i - 1)), max_size=2))) if i else set()
        how = draw(st.sampled_from(["chain"] * 6 + ["sibling", "skip"]))
        prev = last.get(author)
        if prev is None or how == "chain":
            seq = events[prev].seq + 1 if prev is not None else 1
            parents = extra | ({prev} if prev is not None else set())
        else:
            # a sibling reuses the seq; a skip takes the next seq without its predecessor; both
            # leave out every extra parent that descends from the author's last event
            seq = events[prev].seq + (1 if how == "skip" else 0)
            parents = {p for p in extra if not descends(events, p, prev)}
            event(f"fork: {how}")
        height = 1 + max((events[p].height for p in parents), default=-1)
        events.append(Ev(bytes([i]) * 4, author, seq, sorted(parents), height))
        if how == "chain" or prev is None:
            last[author] = i
    return events


def _causal_order(events: list[Ev], rnd: random.Random) -> list[int]:
    done: list[int] = []
    left = set(range(len(events)))
    while left:
        ready = sorted(i for i in left if all(p in done for p in events[i].parents))
        pick = rnd.choice(ready)
        done.append(pick)
        left.remove(pick)
    return done


def _before(dag: Causality, x: Ev, c: Ev) -> bool:
    """The fold's question, as ``Where.before`` asks it (events, not ops: ignoring the stamp)."""
    if dag.vv[c.cid].get(x.author, 0) < x.seq:
        return False
    return dag.in_past(x.cid, x.author, x.seq, x.height, c.cid)


@settings(max_examples=300, deadline=None)
@given(dags(), st.randoms(use_true_random=False))
def test_before_is_reachability_at_every_step_of_every_causal_order(events: list[Ev], rnd: random.Random) -> None:
    dag = Causality()
    noted: list[int] = []
    for i in _causal_order(events, rnd):
        e = events[i]
        dag.add(e.cid, e.author, e.seq, e.height, [events[p].cid for p in e.parents])
        noted.append(i)
        for xi in noted:
            for ci in noted:
                assert _before(dag, events[xi], events[ci]) == descends(events, ci, xi), (xi, ci)
    if dag.forked:
        event("an author noted as forked")


def test_a_chain_is_never_noted_and_a_sibling_is() -> None:
    dag = Causality()
    dag.add(b"a1", "a", 1, 0, [])
    dag.add(b"a2", "a", 2, 1, [b"a1"])
    dag.add(b"b1", "b", 1, 2, [b"a2"])
    assert not dag.forked
    dag.add(b"a2'", "a", 2, 1, [b"a1"])  # a second event with seq 2
    assert dag.forked == {"a"}
    assert dag.in_past(b"a2", "a", 2, 1, b"b1") and not dag.in_past(b"a2'", "a", 2, 1, b"b1")


def test_an_event_that_skips_its_own_predecessor_is_noted() -> None:
    dag = Causality()
    dag.add(b"a1", "a", 1, 0, [])
    dag.add(b"a2", "a", 2, 0, [])  # seq 2 without a1 in its past
    assert dag.forked == {"a"}
    assert not dag.in_past(b"a1", "a", 1, 0, b"a2")
