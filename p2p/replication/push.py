"""Direct push: heads announcements on a long-lived stream to every connected peer.

Why: gossipsub is the mesh and the anti-entropy, but its delivery waits on a publish path and
(under a burst) on its spam protection; a peer we are connected to can be told at once. Each
peer keeps one outbound stream per connected peer under :func:`push_protocol` (the network's
name is in the id, so a node of another network under the same key is refused) and writes every
announcement on it as one varint-prefixed frame, in the gossip wire format
(:class:`p2p.protocols.wire.HeadsAnnouncement`, the same size cap as a gossip message).

:class:`PushBroadcaster` is a :class:`~p2p.replication.broadcaster.Broadcaster`:

- ``broadcast`` never blocks the appender: the announcement joins a bounded per-peer queue and
  the peer's sender task writes it. While the sender is busy, a new announcement is folded into
  the last one still queued (``merge``, :func:`p2p.protocols.wire.merge_heads`: the newer heads,
  both block lists), so a burst of appends leaves as a few frames carrying all its blocks, and
  the receiver verifies them in a few batches, not one thread hop per append. Only when that
  frame is full does a new one start; a peer that reads so slowly that ``queue`` frames back up
  loses the oldest (counted). Nothing is lost for good by that: every announcement names the
  sender's current heads, so the newest one brings the receiver to the same state (what an
  inline block of a dropped one carried is fetched on the blocks stream).
- ``next`` yields announcements peers pushed to us. Each frame is read under the gossip cap and
  decoded before it is queued; a frame that is malformed, oversize or not an announcement
  resets that one stream (the sender reopens it) and is logged once per peer per minute. The
  events inside are then verified exactly as gossip's are: by the replicator, through the clock
  (CIDs, signatures, sizes). A peer keeps one inbound push stream; a newer one replaces it.

A peer that refuses the protocol (a node of another network, or an older version) is skipped
for :data:`REFUSED_AFTER_S` (until it reconnects); one whose stream failed otherwise for
:data:`RETRY_AFTER_S`. Gossip still reaches every peer of this network.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
import trio

from p2p.net.errors import ProtocolRefused, describe
from p2p.net.framing import FrameError, StreamEnded, read_frame
from p2p.net.host import GOSSIP_MAX_MESSAGE_BYTES
from p2p.net.ratelog import PeerLogLimiter
from p2p.protocols.wire import WireError, decode_heads, merge_heads

log = structlog.get_logger("p2p.replication.push")
peer_log = PeerLogLimiter(log)



def push_protocol(network: str) -> str:
    """The direct-push stream protocol of one network (see the module doc)."""
    return f"/ipfs-accelerate/{network}/push/1.0.0"

# The same cap as a gossip message (p2p.net.host.NetHost.publish refuses bigger ones).
PUSH_MAX_FRAME_BYTES = GOSSIP_MAX_MESSAGE_BYTES - 1024
WRITE_TIMEOUT_S = 10.0  # a peer that takes a frame no faster than this loses its push stream
RETRY_AFTER_S = 30.0  # a peer whose push stream could not be opened is skipped this long
REOPEN_AFTER_S = 1.0  # a push stream that broke after it worked is reopened no sooner
REFUSED_AFTER_S = 600.0  # a peer that refused the protocol (another network, an older version)
INBOX = 256  # announcements received and not yet taken by the replicator (more are dropped)


@dataclass
class PushStats:
    """Counters for metrics and tests (never reset)."""

    sent: int = 0  # frames written to a peer's stream (each one announcement, or several folded)
    coalesced: int = 0  # announcements folded into one still queued for a peer (not sent apart)
    received: int = 0  # well-formed announcements read from peers' streams
    dropped_backlog: int = 0  # frames dropped from a slow peer's full queue
    dropped_inbox: int = 0  # received announcements dropped because the replicator lagged
    dropped_oversize: int = 0  # announcements too large to push (gossip still carries them)
    bad_frames: int = 0  # inbound frames that reset their stream (malformed, oversize, not an announcement)
    streams_opened: int = 0  # outbound push streams opened
    stream_failures: int = 0  # outbound push streams that failed to open or broke


@dataclass
class _Outbox:
    items: deque[bytes]
    opened: bool = False  # its stream is open (announcements reach the peer now)
    wake: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class PushBroadcaster:
    """Announcements to every connected peer on a direct stream, and from theirs (see the
    module doc). Get one from :meth:`open`, which registers the protocol on the host."""

    def __init__(
        self,
        net: Any,
        nursery: trio.Nursery,
        *,
        queue: int,
        network: str,
        max_frame_bytes: int = PUSH_MAX_FRAME_BYTES,
        validate: Callable[[bytes], Any] = decode_heads,
        merge: Callable[[bytes, bytes], bytes | None] | None = merge_heads,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue < 1:
            raise ValueError("queue must be >= 1")
        self._net = net
        self._nursery = nursery
        self.protocol = push_protocol(network)
        self._queue = queue
        self._max_frame = max_frame_bytes
        self._validate = validate
        self._merge = merge
        self._now = now
        self._boxes: dict[str, _Outbox] = {}
        self._retry_at: dict[str, float] = {}  # peer -> no push stream to it before then
        self._inbound: dict[str, trio.CancelScope] = {}  # peer -> its current inbound stream
        self._send, self._recv = trio.open_memory_channel[tuple[str, bytes]](INBOX)
        self.counts = PushStats()
        self._traffic = getattr(net, "traffic", None)  # p2p.net.streams.Traffic, where the host keeps one

    @classmethod
    @asynccontextmanager
    async def open(cls, net: Any, *, queue: int, **kwargs: Any) -> AsyncIterator["PushBroadcaster"]:
        async with trio.open_nursery() as nursery:
            push = cls(net, nursery, queue=queue, **kwargs)
            net.set_stream_handler(push.protocol, push._handle)
            try:
                yield push
            finally:
                try:
                    net.remove_stream_handler(push.protocol)
                except Exception as exc:  # noqa: BLE001 - the host may be closing already
                    log.debug("removing the push handler failed", error=describe(exc))
                nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ sending

    async def broadcast(self, data: bytes) -> None:
        self.broadcast_nowait(data)

    def broadcast_nowait(self, data: bytes) -> None:
        """Queue ``data`` for every connected peer; never blocks, never grows past ``queue``
        per peer (the oldest is dropped)."""
        if len(data) > self._max_frame:
            self.counts.dropped_oversize += 1
            log.debug("announcement too large to push; gossip carries it", bytes=len(data))
            return
        connected = set(self._net.connected_peers())
        for peer in [p for p in self._boxes if p not in connected]:
            self._boxes.pop(peer).scope.cancel()  # gone: its stream went with the connection
        now = self._now()
        # peers' queues usually end in the same frame: merge it once (the tail kept alive, so
        # its id stays its own for the whole call)
        merged: dict[int, tuple[bytes, bytes | None]] = {}
        for peer in connected:
            box = self._boxes.get(peer)
            if box is None:
                if self._retry_at.get(peer, 0.0) > now:
                    continue
                box = self._start(peer)
            if box.items and self._merge is not None:
                # the last queued frame is never the one being written (the sender pops first)
                tail = box.items[-1]
                if id(tail) not in merged:
                    both = self._merge(tail, data)
                    merged[id(tail)] = (tail, both if both is None or len(both) <= self._max_frame else None)
                both = merged[id(tail)][1]
                if both is not None:
                    box.items[-1] = both
                    self.counts.coalesced += 1
                    box.wake.set()
                    continue
            if len(box.items) == self._queue:
                self.counts.dropped_backlog += 1  # the deque drops the oldest
            box.items.append(data)
            box.wake.set()

    def warm(self, peer: str) -> None:
        """Open the push stream to a newly connected peer now, so the first announcement
        does not wait for stream negotiation. A new connection gets a fresh try (the back-off
        of a stream that broke with the old one is dropped)."""
        self._retry_at.pop(peer, None)
        old = self._boxes.pop(peer, None)
        if old is not None:  # a reconnect: the old stream went with the old connection
            old.scope.cancel()
        self._start(peer)

    def _start(self, peer: str) -> _Outbox:
        box = _Outbox(deque(maxlen=self._queue))
        self._boxes[peer] = box
        self._nursery.start_soon(self._sender, peer, box)
        return box

    async def _sender(self, peer: str, box: _Outbox) -> None:
        try:
            with box.scope:
                async with self._net.open_stream(peer, self.protocol) as stream:
                    box.opened = True
                    self.counts.streams_opened += 1
                    while True:
                        if not box.items:
                            box.wake = trio.Event()
                            await box.wake.wait()
                            continue
                        data = box.items.popleft()
                        with trio.fail_after(WRITE_TIMEOUT_S):
                            await stream.write_frame(data)
                        self.counts.sent += 1
                        if self._traffic is not None:
                            self._traffic.direct_messages_out += 1
        except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - refused, reset, timed out, gone
            self.counts.stream_failures += 1
            wait = REOPEN_AFTER_S if box.opened else REFUSED_AFTER_S if isinstance(exc, ProtocolRefused) else RETRY_AFTER_S
            self._retry_at[peer] = self._now() + wait
            log.debug("push stream ended", peer=peer, opened=box.opened, error=describe(exc))
        finally:
            if self._boxes.get(peer) is box:
                del self._boxes[peer]
            if len(self._retry_at) > 4 * len(self._boxes) + 1024:  # bounded: forget expired entries
                now = self._now()
                self._retry_at = {p: t for p, t in self._retry_at.items() if t > now}

    def reaches(self, peers: Iterable[str]) -> bool:
        """Whether a push stream is open to each of ``peers`` (for the replicator: gossip may
        wait only when push alone already reaches everyone)."""
        return all((box := self._boxes.get(p)) is not None and box.opened for p in peers)

    # ---------------------------------------------------------------- receiving

    async def next(self) -> tuple[str, bytes]:
        """The next announcement a peer pushed, as (sender, data): the sender is the stream's
        authenticated remote peer."""
        return await self._recv.receive()

    async def _handle(self, peer: str, stream: Any) -> None:
        """One peer's inbound push stream: frames until it closes. Bad input resets this stream
        only; the host isolates anything else per stream too."""
        old = self._inbound.get(peer)
        if old is not None:
            old.cancel()  # one inbound stream per peer: a reopened one replaces the old
        scope = self._inbound[peer] = trio.CancelScope()
        try:
            with scope:
                while True:
                    try:
                        data = await read_frame(stream.raw, self._max_frame)
                        self._validate(data)
                    except StreamEnded:
                        return
                    except (FrameError, WireError) as exc:
                        self.counts.bad_frames += 1
                        peer_log.warning(peer, "bad push frame; stream reset", error=str(exc))
                        await stream.reset()
                        return
                    except Exception as exc:  # noqa: BLE001 - reset, connection lost
                        log.debug("push stream from peer ended", peer=peer, error=describe(exc))
                        return
                    self.counts.received += 1
                    if self._traffic is not None:  # the host's counters (metrics): bytes and messages
                        self._traffic.stream_bytes_in += len(data)
                        self._traffic.direct_messages_in += 1
                    try:
                        self._send.send_nowait((peer, data))
                    except trio.WouldBlock:
                        self.counts.dropped_inbox += 1  # gossip and re-announcements repair it
        finally:
            if self._inbound.get(peer) is scope:
                del self._inbound[peer]

    # -------------------------------------------------------------------- stats

    def stats(self) -> dict[str, int]:
        """Counters (see :class:`PushStats`) plus the streams open now and announcements queued."""
        out = asdict(self.counts)
        out["streams_out"] = len(self._boxes)
        out["streams_in"] = len(self._inbound)
        out["queued"] = sum(len(b.items) for b in self._boxes.values())
        return out


__all__ = ["PUSH_MAX_FRAME_BYTES", "PushBroadcaster", "PushStats", "push_protocol"]
