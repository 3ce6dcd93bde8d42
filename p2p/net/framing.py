"""Varint-length-prefixed frames with a size cap.

A frame is ``uvarint(len(payload)) || payload`` (the multiformats unsigned varint libp2p uses
everywhere). The length is checked against the cap *before* any payload byte is read, so a
peer that claims a 100 GB frame costs us ten bytes, not memory. Every malformed input raises a
:class:`FrameError` subclass; the caller resets that one stream and the node stays up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from libp2p.utils.varint import encode_uvarint

from p2p.net.errors import NetError

MAX_VARINT_BYTES = 10  # a uint64 needs at most 10 groups of 7 bits


class FrameError(NetError):
    """A frame could not be read or written; the stream it came from is no longer usable."""


class FrameTooLarge(FrameError):
    """The frame's declared (or actual) length is over the cap."""


class MalformedFrame(FrameError):
    """The length prefix is not a valid minimal unsigned varint."""


class TruncatedFrame(FrameError):
    """The stream ended inside a frame."""


class StreamEnded(FrameError):
    """The stream ended cleanly where a frame was expected (no byte of it was sent)."""


class Reader(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


class Writer(Protocol):
    async def write(self, data: bytes) -> None: ...


async def _read_some(reader: Reader, n: int) -> bytes:
    """One read; b"" at end of stream (py-libp2p raises StreamEOF, an EOFError, instead)."""
    try:
        return await reader.read(n)
    except EOFError:
        return b""


def encode_frame(payload: bytes, max_bytes: int) -> bytes:
    """The framed bytes of ``payload``; refuses to build a frame the receiver would reject."""
    if len(payload) > max_bytes:
        raise FrameTooLarge(f"frame of {len(payload)} bytes is over the {max_bytes}-byte limit")
    return encode_uvarint(len(payload)) + payload


async def write_frame(writer: Writer, payload: bytes, max_bytes: int) -> None:
    """Write one frame (prefix and payload in a single write, so it leaves as one chunk)."""
    await writer.write(encode_frame(payload, max_bytes))


async def read_frame_length(reader: Reader) -> int:
    """Read and validate a varint length prefix."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        b = await _read_some(reader, 1)
        if not b:
            if i == 0:
                raise StreamEnded("stream ended before a frame")
            raise TruncatedFrame("stream ended inside a frame's length prefix")
        byte = b[0]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise MalformedFrame("frame length is not a minimal varint")
            if value >= 1 << 64:
                raise MalformedFrame("frame length overflows 64 bits")
            return value
    raise MalformedFrame(f"frame length prefix is longer than {MAX_VARINT_BYTES} bytes")


async def read_frame(reader: Reader, max_bytes: int) -> bytes:
    """Read one whole frame of at most ``max_bytes`` payload bytes."""
    length = await read_frame_length(reader)
    if length > max_bytes:
        raise FrameTooLarge(f"peer announced a {length}-byte frame; the limit is {max_bytes}")
    buf = bytearray()
    while len(buf) < length:
        chunk = await _read_some(reader, length - len(buf))
        if not chunk:
            raise TruncatedFrame(f"stream ended after {len(buf)} of {length} frame bytes")
        buf += chunk
    if len(buf) > length:  # a reader that ignores n; never expected from libp2p streams
        raise MalformedFrame("reader returned more bytes than asked for")
    return bytes(buf)


async def iter_frames(reader: Reader, max_bytes: int) -> AsyncIterator[bytes]:
    """Frames until the peer closes its side cleanly; a broken frame raises :class:`FrameError`."""
    while True:
        try:
            frame = await read_frame(reader, max_bytes)
        except StreamEnded:
            return
        yield frame
