"""FibonacciHeap against a heapq model with lazy deletion, plus structural invariants."""

from __future__ import annotations

import heapq
import random
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2p.scheduler.heap import FibonacciHeap, Handle

PRIORITIES = st.integers(min_value=1, max_value=10)


def _fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def check_structure(heap: FibonacciHeap[Any]) -> list[Handle[Any]]:
    """Assert every Fibonacci-heap invariant; return all live nodes. Iterative on purpose."""
    m = heap._min
    if m is None:
        assert len(heap) == 0 and not heap
        return []
    assert bool(heap)
    nodes: list[Handle[Any]] = []
    # (ring start, expected parent)
    stack: list[tuple[Handle[Any], Handle[Any] | None]] = [(m, None)]
    subtree_size: dict[int, int] = {}
    order: list[Handle[Any]] = []  # parents before children
    roots = 0
    while stack:
        start, parent = stack.pop()
        node = start
        ring = 0
        while True:
            ring += 1
            assert ring <= len(heap), "ring longer than the heap: broken links"
            assert node._right._left is node and node._left._right is node
            assert node._parent is parent
            assert node._alive and node._owner is heap
            if parent is None:
                roots += 1
                assert not node._mark, "roots are never marked"
                assert not node._key < m._key, "min pointer is not the minimum root"
            else:
                assert not node._key < parent._key, "heap order violated"
            nodes.append(node)
            order.append(node)
            if node._child is not None:
                stack.append((node._child, node))
            else:
                assert node._degree == 0
            node = node._right
            if node is start:
                break
        if parent is not None:
            assert parent._degree == ring, "degree bookkeeping wrong"
    assert m._parent is None
    assert len(nodes) == len(heap)
    assert len({id(n) for n in nodes}) == len(nodes)
    # Subtree sizes bottom-up: a node of degree k roots at least F(k+2) nodes, the bound
    # that cascading cuts guarantee (and what makes pop O(log n)).
    for node in reversed(order):
        size = 1
        if node._child is not None:
            c = node._child
            while True:
                size += subtree_size[id(c)]
                c = c._right
                if c is node._child:
                    break
        subtree_size[id(node)] = size
        assert size >= _fib(node._degree + 2), "tree too thin for its degree"
    return nodes


