"""A libp2p stream that speaks varint-prefixed frames (see :mod:`p2p.net.framing`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from libp2p.abc import INetStream

from p2p.net.errors import describe
from p2p.net.framing import iter_frames, read_frame, write_frame

log = structlog.get_logger(__name__)


class FramedStream:
    """A libp2p stream that speaks varint-prefixed frames capped at ``max_frame_bytes``."""

    def __init__(self, raw: INetStream, peer_id: str, protocol_id: str, max_frame_bytes: int) -> None:
        self.raw = raw
        self.peer_id = peer_id
        self.protocol_id = protocol_id
        self.max_frame_bytes = max_frame_bytes

    async def read_frame(self) -> bytes:
        """One frame; :class:`~p2p.net.framing.StreamEnded` if the peer closed first."""
        return await read_frame(self.raw, self.max_frame_bytes)

    async def write_frame(self, payload: bytes) -> None:
        await write_frame(self.raw, payload, self.max_frame_bytes)

    def frames(self) -> AsyncIterator[bytes]:
        """Frames until the peer closes its write side."""
        return iter_frames(self.raw, self.max_frame_bytes)

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
