"""Clock events: the signed DAG-CBOR node, its codec and its verification.

An event block is the canonical DAG-CBOR map ``{parents, author, seq, ops, sig}``; ``sig`` is the
author's Ed25519 signature over the DAG-CBOR encoding of the same map without ``sig``; the
event's CID (v1, dag-cbor, sha2-256) is the hash of the block bytes.

Two encodings per event would cost two ``dag_cbor.encode`` calls. DAG-CBOR orders map keys by
length, then bytewise: ``ops < seq < sig < author < parents``. So the signed block is the unsigned
one with its map header bumped (A4 → A5) and the ``sig`` entry spliced in before ``author``:
``_splice_sig`` does that with one small extra encode (author + parents), and the tests check it
against ``dag_cbor.encode`` of the full map. ``decode_event`` uses it the other way round: it
rebuilds the block from the decoded fields and requires byte equality, which both proves the
block canonical (one event, one CID: nobody can re-encode a signed event under a second CID) and
yields the exact signed bytes. Codec choice and timings: see ``codec``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multiformats import CID

from p2p.clock import codec
from p2p.clock.cids import DAG_CBOR_SHA256_PREFIX, block_cid, cid_raw, is_event_cid
from p2p.clock.stub import Stub
from p2p.identity import Identity, is_valid_peer_id, verify_signature

_FIELDS = frozenset({"parents", "author", "seq", "ops", "sig"})
_SIG_KEY = b"\x63sig"  # text(3) "sig"
_MAX_SEQ = (1 << 63) - 1


class InvalidBlockError(ValueError):
    """A block that fails verification: wrong hash, size, shape, encoding or signature."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """One verified clock event. ``height`` is derived by the clock, never encoded."""

    cid: CID
    parents: tuple[CID, ...]
    author: str
    seq: int
    ops: tuple[dict[str, Any], ...]
    sig: bytes = field(repr=False)
    data: bytes = field(repr=False)
    height: int = 0
    # set for a pruned event known by its stub (p2p.clock.stub): no ops, ``data`` is the stub's
    # bytes, and this is the version vector the stub claims (the fold derives its own)
    vv: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def with_height(self, height: int) -> Event:
        return dataclasses.replace(self, height=height)


def _sorted_parents(parents: Iterable[CID]) -> list[CID]:
    unique = {cid_raw(p): p for p in parents}
    return [unique[k] for k in sorted(unique)]


def _head(major: int, n: int) -> bytes:
    """CBOR item head with the shortest length encoding (as DAG-CBOR requires)."""
    if n < 24:
        return bytes((major << 5 | n,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + n.to_bytes(size, "big")
    raise ValueError("length too large")


def _splice_sig(unsigned: bytes, author: str, parents: list[CID], sig: bytes) -> bytes:
    """Signed block bytes from the unsigned block bytes (see module doc).

    The ``author``/``parents`` tail is built by hand (what dag_cbor would write: text key,
    text, text key, array of tag-42 CIDs) to skip a second encode of the parents."""
    author_b = author.encode()
    tail = [b"\x66author", _head(3, len(author_b)), author_b, b"\x67parents", _head(4, len(parents))]
    for p in parents:
        raw = b"\x00" + cid_raw(p)
        tail += [b"\xd8\x2a", _head(2, len(raw)), raw]
    cut = len(unsigned) - sum(len(t) for t in tail)
    return b"\xa5" + unsigned[1:cut] + _SIG_KEY + _head(2, len(sig)) + sig + unsigned[cut:]


def check_ops(ops: object) -> None:
    """ValueError unless ``ops`` is a non-empty list of dicts each with a str ``"op"``."""
    if not isinstance(ops, (list, tuple)) or not ops:
        raise ValueError("ops must be a non-empty list")
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            raise ValueError(f"op {i} is not a dict")
        if not isinstance(op.get("op"), str):
            raise ValueError(f'op {i} has no str "op" field')


def create_event(identity: Identity, parents: Iterable[CID], seq: int,
                 ops: Sequence[Mapping[str, Any]]) -> Event:
    """Build and sign an event. ValueError if ops are malformed or not DAG-CBOR encodable."""
    ops_list = [dict(op) for op in ops]
    check_ops(ops_list)
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ:
        raise ValueError("seq must be an int ≥ 1")
    parent_list = _sorted_parents(parents)
    if not all(is_event_cid(p) for p in parent_list):
        raise ValueError("parents must be event CIDs (v1, dag-cbor, sha2-256)")
    author = identity.peer_id_str
    unsigned = codec.encode({"parents": parent_list, "author": author, "seq": seq, "ops": ops_list})
    sig = identity.sign(unsigned)
    data = _splice_sig(unsigned, author, parent_list, sig)
    return Event(block_cid(data), tuple(parent_list), author, seq, tuple(ops_list), sig, data)


def decode_event(cid: CID, data: bytes, max_bytes: int) -> Event:
    """Verify a foreign block and return its event; InvalidBlockError on anything wrong."""
    try:
        return _decode_event(cid, data, max_bytes)
    except InvalidBlockError:
        raise
    except Exception as exc:  # never let garbage escape as another exception type
        raise InvalidBlockError(f"malformed block: {type(exc).__name__}: {exc}") from exc


def _decode_event(cid: CID, data: bytes, max_bytes: int) -> Event:
    if not isinstance(data, bytes):
        raise InvalidBlockError("block data is not bytes")
    if len(data) > max_bytes:
        raise InvalidBlockError(f"block of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    if not isinstance(cid, CID):
        raise InvalidBlockError("cid is not a CID")
    raw_cid = cid_raw(cid)
    if not raw_cid.startswith(DAG_CBOR_SHA256_PREFIX) or len(raw_cid) != 36:
        raise InvalidBlockError("event CID must be CIDv1, dag-cbor, sha2-256")
    actual = block_cid(data)
    if actual != cid:
        raise InvalidBlockError(f"hash mismatch: bytes hash to {actual}, not {cid}")
    try:
        node = codec.decode(data)
    except codec.CodecError as exc:
        raise InvalidBlockError(str(exc)) from exc
    if not isinstance(node, dict) or node.keys() != _FIELDS:
        raise InvalidBlockError("event must be a map with exactly parents, author, seq, ops, sig")
    parents, author, seq, ops, sig = (node["parents"], node["author"], node["seq"],
                                      node["ops"], node["sig"])
    if not isinstance(parents, list) or not all(is_event_cid(p) for p in parents):
        raise InvalidBlockError("parents must be a list of event CIDs")
    raw_parents = [cid_raw(p) for p in parents]
    if any(a >= b for a, b in zip(raw_parents, raw_parents[1:])):
        raise InvalidBlockError("parents must be sorted and unique")
    if not isinstance(author, str) or not is_valid_peer_id(author):
        raise InvalidBlockError("author is not an Ed25519 peer id")
    if type(seq) is not int or not 1 <= seq <= _MAX_SEQ:
        raise InvalidBlockError("seq must be an int ≥ 1")
    try:
        check_ops(ops)
    except ValueError as exc:
        raise InvalidBlockError(str(exc)) from exc
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise InvalidBlockError("sig must be 64 bytes")
    try:
        unsigned = codec.encode_reference({"parents": parents, "author": author, "seq": seq, "ops": ops})
        canonical = _splice_sig(unsigned, author, parents, sig)
    except codec.CodecError as exc:
        raise InvalidBlockError(f"not DAG-CBOR: {exc}") from exc
    if canonical != data:
        raise InvalidBlockError("block is not canonical DAG-CBOR")
    if not verify_signature(author, unsigned, sig):
        raise InvalidBlockError("signature does not verify against the author")
    return Event(cid, tuple(parents), author, seq, tuple(ops), sig, data)


def load_stored_event(cid: CID, data: bytes, height: int) -> Event:
    """Rebuild an event from a block this store verified before: decode only, no checks."""
    node = codec.decode(data)
    return Event(cid, tuple(node["parents"]), node["author"], node["seq"], tuple(node["ops"]),
                 node["sig"], data, height)


def stub_event(stub: Stub, data: bytes | None = None) -> Event:
    """The event a stub stands for: its place in the DAG, no ops (they were all about dropped
    workflows, which the fold skips anyway). ``data`` holds the stub's bytes (``vv`` set marks
    it as a stub: there is no block)."""
    return Event(stub.cid, stub.parents, stub.author, stub.seq, (), b"", stub.encode() if data is None else data,
                 stub.height, dict(stub.vv))


def event_parents(data: bytes) -> tuple[CID, ...]:
    """Parents of a stored event block (cheap decode, for DAG walks)."""
    return tuple(codec.decode(data)["parents"])
