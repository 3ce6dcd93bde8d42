"""The sealed-entry store: LRU eviction bounded by max_bytes (checked against a model with
hypothesis), accounting that survives a restart, and a changed key that empties it."""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.cache.store import CacheStore

KID = b"k" * 16


def _key(i: int) -> bytes:
    return i.to_bytes(32, "big")


ops_st = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 7), st.integers(1, 300)),
    st.tuples(st.just("get"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("del"), st.integers(0, 7), st.just(0)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops_st, st.integers(32, 800))
def test_lru_matches_a_model_and_never_exceeds_max_bytes(ops, max_bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = CacheStore(Path(d) / "c.sqlite", max_bytes, KID)
        model: OrderedDict[bytes, int] = OrderedDict()  # key -> size, least recently used first
        for op, i, n in ops:
            k = _key(i)
            if op == "put":
                size = 32 + n
                ok = store.put(k, bytes([i]) * n)
                assert ok == (size <= max_bytes)
                if ok:
                    model.pop(k, None)
                    model[k] = size
                    while sum(model.values()) > max_bytes:
                        model.popitem(last=False)
            elif op == "get":
                got = store.get(k)
                assert (got is not None) == (k in model)
                if k in model:
                    assert got == bytes([i]) * (model[k] - 32)
                    model.move_to_end(k)
            else:
                assert store.delete(k) == (k in model)
                model.pop(k, None)
            assert store.bytes == sum(model.values()) <= max_bytes
            assert store.entries == len(model)
            assert store.keys_by_use() == list(model)
        store.close()
        again = CacheStore(Path(d) / "c.sqlite", max_bytes, KID)  # a restart keeps entries, order and accounting
        assert again.bytes == sum(model.values()) and again.keys_by_use() == list(model)
        again.close()


def test_a_lowered_max_bytes_evicts_at_open(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c.sqlite", 10_000, KID)
    for i in range(10):
        store.put(_key(i), b"x" * 100)
    store.get(_key(0))  # the most recently used now
    store.close()
    small = CacheStore(tmp_path / "c.sqlite", 300, KID)
    assert small.bytes <= 300 and small.entries == 2
    assert small.keys_by_use() == [_key(9), _key(0)]
    small.close()


def test_another_key_empties_the_store(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c.sqlite", 10_000, KID)
    store.put(_key(1), b"x" * 10)
    store.close()
    other = CacheStore(tmp_path / "c.sqlite", 10_000, b"o" * 16)
    assert other.entries == 0 and other.get(_key(1)) is None
    other.close()
