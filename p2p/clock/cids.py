"""CIDs of clock blocks: CIDv1, dag-cbor, sha2-256 — built fast.

``multiformats.CID(...)`` and ``CID.decode(bytes)`` validate through several layers and cost
~90 µs each (measured, multiformats 0.3.1); one event names 1–3 parents and restart reads
10,000 events, so that alone would blow the 0.5 s restart budget. Our blocks all have one shape
(``01 71 12 20 <32-byte digest>``), so for that shape we call ``CID._new_instance`` with
pre-resolved codec objects (~1.5 µs, the same interned object the public constructor returns).
Anything else goes through ``CID.decode``. ``_new_instance`` is private API: multiformats is
pinned exactly in pyproject, and ``tests/clock/test_cids.py`` checks both paths agree.
"""

from __future__ import annotations

import hashlib

from multiformats import CID, multibase, multicodec, multihash

DAG_CBOR_CODE = 0x71
SHA2_256_CODE = 0x12
# CIDv1 | dag-cbor | sha2-256 | 32-byte digest
DAG_CBOR_SHA256_PREFIX = b"\x01\x71\x12\x20"
DAG_CBOR_SHA256_LEN = len(DAG_CBOR_SHA256_PREFIX) + 32

_BASE32 = multibase.get("base32")
_DAG_CBOR = multicodec.get("dag-cbor")
_SHA2_256 = multihash.Multihash(codec="sha2-256")


def _fast_cid(mh_bytes: bytes) -> CID:
    return CID._new_instance(CID, _BASE32, 1, _DAG_CBOR, _SHA2_256, mh_bytes)  # type: ignore[attr-defined]


def block_cid(data: bytes) -> CID:
    """The CID of a dag-cbor block: CIDv1, dag-cbor, sha2-256 of its bytes."""
    return _fast_cid(b"\x12\x20" + hashlib.sha256(data).digest())


def cid_from_bytes(raw: bytes) -> CID:
    """Binary CID → CID; fast for our own shape, general (and validating) otherwise."""
    if len(raw) == DAG_CBOR_SHA256_LEN and raw.startswith(DAG_CBOR_SHA256_PREFIX):
        return _fast_cid(bytes(raw[2:]))
    return CID.decode(bytes(raw))


def is_event_cid(cid: object) -> bool:
    """True for a CID of the shape every clock event has (v1, dag-cbor, sha2-256, 32 bytes)."""
    if not isinstance(cid, CID):
        return False
    try:
        raw = cid_raw(cid)
    except Exception:
        return False
    return len(raw) == DAG_CBOR_SHA256_LEN and raw.startswith(DAG_CBOR_SHA256_PREFIX)


def matches_sha256(cid: CID, data: bytes) -> bool:
    """True when ``cid`` is CIDv1 with a sha2-256 multihash equal to sha256(data)."""
    if cid.version != 1 or cid.hashfun.code != SHA2_256_CODE:
        return False
    return cid.raw_digest == hashlib.sha256(data).digest()


def cid_raw(cid: CID) -> bytes:
    """Binary form of a CID. ``bytes(cid)`` costs ~13 µs (validated varint encoding); for
    CIDv1 with a codec code < 0x80 (dag-cbor 0x71, raw 0x55) the prefix is two fixed bytes."""
    code = cid.codec.code
    if cid.version == 1 and code < 0x80:
        return bytes((1, code)) + cid.digest
    return bytes(cid)
