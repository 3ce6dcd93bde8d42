"""Fibonacci heap for a peer's local queue of claimed tasks.

Keys are comparable values, normally ``(priority, submit_order)`` tuples: a lower key is served
first (priority 1 is the highest). The heap never breaks ties itself; callers make keys unique
(submit order in the tuple), which makes the pop order fully deterministic.

Why a Fibonacci heap and not ``heapq``: reprioritising a waiting task is a ``decrease_key`` in
O(1) amortised, through a ``Handle`` that stays valid while the task waits, instead of a stale
entry left behind in a binary heap. Every walk over the structure is iterative, so long cut
chains and deep trees cannot hit Python's recursion limit.
"""

from __future__ import annotations

from typing import Any, Generic, Iterator, Protocol, TypeVar

__all__ = ["FibonacciHeap", "Handle"]

T = TypeVar("T")


class SupportsLessThan(Protocol):
    """What a key must offer: a strict, total ``<`` (tuples of ints qualify)."""

    def __lt__(self, other: Any, /) -> bool: ...


class Handle(Generic[T]):
    """A node of the heap, handed to the caller by ``push``.

    It is the caller's reference to a waiting entry: pass it to ``decrease_key``, ``remove``
    or ``update_key``. ``alive`` turns False once the entry is popped or removed.
    """

    __slots__ = (
        "_key", "_item", "_alive", "_owner",
        "_parent", "_child", "_left", "_right", "_degree", "_mark",
    )

    def __init__(self, key: SupportsLessThan, item: T, owner: FibonacciHeap[T]) -> None:
        self._key = key
        self._item = item
        self._alive = True
        self._owner = owner
        self._parent: Handle[T] | None = None
        self._child: Handle[T] | None = None
        self._left: Handle[T] = self
        self._right: Handle[T] = self
        self._degree = 0
        self._mark = False

    @property
    def key(self) -> Any:
        """The current key (read-only; change it through the heap so order is kept)."""
        return self._key

    @property
    def item(self) -> T:
        """The payload pushed with this handle."""
        return self._item

    @property
    def alive(self) -> bool:
        """True while the entry is in the heap."""
        return self._alive

    def __repr__(self) -> str:
        state = "alive" if self._alive else "dead"
        return f"Handle(key={self._key!r}, item={self._item!r}, {state})"