class HeapMachine(RuleBasedStateMachine):
    """Random push/pop/decrease/remove/update; every pop must equal the model's pop."""

    def __init__(self) -> None:
        super().__init__()
        self.heap: FibonacciHeap[int] = FibonacciHeap()
        self.model: list[tuple[tuple[int, int], int]] = []  # (key, item) with stale entries
        self.live: dict[int, tuple[tuple[int, int], Handle[int]]] = {}
        self.dead: list[Handle[int]] = []
        self.next_item = 0
        self.next_uid = 0

    # Every key is fresh, hence unique: positive uids for pushes, negative ones for keys
    # that must be smaller than a current key of the same priority.
    def _uid(self, negative: bool = False) -> int:
        self.next_uid += 1
        return -self.next_uid if negative else self.next_uid

    def _model_pop(self) -> tuple[tuple[int, int], int]:
        while True:
            key, item = heapq.heappop(self.model)
            cur = self.live.get(item)
            if cur is not None and cur[0] == key:
                return key, item

    def _model_min(self) -> tuple[tuple[int, int], int]:
        while True:
            key, item = self.model[0]
            cur = self.live.get(item)
            if cur is not None and cur[0] == key:
                return key, item
            heapq.heappop(self.model)

    def _set_key(self, item: int, key: tuple[int, int]) -> None:
        self.live[item] = (key, self.live[item][1])
        heapq.heappush(self.model, (key, item))

    @rule(priority=PRIORITIES)
    def push(self, priority: int) -> None:
        key = (priority, self._uid())
        item = self.next_item
        self.next_item += 1
        handle = self.heap.push(key, item)
        assert handle.alive and handle.key == key and handle.item == item
        self.live[item] = (key, handle)
        heapq.heappush(self.model, (key, item))

    @rule(priorities=st.lists(PRIORITIES, min_size=2, max_size=40))
    def push_many(self, priorities: list[int]) -> None:
        """Bulk pushes: the next pop consolidates them into deep trees worth cutting."""
        for priority in priorities:
            self.push(priority)

    @rule(n=st.integers(min_value=1, max_value=4))
    def pop(self, n: int) -> None:
        for _ in range(n):
            if not self.live:
                with pytest.raises(IndexError):
                    self.heap.pop()
                return
            expected = self._model_pop()
            got = self.heap.pop()
            assert got == expected
            handle = self.live.pop(expected[1])[1]
            assert not handle.alive
            self.dead.append(handle)

    @rule()
    def peek(self) -> None:
        if not self.live:
            with pytest.raises(IndexError):
                self.heap.peek()
        else:
            assert self.heap.peek() == self._model_min()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), drop=st.integers(min_value=0, max_value=10), equal=st.booleans())
    def decrease_key(self, data: st.DataObject, drop: int, equal: bool) -> None:
        item = data.draw(st.sampled_from(sorted(self.live)))
        key, handle = self.live[item]
        new_key = key if (equal and drop == 0) else (key[0] - drop, self._uid(negative=True))
        self.heap.decrease_key(handle, new_key)
        assert handle.key == new_key
        if new_key != key:
            self._set_key(item, new_key)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), rise=st.integers(min_value=0, max_value=5))
    def decrease_key_rejects_bigger_key(self, data: st.DataObject, rise: int) -> None:
        item = data.draw(st.sampled_from(sorted(self.live)))
        key, handle = self.live[item]
        bigger = (key[0] + rise, self._uid()) if rise else (key[0], key[1] + 1)
        with pytest.raises(ValueError):
            self.heap.decrease_key(handle, bigger)
        assert handle.key == key and handle.alive

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.live)))
        handle = self.live.pop(item)[1]
        self.heap.remove(handle)
        assert not handle.alive
        self.dead.append(handle)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), priority=PRIORITIES, first=st.booleans())
    def update_key(self, data: st.DataObject, priority: int, first: bool) -> None:
        item = data.draw(st.sampled_from(sorted(self.live)))
        handle = self.live[item][1]
        new_key = (priority, self._uid(negative=first))
        self.heap.update_key(handle, new_key)
        assert handle.alive and handle.key == new_key and handle.item == item
        self._set_key(item, new_key)

    @precondition(lambda self: self.dead)
    @rule(data=st.data(), op=st.sampled_from(["decrease_key", "remove", "update_key"]))
    def dead_handles_are_rejected(self, data: st.DataObject, op: str) -> None:
        handle = data.draw(st.sampled_from(self.dead))
        with pytest.raises(ValueError):
            if op == "remove":
                self.heap.remove(handle)
            else:
                getattr(self.heap, op)(handle, (-100, self._uid(negative=True)))
        assert not handle.alive

    @invariant()
    def matches_model(self) -> None:
        assert len(self.heap) == len(self.live)
        nodes = check_structure(self.heap)
        assert {id(n) for n in nodes} == {id(h) for _, h in self.live.values()}
        assert sorted(self.heap) == sorted(self.live)
        for key, handle in self.live.values():
            assert handle.key == key
        if self.live:
            assert self.heap.peek() == self._model_min()


HeapMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHeapMachine = HeapMachine.TestCase


def test_large_push_pop_matches_sorted() -> None:
    rng = random.Random(20240601)
    heap: FibonacciHeap[int] = FibonacciHeap()
    keys = [(rng.randint(1, 10), i) for i in range(100_000)]
    for i, key in enumerate(keys):
        heap.push(key, i)
    assert len(heap) == 100_000
    out = [heap.pop()[0] for _ in range(100_000)]
    assert out == sorted(keys)
    assert not heap and len(heap) == 0


def test_large_interleaved_with_decrease_key() -> None:
    rng = random.Random(7)
    heap: FibonacciHeap[int] = FibonacciHeap()
    handles = [heap.push((rng.randint(1, 10), i), i) for i in range(20_000)]
    for _ in range(5):  # pops build deep trees, decreases cut them
        heap.pop()
    for h in rng.sample(handles, 10_000):
        if h.alive:
            heap.decrease_key(h, (h.key[0] - rng.randint(0, 5), -h.key[1]))
    check_structure(heap)
    expected = sorted(h.key for h in handles if h.alive)
    assert [heap.pop()[0] for _ in range(len(heap))] == expected


