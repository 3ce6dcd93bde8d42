"""Causal order of folded events: version vectors, made exact for authors that fork.

Why a module of its own: the fold asks one question of the DAG — is this op's event in that
op's past? — and answers it for every claim, cancel, advert and compaction cut. A version vector
(author -> highest seq in an event's past) answers it in O(1), and exactly, as long as each
author writes a chain (every event of theirs descends from their previous one, as the clock
writes them). A faulty author can fork: two events with one seq, or an event that skips its own
predecessor. Then "the vector covers seq s" no longer means "the author's event of seq s is in
the past": a sibling the other branch never saw is covered too. Peers would still agree (the
vectors are content-derived), but on a cut that is not the DAG's — and a compaction cut that is
not a real past cannot be re-folded from it, nor history below it dropped safely
(docs/compaction.md §4–§5).

So the fold notes which authors fork, and for those alone answers by walking parents:

- **Detection.** An event by ``a`` with seq ``s`` is a chain step when its parents' vector has
  ``a`` at exactly ``s - 1`` and no event of ``a`` with seq ``s`` or more was folded before it.
  Anything else marks ``a`` as forked, for good.
- **Why detection is in time.** Say ``x`` (by ``a``, seq ``s``) is covered by ``c``'s vector
  but not in ``c``'s past. Walking down ``a``'s events in ``c``'s past from the highest, either
  one is not a chain step (folded before ``c``: detected) or the chain reaches an event of seq
  ``s`` in ``c``'s past, which is not ``x``: two events with seq ``s`` are folded by the time
  ``x`` and ``c`` both are, and the second of them was detected. So whenever the fold compares
  ``x`` with ``c``, a wrong answer from the vector is never used: either ``a`` is marked and the
  walk answers, or the vector is exact. The fold's answers stay a function of the set of events.
- **Cost.** O(1) for everyone else, and O(1) for a forked author's event folded after ``c``
  (it cannot be in ``c``'s past: each event keeps its fold index). Otherwise a walk from ``c``
  down through the events whose vector still covers ``x`` and whose height is above ``x``'s,
  which stops at any event already known to reach ``x`` (or known not to): the ops of honest
  peers on a forked submitter's workflow ask about the same submit event by event, and each
  asks only as far as the previous answer. The parents, heights and fold indexes of folded
  events are kept for it; the memo is cleared past ``MEMO_MAX`` entries. (An adversarial
  review measured both costs before these two shortcuts: one forked advert made every peer
  walk its whole history once per claim, 6.6 s at 10,000 events; a forked submitter made
  honest workers' ops walk too, 10.3 s against 2.7 s at 8,000 events.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

# author -> highest seq of that author's events in an event's past (inclusive)
VV = dict[str, int]

MEMO_MAX = 1 << 16  # reachability answers kept for forked authors' events, ~10 MB (then cleared)


@dataclass(slots=True, eq=False)
class Causality:
    """The folded events' vectors, parents and heights, and the authors known to fork."""

    vv: dict[bytes, VV] = field(default_factory=dict)
    # cid -> (height, parents, fold index)
    links: dict[bytes, tuple[int, tuple[bytes, ...], int]] = field(default_factory=dict)
    forked: set[str] = field(default_factory=set)
    _max_seq: dict[str, int] = field(default_factory=dict)
    # author -> its folded event of the highest seq: what that peer had folded when it last
    # wrote (the compactor prunes only events every live peer is known to hold)
    latest: dict[str, bytes] = field(default_factory=dict)
    _memo: dict[tuple[bytes, bytes], bool] = field(default_factory=dict)

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.vv

    def add(self, cid: bytes, author: str, seq: int, height: int, parents: Sequence[Any]) -> VV:
        """Note an event (its parents noted first: causal delivery) and return its vector."""
        vv: VV = {}
        own: list[bytes] = []
        for p in parents:
            p = bytes(p)
            pv = self.vv.get(p)
            if pv is None:  # never with causal delivery; tolerated, the event just sees less
                continue
            own.append(p)
            for who, s in pv.items():
                if vv.get(who, 0) < s:
                    vv[who] = s
        if vv.get(author, 0) != seq - 1 or self._max_seq.get(author, 0) >= seq:
            self.forked.add(author)
        if self._max_seq.get(author, 0) < seq:
            self._max_seq[author] = seq
            self.latest[author] = cid
        if vv.get(author, 0) < seq:
            vv[author] = seq
        self.vv[cid] = vv
        self.links[cid] = (height, tuple(own), len(self.links))
        return vv

    def in_past(self, cid: bytes, who: str, seq: int, height: int, of: bytes) -> bool:
        """Whether event ``cid`` (by ``who``, with ``seq`` and ``height``) is in event ``of``'s
        past, ``of`` included, given that ``of``'s vector covers it (the caller checked)."""
        if cid == of or who not in self.forked:
            return True
        mine, theirs = self.links.get(cid), self.links.get(of)
        if mine is None or theirs is None or mine[2] > theirs[2]:
            return False  # folded after ``of``: never in its past (causal delivery)
        got = self._memo.get((cid, of))
        if got is None:
            got = self._walk(cid, who, seq, height, of)
        return got

    def _walk(self, cid: bytes, who: str, seq: int, height: int, of: bytes) -> bool:
        """Whether ``cid`` is an ancestor of ``of``: depth first from ``of``, never below ``cid``'s
        height or where the vector no longer covers it, stopping at a memoised answer. Every
        event visited by a walk that fails does not reach ``cid`` either: all are memoised so."""
        memo = self._memo
        if len(memo) > MEMO_MAX:
            memo.clear()
        stack, seen = [of], {of}
        while stack:
            at = stack.pop()
            for p in self.links[at][1]:
                if p == cid or memo.get((cid, p)) is True:
                    memo[(cid, of)] = True
                    return True
                if p in seen or (cid, p) in memo:  # seen, or known not to reach it
                    continue
                seen.add(p)
                h = self.links[p][0]
                # only an event above x, whose past still holds seq >= x's, can lead to x
                if h > height and self.vv[p].get(who, 0) >= seq:
                    stack.append(p)
        for at in seen:
            memo[(cid, at)] = False
        return False
