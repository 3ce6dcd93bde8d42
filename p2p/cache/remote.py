"""Asking peers for cache entries, and answering them (``/ipfs-accelerate/cache/1.0.0``).

Who is asked: live, connected peers whose heartbeat advertises a non-empty shared cache
(``Heartbeat.cache_entries``), those with the most entries first, at most ``peers`` of them at
once, for at most ``timeout_s`` — a miss never delays a task by more than that. A peer whose
entry failed authentication is noted and not asked again (an honest server checks its own
entries before sending, so a bad one is a forgery or a broken member).

The server answers from the local store, per peer at most ``SERVE_SLOTS_PER_PEER`` requests at
once and ``SERVE_SLOTS`` over all peers; each entry it sends is opened first (off the event
loop): an entry of ours that fails authentication is dropped and counted, never sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from p2p.protocols.cache import CACHE_PROTOCOL, MAX_ENTRY_BYTES, decode_get, decode_got, encode_get, encode_got

log = structlog.get_logger("p2p.cache")

SERVE_SLOTS_PER_PEER = 4
SERVE_SLOTS = 16
FRAME_HEADROOM = 1024  # the reply's CBOR framing around its entries


@dataclass
class PeerOffer:
    """A peer that advertises a shared cache of ``entries`` entries."""

    peer_id: str
    entries: int


class CacheServer:
    """Answers cache requests from the local store (see the module docstring for the limits)."""

    def __init__(self, read: Callable[[bytes], Awaitable[bytes | None]], max_frame_bytes: int) -> None:
        self._read = read  # verified sealed entry by key, or None
        self._max_reply = max_frame_bytes - FRAME_HEADROOM
        self._per_peer: dict[str, trio.Semaphore] = {}
        self._all = trio.Semaphore(SERVE_SLOTS)
        self.requests = 0
        self.served = 0

    async def handle(self, peer: str, payload: bytes) -> bytes:
        keys = decode_get(payload)  # a WireError resets the stream (the host logs it)
        slot = self._per_peer.setdefault(peer, trio.Semaphore(SERVE_SLOTS_PER_PEER))
        try:
            async with slot, self._all:
                self.requests += 1
                out: list[bytes | None] = []
                budget = self._max_reply
                for key in keys:
                    sealed = await self._read(key)
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


async def ask_peers(net: Any, offers: list[PeerOffer], key: bytes, *, peers: int, timeout_s: float,
                    verify: Callable[[str, bytes], Awaitable[Any | None]]) -> tuple[str, bytes, Any] | None:
    """Ask up to ``peers`` of ``offers`` (most entries first) for ``key`` at once; the first entry
    that ``verify`` accepts wins: ``(peer, sealed, verified entry)``. None when nobody has it, or
    after ``timeout_s``. ``verify(peer, sealed)`` opens the entry and does the counting."""
    chosen = sorted(offers, key=lambda o: (-o.entries, o.peer_id))[:peers]
    if not chosen:
        return None
    found: list[tuple[str, bytes, Any]] = []
    request = encode_get([key])

    async def ask(peer: str, cancel: trio.CancelScope) -> None:
        from p2p.net.errors import NetError
        from p2p.protocols.wire import WireError

        try:
            reply = await net.request(peer, CACHE_PROTOCOL, request, timeout=timeout_s)
            sealed = decode_got(reply, 1)[0]
        except (NetError, WireError) as exc:
            log.debug("cache request failed", peer=peer, error=str(exc))
            return
        if sealed is None:
            return
        entry = await verify(peer, sealed)
        if entry is not None and not found:
            found.append((peer, sealed, entry))
            cancel.cancel()

    with trio.move_on_after(timeout_s):
        async with trio.open_nursery() as nursery:
            for offer in chosen:
                nursery.start_soon(ask, offer.peer_id, nursery.cancel_scope)
    return found[0] if found else None