def test_decrease_key_errors() -> None:
    heap: FibonacciHeap[str] = FibonacciHeap()
    a = heap.push((5, 1), "a")
    b = heap.push((5, 2), "b")
    with pytest.raises(ValueError):
        heap.decrease_key(a, (6, 0))
    with pytest.raises(ValueError):
        heap.decrease_key(a, (5, 2))
    heap.decrease_key(a, (5, 1))  # equal key is allowed
    assert heap.pop() == ((5, 1), "a")
    assert not a.alive
    with pytest.raises(ValueError):
        heap.decrease_key(a, (1, 0))
    with pytest.raises(ValueError):
        heap.update_key(a, (1, 0))
    with pytest.raises(ValueError):
        heap.remove(a)
    heap.remove(b)
    assert not b.alive
    with pytest.raises(ValueError):
        heap.decrease_key(b, (1, 0))
    other: FibonacciHeap[str] = FibonacciHeap()
    c = other.push((1, 0), "c")
    with pytest.raises(ValueError):
        heap.decrease_key(c, (0, 0))
    with pytest.raises(IndexError):
        heap.pop()
    with pytest.raises(IndexError):
        heap.peek()


def test_update_key_can_lower_priority_and_keeps_handle() -> None:
    heap: FibonacciHeap[str] = FibonacciHeap()
    hs = {name: heap.push((p, i), name) for i, (name, p) in enumerate([("a", 1), ("b", 2), ("c", 3)])}
    heap.update_key(hs["a"], (9, 3))  # demote
    heap.update_key(hs["c"], (1, -1))  # promote
    assert hs["a"].alive and hs["a"].key == (9, 3)
    assert [heap.pop()[1] for _ in range(3)] == ["c", "b", "a"]


def _children(node: Handle[Any]) -> list[Handle[Any]]:
    out: list[Handle[Any]] = []
    c = node._child
    while c is not None:
        out.append(c)
        c = c._right
        if c is node._child:
            break
    return out


def _remove_subtree(heap: FibonacciHeap[Any], node: Handle[Any]) -> None:
    stack, order = [node], []
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(_children(n))
    for n in reversed(order):  # leaves first, so nothing is re-linked on the way
        heap.remove(n)


def _marked_chain(heap: FibonacciHeap[int], steps: int) -> list[Handle[int]]:
    """Grow a spine of ``steps`` marked nodes with public operations; return it bottom-up.

    Invariant between steps: one tree whose root R has two children, the spine below it and a
    leaf e. A step pushes four keys smaller than everything, then a still smaller x, and pops
    x: the four link into a degree-2 tree rooted at the smallest of them, r, which then links
    with R (also degree 2). Removing e marks R (it is no longer a root); removing r's other new descendants but
    one leaf restores the invariant one level higher.
    """
    counter = 0

    def k() -> tuple[int, int]:
        nonlocal counter
        counter -= 1
        return (0, counter)

    def push_four_and_pop() -> Handle[int]:
        for _ in range(3):
            heap.push(k(), 0)
        r = heap.push(k(), 0)
        heap.push(k(), 0)  # x, the minimum, popped at once
        heap.pop()
        return r

    root = push_four_and_pop()  # 4-node tree: root{p{q}, s}
    kids = _children(root)
    p = next(c for c in kids if c._degree == 1)
    leaf = next(c for c in kids if c._degree == 0)
    heap.remove(_children(p)[0])  # p loses its child: marked
    assert p._mark
    spine = [root]
    for _ in range(steps):
        r = push_four_and_pop()
        assert heap._min is r and r._parent is None
        keep: Handle[int] | None = None
        for c in _children(r):
            if c is spine[-1]:
                continue
            if keep is None and c._degree == 0:
                keep = c
            else:
                _remove_subtree(heap, c)
        heap.remove(leaf)  # the old root, now a child, loses a child: marked
        assert keep is not None and r._degree == 2
        leaf = keep
        spine.append(r)
    return spine


def test_long_cascading_cut_chain_is_iterative() -> None:
    """A deep chain of marked nodes: one decrease_key cuts all of them, no recursion."""
    heap: FibonacciHeap[int] = FibonacciHeap()
    depth = sys.getrecursionlimit() + 500
    spine = _marked_chain(heap, depth)
    nodes = check_structure(heap)
    assert spine[0]._parent is not None
    # every spine node but the root is marked and has exactly one child (the next one down)
    assert all(n._mark for n in spine[:-1])
    deepest_child = spine[0]._child
    assert deepest_child is not None
    roots_before = _count_roots(heap)
    heap.decrease_key(deepest_child, (-10**9, 0))
    assert _count_roots(heap) >= roots_before + depth - 1
    check_structure(heap)
    expected = sorted(n.key for n in nodes)
    assert [heap.pop()[0] for _ in range(len(heap))] == expected


def _count_roots(heap: FibonacciHeap[Any]) -> int:
    m = heap._min
    if m is None:
        return 0
    n, node = 0, m
    while True:
        n += 1
        node = node._right
        if node is m:
            return n