class FibonacciHeap(Generic[T]):
    """Min-heap with O(1) push and decrease-key, O(log n) amortised pop and remove."""

    __slots__ = ("_min", "_size")

    def __init__(self) -> None:
        self._min: Handle[T] | None = None
        self._size = 0

    # -- public API ---------------------------------------------------------------------

    def push(self, key: SupportsLessThan, item: T) -> Handle[T]:
        """Insert ``item`` under ``key`` (O(1): it joins the root list, no restructuring)."""
        node: Handle[T] = Handle(key, item, self)
        self._add_root(node)
        self._size += 1
        return node

    def peek(self) -> tuple[Any, T]:
        """The smallest ``(key, item)`` without removing it; IndexError when empty."""
        m = self._min
        if m is None:
            raise IndexError("peek from an empty FibonacciHeap")
        return m._key, m._item

    def pop(self) -> tuple[Any, T]:
        """Remove and return the smallest ``(key, item)``; IndexError when empty."""
        m = self._min
        if m is None:
            raise IndexError("pop from an empty FibonacciHeap")
        self._extract(m)
        return m._key, m._item

    def decrease_key(self, handle: Handle[T], new_key: SupportsLessThan) -> None:
        """Lower ``handle``'s key to ``new_key`` (equal is allowed, a no-op for order).

        ValueError if ``new_key`` is bigger than the current key, or if the handle is dead
        or belongs to another heap. Amortised O(1): a node smaller than its parent is cut to
        the root list, and a parent that loses a second child is cut too (cascading cut),
        which keeps every tree's size exponential in its degree.
        """
        self._check(handle)
        if handle._key < new_key:
            raise ValueError(
                f"decrease_key: new key {new_key!r} is bigger than current {handle._key!r}"
            )
        handle._key = new_key
        parent = handle._parent
        if parent is not None and new_key < parent._key:
            self._cut(handle, parent)
            self._cascading_cut(parent)
        m = self._min
        assert m is not None
        if new_key < m._key:
            self._min = handle

    def remove(self, handle: Handle[T]) -> None:
        """Delete an arbitrary live entry (a cancelled or stolen task); O(log n) amortised.

        Done directly rather than by decreasing to a sentinel minus-infinity key, so keys of
        any comparable type work.
        """
        self._check(handle)
        parent = handle._parent
        if parent is not None:
            self._cut(handle, parent)
            self._cascading_cut(parent)
        self._extract(handle)

    def update_key(self, handle: Handle[T], new_key: SupportsLessThan) -> None:
        """Set ``handle``'s key in either direction (reprioritising can lower priority too).

        A smaller or equal key is a ``decrease_key``; a bigger one removes the node and pushes
        it again into the same handle, so the caller's reference stays valid.
        """
        self._check(handle)
        if not handle._key < new_key:
            self.decrease_key(handle, new_key)
            return
        self.remove(handle)
        handle._key = new_key
        handle._alive = True
        self._add_root(handle)
        self._size += 1

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Items in no particular order (a snapshot, so mutating while iterating is safe)."""
        return iter([h._item for h in self._nodes()])

    def __repr__(self) -> str:
        return f"FibonacciHeap(len={self._size})"

    # -- internals ----------------------------------------------------------------------

    def _nodes(self) -> list[Handle[T]]:
        """Every live node, walking sibling rings with an explicit stack (no recursion)."""
        out: list[Handle[T]] = []
        if self._min is None:
            return out
        stack: list[Handle[T]] = [self._min]
        while stack:
            start = stack.pop()
            node = start
            while True:
                out.append(node)
                if node._child is not None:
                    stack.append(node._child)
                node = node._right
                if node is start:
                    break
        return out

    def _check(self, handle: Handle[T]) -> None:
        if handle._owner is not self:
            raise ValueError("handle belongs to another heap")
        if not handle._alive:
            raise ValueError("handle was already popped or removed")

    def _add_root(self, node: Handle[T]) -> None:
        """Splice ``node`` into the root list next to the minimum and update the minimum."""
        node._parent = None
        node._mark = False
        m = self._min
        if m is None:
            node._left = node._right = node
            self._min = node
            return
        right = m._right
        node._left = m
        node._right = right
        m._right = node
        right._left = node
        if node._key < m._key:
            self._min = node

    def _cut(self, node: Handle[T], parent: Handle[T]) -> None:
        """Detach ``node`` from ``parent``'s child ring and make it a root."""
        if node._right is node:
            parent._child = None
        else:
            node._left._right = node._right
            node._right._left = node._left
            if parent._child is node:
                parent._child = node._right
        parent._degree -= 1
        self._add_root(node)

    def _cascading_cut(self, node: Handle[T]) -> None:
        """Walk up from ``node``: unmarked nodes get marked and stop the walk, marked ones are cut.

        A loop, not recursion: a chain of marked ancestors can be as long as the tree is deep.
        """
        while True:
            parent = node._parent
            if parent is None:
                return
            if not node._mark:
                node._mark = True
                return
            self._cut(node, parent)
            node = parent

    def _extract(self, node: Handle[T]) -> None:
        """Take root ``node`` out: its children join the root list, then consolidate."""
        child = node._child
        if child is not None:
            c = child
            while True:
                c._parent = None
                c._mark = False
                c = c._right
                if c is child:
                    break
            # Concatenate the child ring into the root ring right after ``node``.
            after = node._right
            child_last = child._left
            node._right = child
            child._left = node
            child_last._right = after
            after._left = child_last
            node._child = None
            node._degree = 0
        if node._right is node:
            self._min = None
        else:
            node._left._right = node._right
            node._right._left = node._left
            self._min = node._right  # any root; _consolidate finds the real minimum
            self._consolidate()
        node._left = node._right = node
        node._alive = False
        self._size -= 1

    def _consolidate(self) -> None:
        """Link roots of equal degree until all degrees differ, then rebuild the root list.

        Iterative, with a table indexed by degree. Of two roots the one with the smaller key
        becomes the parent; on equal keys the one already in the table stays a root, which is
        deterministic for a given sequence of operations.
        """
        start = self._min
        assert start is not None
        roots: list[Handle[T]] = []
        node = start
        while True:
            roots.append(node)
            node = node._right
            if node is start:
                break
        table: list[Handle[T] | None] = []
        for x in roots:
            d = x._degree
            while True:
                if d >= len(table):
                    table.extend([None] * (d + 1 - len(table)))
                y = table[d]
                if y is None:
                    break
                if not x._key < y._key:
                    x, y = y, x
                # Now x is the smaller (the table's root on a tie); y becomes its child.
                table[d] = None
                self._link(y, x)
                d += 1
            table[d] = x
        first: Handle[T] | None = None
        last: Handle[T] | None = None
        smallest: Handle[T] | None = None
        for x in table:
            if x is None:
                continue
            if first is None:
                first = x
            else:
                assert last is not None
                last._right = x
                x._left = last
            last = x
            if smallest is None or x._key < smallest._key:
                smallest = x
        assert first is not None and last is not None
        last._right = first
        first._left = last
        self._min = smallest

    @staticmethod
    def _link(child: Handle[T], parent: Handle[T]) -> None:
        """Make root ``child`` a child of root ``parent`` (root-list pointers are rebuilt later)."""
        child._parent = parent
        child._mark = False
        head = parent._child
        if head is None:
            child._left = child._right = child
            parent._child = child
        else:
            right = head._right
            child._left = head
            child._right = right
            head._right = child
            right._left = child
        parent._degree += 1
