"""Asking peers for cache entries, and answering them (``/ipfs-accelerate/cache/1.0.0``).

Who is asked: live, connected peers whose heartbeat advertises a shared cache
(``Heartbeat.cache_entries``, ``cache_seq``) and whose key index (:mod:`p2p.cache.index`, learned
with ``since`` requests) holds the key, for at most ``timeout_s`` — a miss never delays a task by
more than that, and a key nobody holds sends nothing. A peer whose entry failed authentication
is noted and not asked again (an honest server checks its own entries before sending, so a bad
one is a forgery or a broken member).

The server answers from the local store, per peer at most ``SERVE_SLOTS_PER_PEER`` requests at
once and ``SERVE_SLOTS`` over all peers; each entry it sends is opened first (off the event
loop): an entry of ours that fails authentication is dropped and counted, never sent.

Lookups are batched: the keys that tasks ask for within ``BATCH_S`` travel in one request per
peer (a workflow's tasks start together; one stream per task was 64 streams at once, and
py-libp2p's stream set-up under that load let lookups pass their timeout).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from p2p.protocols.cache import (
    CACHE_PROTOCOL,
    MAX_ENTRY_BYTES,
    decode_get,
    decode_got,
    decode_keys,
    decode_since,
    encode_get,
    encode_got,
    encode_keys,
    encode_since,
    request_kind,
)

log = structlog.get_logger("p2p.cache")

SERVE_SLOTS_PER_PEER = 4
SERVE_SLOTS = 16
FRAME_HEADROOM = 1024  # the reply's CBOR framing around its entries


@dataclass
class PeerOffer:
    """A peer that advertises a shared cache of ``entries`` entries, the newest stored as ``seq``."""

    peer_id: str
    entries: int
    seq: int = 0


class CacheServer:
    """Answers cache requests from the local store (see the module docstring for the limits)."""

    def __init__(self, read: Callable[[list[bytes]], Awaitable[list[bytes | None]]],
                 index: Callable[[bytes, int], Awaitable[tuple[bytes, int, bool, list[bytes]]]], max_frame_bytes: int) -> None:
        self._read = read  # verified sealed entries by key (None: not here), read in one go
        self._index = index  # (epoch, seq) -> (epoch, last seq, more, key prefixes since)
        self._max_reply = max_frame_bytes - FRAME_HEADROOM
        self._per_peer: dict[str, trio.Semaphore] = {}
        self._all = trio.Semaphore(SERVE_SLOTS)
        self.requests = 0
        self.served = 0

    async def handle(self, peer: str, payload: bytes) -> bytes:
        # a WireError resets the stream (the host logs it)
        since = decode_since(payload) if request_kind(payload) == "since" else None
        keys = decode_get(payload) if since is None else []
        slot = self._per_peer.setdefault(peer, trio.Semaphore(SERVE_SLOTS_PER_PEER))
        try:
            async with slot, self._all:
                self.requests += 1
                if since is not None:
                    return encode_keys(*await self._index(*since))
                out: list[bytes | None] = []
                budget = self._max_reply
                for sealed in await self._read(keys):
                    if sealed is not None and (len(sealed) > MAX_ENTRY_BYTES or len(sealed) + 64 > budget):
                        sealed = None  # does not fit this reply: the peer computes it instead
                    if sealed is not None:
                        budget -= len(sealed) + 64
                        self.served += 1
                    out.append(sealed)
                return encode_got(out)
        finally:
            if slot.value == SERVE_SLOTS_PER_PEER and not slot.statistics().tasks_waiting:
                self._per_peer.pop(peer, None)  # nothing of this peer in flight: no record kept


Verify = Callable[[str, list[tuple[bytes, bytes]]], Awaitable[list[Any | None]]]


async def ask_peer(net: Any, peer: str, keys: list[bytes], *, timeout_s: float,
                   verify: Verify) -> dict[bytes, tuple[str, bytes, Any]]:
    """Ask ``peer`` for ``keys`` (one request): ``{key: (peer, sealed, verified entry)}`` for
    each entry ``verify`` accepts. ``verify(peer, [(key, sealed), ...])`` opens the entries and
    does the counting. A failed request is an empty answer (logged at debug)."""
    from p2p.net.errors import NetError
    from p2p.protocols.wire import WireError

    try:
        reply = await net.request(peer, CACHE_PROTOCOL, encode_get(keys), timeout=timeout_s)
        entries = decode_got(reply, len(keys))
    except (NetError, WireError) as exc:
        log.debug("cache request failed", peer=peer, error=str(exc))
        return {}
    got = [(k, e) for k, e in zip(keys, entries) if e is not None]
    if not got:
        return {}
    return {key: (peer, sealed, entry) for (key, sealed), entry in zip(got, await verify(peer, got)) if entry is not None}


async def fetch_index(net: Any, peer: str, epoch: bytes, seq: int, *, timeout_s: float) -> tuple[bytes, int, bool, list[bytes]]:
    """One page of ``peer``'s key index after (``epoch``, ``seq``): NetError or WireError on failure."""
    return decode_keys(await net.request(peer, CACHE_PROTOCOL, encode_since(epoch, seq), timeout=timeout_s))
