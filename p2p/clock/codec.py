"""DAG-CBOR for clock blocks: encode with ``dag_cbor``, decode with ``cbor2``.

Measured here (Python 3.11, one core): for a one-op event ``dag_cbor.decode`` takes ~230 µs
and ``dag_cbor.encode`` ~37 µs; cbor2 (C) decodes the same bytes in ~15 µs once CIDs are built
fast (see ``cids``). For a 32-op event with 1.5 KiB byte payloads: dag_cbor decode ~740 µs,
encode ~440 µs, cbor2 decode ~110 µs. So:

- **encode** our own blocks with cbor2's C encoder after putting every map's keys in DAG-CBOR
  order (length first, then bytewise) and wrapping CIDs in tag 42 (``encode``). cbor2 writes
  minimal ints, definite lengths and float64 in its non-canonical mode, so the bytes equal the
  reference ``dag_cbor.encode`` output — ``tests/clock/test_codec_fast.py`` checks that on
  arbitrary values with hypothesis — at a fraction of the cost (the node encodes one event per
  batch of tasks on the event loop, where its CPU competes with the model's threads);
- **decode** always with cbor2. For *foreign* blocks the caller re-encodes the decoded value with
  ``dag_cbor`` and requires byte equality with the input: this proves the input was canonical
  DAG-CBOR (no second encoding of the same event with another CID, no float16, no extra tags,
  no duplicate keys, no trailing bytes) at the price of one encode, still ~3× cheaper than
  ``dag_cbor.decode``. Stored blocks were verified on the way in and are decoded without it.
"""

from __future__ import annotations

from typing import Any

import cbor2
import dag_cbor
from multiformats import CID

from p2p.clock.cids import cid_from_bytes

# Containers nested deeper than this are refused on both sides (encode and decode), so an
# event this node writes is always one its peers accept, whatever their stack depth.
MAX_NESTING = 64


class CodecError(ValueError):
    """Bytes that are not DAG-CBOR this codec accepts, or a value it cannot encode."""


def _tag_hook(*args: Any) -> CID:
    # cbor2 5.x calls hook(decoder, tag); 6.x calls hook(tag, immutable): find the tag.
    tag = next(a for a in args if isinstance(a, cbor2.CBORTag))
    if tag.tag != 42:
        raise CodecError(f"CBOR tag {tag.tag} is not allowed in DAG-CBOR")
    value = tag.value
    if not isinstance(value, bytes) or len(value) < 2 or value[0] != 0:
        raise CodecError("tag 42 must wrap bytes starting with the 0x00 multibase prefix")
    try:
        return cid_from_bytes(value[1:])
    except Exception as exc:
        raise CodecError(f"invalid CID in tag 42: {exc}") from exc


def encode(obj: Any) -> bytes:
    """Canonical DAG-CBOR bytes of ``obj``; CodecError if it is not encodable."""
    if nesting_depth(obj) > MAX_NESTING:
        raise CodecError(f"value nested deeper than {MAX_NESTING}")
    try:
        return cbor2.dumps(_dag_ordered(obj))
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(str(exc)) from exc


def encode_reference(obj: Any) -> bytes:
    """The same bytes through the reference ``dag_cbor`` encoder (verification of foreign blocks)."""
    if nesting_depth(obj) > MAX_NESTING:
        raise CodecError(f"value nested deeper than {MAX_NESTING}")
    try:
        return dag_cbor.encode(obj)
    except Exception as exc:  # dag_cbor's errors do not derive from ValueError
        raise CodecError(str(exc)) from exc


_INT_MIN, _INT_MAX = -(2**64), 2**64 - 1


def _dag_key(k: str) -> tuple[int, bytes]:
    b = k.encode("utf-8")
    return (len(b), b)


def _dag_ordered(value: Any) -> Any:
    """``value`` as cbor2 must see it to write DAG-CBOR: ordered maps, CIDs as tag 42, and
    everything DAG-CBOR forbids (non-str keys, NaN/inf, out-of-range ints, other types) refused."""
    if value is None or value is True or value is False or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise CodecError(f"integer {value} is outside DAG-CBOR's 64-bit range")
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CodecError("NaN and infinities are not allowed in DAG-CBOR")
        return value
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise CodecError(f"map key {k!r} is not a string")
        return {k: _dag_ordered(value[k]) for k in sorted(value, key=_dag_key)}
    if isinstance(value, list):  # not tuples: the reference encoder refuses them too
        return [_dag_ordered(v) for v in value]
    if isinstance(value, CID):
        return cbor2.CBORTag(42, b"\x00" + bytes(value))
    raise CodecError(f"{type(value).__name__} is not a DAG-CBOR type")


def decode(data: bytes) -> Any:
    """Decode DAG-CBOR bytes with cbor2 (tag 42 → CID). No canonicality check: see module doc."""
    try:
        return cbor2.loads(
            data,
            tag_hook=_tag_hook,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            max_depth=MAX_NESTING + 1,
        )
    except CodecError:
        raise
    except Exception as exc:  # cbor2 raises CBORDecodeError and assorted others on garbage
        raise CodecError(f"not decodable CBOR: {exc}") from exc


def nesting_depth(obj: Any) -> int:
    """Depth of nested lists/dicts (a scalar is 0, ``[]`` is 1); iterative, no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_NESTING + 1:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest
