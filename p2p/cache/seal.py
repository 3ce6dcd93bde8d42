"""Sealing a cache entry: AES-256-GCM under the entry key, with the entry's cache key as the
associated data.

Why the cache key as associated data: a sealed entry opens only under the key it was stored
for, so a peer (or a disk) cannot move one task's result under another task's key. A random
96-bit nonce per seal; an entry is written once per key, so nonces never repeat in practice
(2^-32 after 2^32 seals under one key).

Sealed form: ``version (1 byte) || nonce (12 bytes) || ciphertext+tag``.
"""

from __future__ import annotations

import os
from typing import Any

import dag_cbor
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES


class AuthError(Exception):
    """A sealed entry failed authentication (tampered, truncated, or sealed under another key)."""


def seal(entry_key: bytes, cache_key: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return bytes((VERSION,)) + nonce + AESGCM(entry_key).encrypt(nonce, plaintext, cache_key)


def unseal(entry_key: bytes, cache_key: bytes, sealed: bytes) -> bytes:
    """The plaintext, or :class:`AuthError`: nothing that fails the tag is ever returned."""
    if len(sealed) < OVERHEAD or sealed[0] != VERSION:
        raise AuthError("malformed sealed entry (too short or unknown version)")
    try:
        return AESGCM(entry_key).decrypt(sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:], cache_key)
    except InvalidTag:
        raise AuthError("sealed entry failed authentication") from None


def encode_entry(result: dict[str, Any], stats: dict[str, Any]) -> bytes:
    """An entry's plaintext: the result in its clock form (``pack_result``) and the original
    run's stats, as DAG-CBOR."""
    return dag_cbor.encode({"result": result, "stats": stats})


def decode_entry(plaintext: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, stats); ValueError when an authentic plaintext is not an entry (never expected:
    only members can seal, but a member running a broken build could)."""
    try:
        obj = dag_cbor.decode(plaintext)
    except Exception as exc:  # noqa: BLE001 - the decoder raises several types
        raise ValueError(f"cache entry does not decode: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or set(obj) != {"result", "stats"}:
        raise ValueError("cache entry has the wrong fields")
    result, stats = obj["result"], obj["stats"]
    if not isinstance(result, dict) or not isinstance(stats, dict):
        raise ValueError("cache entry's result or stats is not a map")
    return result, stats
