"""Wire format of the result cache exchange (``/ipfs-accelerate/cache/1.0.0``).

One request frame per stream (``NetHost.request``), one reply frame:

    request = CBOR {"t": "get", "keys": [<32-byte cache key>, ...]}      (1 to MAX_KEYS keys)
    reply   = CBOR {"t": "got", "entries": [<sealed entry> | null, ...]} (one per key, in order)

Keys are HMACs under a key derived from the network key and entries are sealed (AEAD) under
another: the exchange runs only between members (the connection itself is behind the network
key), and even a member's reply is trusted only after its entry opens under the key asked for
(p2p.cache.cache). Entries are bounded (``MAX_ENTRY_BYTES``) and so is the whole reply (the
frame cap): a server sends null for what does not fit.
"""

from __future__ import annotations

import cbor2

from p2p.protocols.wire import WireError

CACHE_PROTOCOL = "/ipfs-accelerate/cache/1.0.0"
KEY_BYTES = 32
MAX_KEYS = 64
MAX_ENTRY_BYTES = 1 << 20  # one sealed entry (an embedding is ~1.6 KiB)


def _loads(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise WireError(f"malformed cache {what}: not CBOR ({type(exc).__name__})") from None


def encode_get(keys: list[bytes]) -> bytes:
    return cbor2.dumps({"t": "get", "keys": list(keys)})


def decode_get(data: bytes) -> list[bytes]:
    """The keys asked for, validated: WireError on anything else."""
    raw = _loads(data, "request")
    if not isinstance(raw, dict) or raw.get("t") != "get" or set(raw) != {"t", "keys"}:
        raise WireError("malformed cache request: expected {t: 'get', keys}")
    keys = raw["keys"]
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
        raise WireError(f"malformed cache request: keys must be a list of 1 to {MAX_KEYS} keys")
    for i, k in enumerate(keys):
        if not isinstance(k, bytes) or len(k) != KEY_BYTES:
            raise WireError(f"malformed cache request: keys[{i}] is not {KEY_BYTES} bytes")
    return keys


def encode_got(entries: list[bytes | None]) -> bytes:
    return cbor2.dumps({"t": "got", "entries": list(entries)})


def decode_got(data: bytes, n: int) -> list[bytes | None]:
    """The ``n`` entries of a reply, validated: WireError on anything else (authenticity is
    checked by the caller, per entry)."""
    raw = _loads(data, "reply")
    if not isinstance(raw, dict) or raw.get("t") != "got" or set(raw) != {"t", "entries"}:
        raise WireError("malformed cache reply: expected {t: 'got', entries}")
    entries = raw["entries"]
    if not isinstance(entries, list) or len(entries) != n:
        raise WireError(f"malformed cache reply: expected {n} entries")
    for i, e in enumerate(entries):
        if e is not None and (not isinstance(e, bytes) or not 1 <= len(e) <= MAX_ENTRY_BYTES):
            raise WireError(f"malformed cache reply: entries[{i}] is neither null nor 1 to {MAX_ENTRY_BYTES} bytes")
    return entries
