"""Wire format of the result cache exchange (``/ipfs-accelerate/cache/1.0.0``).

One request frame per stream (``NetHost.request``), one reply frame:

    request = CBOR {"t": "get", "keys": [<32-byte cache key>, ...]}      (1 to MAX_KEYS keys)
    reply   = CBOR {"t": "got", "entries": [<sealed entry> | null, ...]} (one per key, in order)

    request = CBOR {"t": "since", "epoch": <8 bytes | empty>, "seq": N}
    reply   = CBOR {"t": "keys", "epoch": <8 bytes>, "seq": M, "more": bool,
                    "prefixes": <8-byte prefixes of the keys stored after N, concatenated>}

The second pair is the key index: a peer learns which keys another peer holds (their first
8 bytes, up to MAX_PREFIXES per reply, in store order) and asks it only for those, so a miss
everywhere costs no request at all. ``epoch`` names one life of the store file: asked under
another epoch (or none), the server answers from the start.

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
PREFIX_BYTES = 8
EPOCH_BYTES = 8
MAX_PREFIXES = 16384  # per index reply: 128 KiB
MAX_SEQ = 1 << 62


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


def encode_since(epoch: bytes, seq: int) -> bytes:
    return cbor2.dumps({"t": "since", "epoch": epoch, "seq": seq})


def decode_since(data: bytes) -> tuple[bytes, int]:
    """(epoch, seq) of an index request, validated: WireError on anything else."""
    raw = _loads(data, "request")
    if not isinstance(raw, dict) or raw.get("t") != "since" or set(raw) != {"t", "epoch", "seq"}:
        raise WireError("malformed cache index request: expected {t: 'since', epoch, seq}")
    epoch, seq = raw["epoch"], raw["seq"]
    if not isinstance(epoch, bytes) or len(epoch) not in (0, EPOCH_BYTES):
        raise WireError(f"malformed cache index request: epoch must be empty or {EPOCH_BYTES} bytes")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise WireError(f"malformed cache index request: seq must be an integer from 0 to {MAX_SEQ}")
    return epoch, seq


def encode_keys(epoch: bytes, seq: int, more: bool, prefixes: list[bytes]) -> bytes:
    return cbor2.dumps({"t": "keys", "epoch": epoch, "seq": seq, "more": more, "prefixes": b"".join(prefixes)})


def decode_keys(data: bytes) -> tuple[bytes, int, bool, list[bytes]]:
    """(epoch, seq, more, prefixes) of an index reply, validated: WireError on anything else."""
    raw = _loads(data, "reply")
    if not isinstance(raw, dict) or raw.get("t") != "keys" or set(raw) != {"t", "epoch", "seq", "more", "prefixes"}:
        raise WireError("malformed cache index reply: expected {t: 'keys', epoch, seq, more, prefixes}")
    epoch, seq, more, blob = raw["epoch"], raw["seq"], raw["more"], raw["prefixes"]
    if not isinstance(epoch, bytes) or len(epoch) != EPOCH_BYTES:
        raise WireError(f"malformed cache index reply: epoch must be {EPOCH_BYTES} bytes")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise WireError(f"malformed cache index reply: seq must be an integer from 0 to {MAX_SEQ}")
    if not isinstance(more, bool):
        raise WireError("malformed cache index reply: more must be a boolean")
    if not isinstance(blob, bytes) or len(blob) % PREFIX_BYTES or len(blob) > MAX_PREFIXES * PREFIX_BYTES:
        raise WireError(f"malformed cache index reply: prefixes must be up to {MAX_PREFIXES} runs of {PREFIX_BYTES} bytes")
    return epoch, seq, more, [blob[i:i + PREFIX_BYTES] for i in range(0, len(blob), PREFIX_BYTES)]


def request_kind(data: bytes) -> str:
    """Which request a frame is ("get" or "since"); WireError for anything else."""
    raw = _loads(data, "request")
    kind = raw.get("t") if isinstance(raw, dict) else None
    if kind not in ("get", "since"):
        raise WireError("malformed cache request: t must be 'get' or 'since'")
    return kind
