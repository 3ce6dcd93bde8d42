"""A libp2p stream that speaks varint-prefixed frames (see :mod:`p2p.net.framing`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from libp2p.abc import INetStream

from p2p.net.errors import describe
from p2p.net.framing import iter_frames, read_frame, write_frame

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Traffic:
    """What one host moved, as plain counters: the Prometheus metrics read them at scrape time
    (``mcp_server.metrics``), so the hot path pays an integer add and nothing else.

    Bytes are payload bytes: frames on our streams and gossip message data, not libp2p's own
    overhead (Noise, yamux, identify, pubsub framing, messages relayed for others, ping).
    ``direct_*`` count the direct event push (issue 9 item 3): its sender and receiver add one
    per message; they stay 0 where no direct push runs."""

    stream_bytes_in: int = 0
    stream_bytes_out: int = 0
    gossip_messages_in: int = 0
    gossip_messages_out: int = 0
    gossip_bytes_in: int = 0
    gossip_bytes_out: int = 0
    direct_messages_in: int = 0
    direct_messages_out: int = 0


class FramedStream:
    """A libp2p stream that speaks varint-prefixed frames capped at ``max_frame_bytes``."""

    def __init__(self, raw: INetStream, peer_id: str, protocol_id: str, max_frame_bytes: int,
                 traffic: Traffic | None = None) -> None:
        self.raw = raw
        self.peer_id = peer_id
        self.protocol_id = protocol_id
        self.max_frame_bytes = max_frame_bytes
        self.traffic = traffic if traffic is not None else Traffic()

    async def read_frame(self) -> bytes:
        """One frame; :class:`~p2p.net.framing.StreamEnded` if the peer closed first."""
        frame = await read_frame(self.raw, self.max_frame_bytes)
        self.traffic.stream_bytes_in += len(frame)
        return frame

    async def write_frame(self, payload: bytes) -> None:
        await write_frame(self.raw, payload, self.max_frame_bytes)
        self.traffic.stream_bytes_out += len(payload)

    async def frames(self) -> AsyncIterator[bytes]:
        """Frames until the peer closes its write side."""
        async for frame in iter_frames(self.raw, self.max_frame_bytes):
            self.traffic.stream_bytes_in += len(frame)
            yield frame

    async def close_write(self) -> None:
        """Tell the peer we send nothing more (it sees a clean end of stream)."""
        await self.raw.close_write()

    async def close(self) -> None:
        try:
            await self.raw.close()
        except Exception as exc:  # noqa: BLE001 - the peer may be gone already
            log.debug("stream close failed", error=describe(exc))

    async def reset(self) -> None:
        try:
            await self.raw.reset()
        except Exception as exc:  # noqa: BLE001
            log.debug("stream reset failed", error=describe(exc))
