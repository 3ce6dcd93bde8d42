"""The fast encoder writes exactly the reference DAG-CBOR bytes, and refuses what DAG-CBOR forbids."""

from __future__ import annotations

import math

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from p2p.clock import codec

cids = st.binary(min_size=1, max_size=64).map(lambda b: CID("base32", 1, "dag-cbor", multihash.digest(b, "sha2-256")))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.binary(max_size=80)
    | cids
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_fast_encoding_equals_the_reference(value: object) -> None:
    assert codec.encode(value) == dag_cbor.encode(value)
    assert codec.encode(value) == codec.encode_reference(value)


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, 2**64, -(2**64) - 1, {1: "x"}, {"a": {b"k": 1}}, {"s": {1, 2}}, (1, 2), object()],
)
def test_what_dag_cbor_forbids_is_refused(bad: object) -> None:
    with pytest.raises(codec.CodecError):
        codec.encode(bad)
