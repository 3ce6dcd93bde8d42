"""Broadcaster: send a message to every peer, receive the next one from any peer.

go-ds-crdt's ``Broadcaster`` interface (``Broadcast``/``Next``), in trio. The replicator and the
liveness component each use one (heads announcements, heartbeats); neither knows it is gossipsub
underneath, so both run in tests over :class:`MemoryHub` without a network.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio


class Broadcaster(Protocol):
    """Announce to every peer; hear any peer. The one interface replication and liveness need
    of gossip, so both run over an in-memory hub in tests."""

    async def broadcast(self, data: bytes) -> None:
        """Send ``data`` to every peer (best effort: gossip may drop it; callers re-announce)."""

    async def next(self) -> tuple[str, bytes]:
        """The next message from another peer, as (sender peer id, data)."""


class GossipBroadcaster:
    """A gossipsub topic as a Broadcaster. The sender is the message's signed origin."""

    def __init__(self, net: Any, topic: str, rx: trio.MemoryReceiveChannel[Any]) -> None:
        self._net = net
        self.topic = topic
        self._rx = rx

    @classmethod
    @asynccontextmanager
    async def open(cls, net: Any, topic: str) -> AsyncIterator["GossipBroadcaster"]:
        async with net.subscribe(topic) as rx:
            yield cls(net, topic, rx)

    async def broadcast(self, data: bytes) -> None:
        await self._net.publish(self.topic, data)

    async def next(self) -> tuple[str, bytes]:
        msg = await self._rx.receive()
        return msg.from_peer, msg.data


class MemoryHub:
    """An in-process stand-in for a gossip topic: every joined peer hears every other's
    broadcasts (never its own), in order. For tests of the components above the network."""

    def __init__(self) -> None:
        self._members: dict[str, trio.MemorySendChannel[tuple[str, bytes]]] = {}
        self.partitioned: set[str] = set()  # peers that neither send nor receive

    def join(self, peer: str) -> "_MemoryBroadcaster":
        send, recv = trio.open_memory_channel[tuple[str, bytes]](math.inf)
        self._members[peer] = send
        return _MemoryBroadcaster(self, peer, recv)

    def _deliver(self, sender: str, data: bytes) -> None:
        if sender in self.partitioned:
            return
        for peer, send in self._members.items():
            if peer != sender and peer not in self.partitioned:
                send.send_nowait((sender, data))


class _MemoryBroadcaster:
    def __init__(self, hub: MemoryHub, peer: str, recv: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        self._hub = hub
        self._peer = peer
        self._recv = recv

    async def broadcast(self, data: bytes) -> None:
        self._hub._deliver(self._peer, data)

    def reaches(self, peers: Iterable[str]) -> bool:
        """Whether every one of ``peers`` hears this member (joined and not partitioned)."""
        return all(p in self._hub._members and p not in self._hub.partitioned for p in peers)

    async def next(self) -> tuple[str, bytes]:
        return await self._recv.receive()
