"""The cache's keys: two independent keys derived from the network key, and the cache key of a task.

Why two: the lookup key (HMAC) is shown to peers and written in the index; the entry key (AEAD)
never leaves this process. Deriving both with HKDF under distinct ``info`` labels keeps them
independent, and neither reveals the network key.

With no network key (an open network) a random local key (``<data_dir>/cache.key``, 0600) takes
its place: the entries are then this node's alone, never shared (``CacheKeys.shared`` is False).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dag_cbor
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
LOCAL_KEY_FILE = "cache.key"
_SALT = b"ipfs-accelerate/result-cache/v1"
_LOOKUP_INFO = b"lookup hmac-sha256"
_ENTRY_INFO = b"entry aes-256-gcm"
_ID_INFO = b"key id"


class CacheKeyError(ValueError):
    """A cache key file is unusable; the message names it and says why."""


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_SALT, info=info).derive(secret)


@dataclass(frozen=True)
class CacheKeys:
    """The lookup (HMAC) key and the entry (AEAD) key; ``shared`` when they come from the
    network key (entries may travel to members), False for a local key (they never leave)."""

    lookup: bytes
    entry: bytes
    key_id: bytes  # names the key pair in the store: entries under another key are wiped
    shared: bool

    @classmethod
    def from_secret(cls, secret: bytes, *, shared: bool) -> "CacheKeys":
        if len(secret) < 16:
            raise CacheKeyError(f"a cache secret is at least 16 bytes, got {len(secret)}")
        return cls(_hkdf(secret, _LOOKUP_INFO), _hkdf(secret, _ENTRY_INFO), _hkdf(secret, _ID_INFO)[:16], shared)

    def __repr__(self) -> str:  # never print a key
        return f"CacheKeys(shared={self.shared}, id={self.key_id.hex()})"


def load_or_create_local_key(data_dir: Path) -> bytes:
    """The data dir's own random cache secret (created 0600 on first use; never replaced: a
    replaced key only makes every stored entry unreadable)."""
    path = Path(data_dir) / LOCAL_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CacheKeyError(f"cannot read the cache key {path}: {exc}") from None
    if len(data) != KEY_BYTES:
        raise CacheKeyError(f"the cache key {path} is {len(data)} bytes, not {KEY_BYTES}: remove it to start an empty cache")
    return data


def cache_keys(network_key: bytes | None, data_dir: Path) -> CacheKeys:
    """The node's keys: from the network key when it has one, else from its local key."""
    if network_key is not None:
        return CacheKeys.from_secret(network_key, shared=True)
    return CacheKeys.from_secret(load_or_create_local_key(data_dir), shared=False)


def _canonical(value: Any) -> Any:
    """Params as DAG-CBOR holds them the same way whatever their order or spelling in Python:
    tuples are lists, and maps are encoded with sorted keys by DAG-CBOR itself."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # 5.0 and 5 ask for the same thing (top_k is read with int())
    return value


def canonical_request(model: str, task: str | None, params: dict[str, Any], text: str) -> bytes:
    """The bytes the cache key is a MAC of: one DAG-CBOR list, so no two distinct requests
    encode alike (each field is length-delimited) and one request always encodes the same."""
    return dag_cbor.encode(["ipfs-accelerate/cache/1", model, task or "", _canonical(params), text])


def cache_key(keys: CacheKeys, model: str, task: str | None, params: dict[str, Any], text: str) -> bytes:
    """HMAC-SHA256 of the request under the lookup key: what lookups and the index use. Without
    the network key nobody can tell which input a key stands for, nor compute one."""
    return hmac.new(keys.lookup, canonical_request(model, task, params, text), hashlib.sha256).digest()
