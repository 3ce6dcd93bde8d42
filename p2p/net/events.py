"""Peer events and a small in-process fan-out channel.

py-libp2p tells us about connections through an ``INotifee`` whose callbacks run inline on the
swarm's connection path, so they must not block: they only ``send_nowait`` into a buffer. A
:class:`Fanout` copies each item to every current subscriber; a subscriber that falls more than
``buffer`` items behind loses the newest ones (with a warning) rather than stalling the network.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, NamedTuple, TypeVar

import structlog
import trio

from p2p.net.ratelog import peer_log

log = structlog.get_logger(__name__)

T = TypeVar("T")


class PeerEventKind(str, enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class PeerEvent(NamedTuple):
    """A peer's first connection opened (``CONNECTED``) or its last one closed (``DISCONNECTED``)."""

    kind: PeerEventKind
    peer_id: str


class GossipMessage(NamedTuple):
    """One gossipsub message from another peer; unpacks as ``(from_peer, data)``."""

    from_peer: str
    data: bytes


class Fanout(Generic[T]):
    """Deliver each published item to every subscriber's own bounded channel."""

    def __init__(self, name: str, buffer: int = 1024) -> None:
        self._name = name
        self._buffer = buffer
        self._subscribers: set[trio.MemorySendChannel[T]] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def publish(self, item: T) -> None:
        """Non-blocking: a full or closed subscriber misses ``item``."""
        for send in list(self._subscribers):
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                self.dropped += 1
                # once a minute per channel, with the count: a flood must not flood stderr too
                peer_log.warning(self._name, "subscriber too slow, item dropped", dropped_total=self.dropped)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(send)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[trio.MemoryReceiveChannel[T]]:
        """A receive channel that gets every item published while the block is open."""
        send, receive = trio.open_memory_channel[T](self._buffer)
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def close(self) -> None:
        """End every subscriber's iteration (at host shutdown)."""
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()
