"""The cache key: canonical (the same request always maps to one key), distinct for distinct
requests, and keyed (another network's key, or none, gives unrelated keys)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.cache.keys import CacheKeyError, CacheKeys, cache_key, cache_keys, canonical_request, load_or_create_local_key

NET = CacheKeys.from_secret(b"\x01" * 32, shared=True)

scalars = st.one_of(st.integers(-2**40, 2**40), st.text(max_size=8), st.booleans(), st.none())
params_st = st.dictionaries(st.text(max_size=6), st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=5)
request_st = st.tuples(st.text(min_size=1, max_size=12), st.one_of(st.none(), st.text(min_size=1, max_size=6)),
                       params_st, st.text(max_size=40))


@given(request_st, st.randoms())
def test_param_order_does_not_change_the_key(req, rnd) -> None:
    model, task, params, text = req
    items = list(params.items())
    rnd.shuffle(items)
    assert cache_key(NET, model, task, dict(items), text) == cache_key(NET, model, task, params, text)


@given(request_st, request_st)
def test_distinct_requests_get_distinct_keys(a, b) -> None:
    norm = lambda r: (r[0], r[1] or "", r[2], r[3])  # noqa: E731 - task None and "" are one request
    if norm(a) != norm(b):
        assert canonical_request(*a) != canonical_request(*b)
        assert cache_key(NET, *a) != cache_key(NET, *b)


@given(st.text(min_size=1, max_size=20), st.text(max_size=20))
def test_field_boundaries_cannot_be_shifted(x, y) -> None:
    """Moving text from one field into the next never gives the same bytes: each field is
    length-delimited (a plain concatenation would collide)."""
    assert canonical_request("m", x, {}, y) != canonical_request("m", None, {}, x + y)
    assert canonical_request("m" + x, None, {}, y) != canonical_request("m", x, {}, y)


def test_an_integral_float_param_is_the_int() -> None:
    assert cache_key(NET, "m", None, {"top_k": 5.0}, "x") == cache_key(NET, "m", None, {"top_k": 5}, "x")
    assert cache_key(NET, "m", None, {"top_k": 5.5}, "x") != cache_key(NET, "m", None, {"top_k": 5}, "x")


@given(st.binary(min_size=16, max_size=64), st.binary(min_size=16, max_size=64))
def test_keys_depend_on_the_secret_and_are_independent(s1, s2) -> None:
    k1, k2 = CacheKeys.from_secret(s1, shared=True), CacheKeys.from_secret(s2, shared=True)
    assert k1.lookup != k1.entry and k1.lookup != s1 and k1.entry != s1
    assert (k1.lookup == k2.lookup) == (s1 == s2)
    assert (cache_key(k1, "m", None, {}, "x") == cache_key(k2, "m", None, {}, "x")) == (s1 == s2)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(CacheKeyError):
        CacheKeys.from_secret(b"short", shared=True)


def test_repr_shows_no_key() -> None:
    assert NET.lookup.hex() not in repr(NET) and NET.entry.hex() not in repr(NET)


def test_open_network_uses_a_private_local_key(tmp_path: Path) -> None:
    keys = cache_keys(None, tmp_path)
    assert not keys.shared
    path = tmp_path / "cache.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert cache_keys(None, tmp_path) == keys  # the same key on the next start
    assert cache_keys(b"\x01" * 32, tmp_path).shared
    assert cache_keys(b"\x01" * 32, tmp_path).lookup != keys.lookup


def test_a_damaged_local_key_is_an_error_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "cache.key").write_bytes(b"xx")
    with pytest.raises(CacheKeyError, match="remove it"):
        load_or_create_local_key(tmp_path)
    assert (tmp_path / "cache.key").read_bytes() == b"xx"
