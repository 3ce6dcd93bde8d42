"""This node's MCP tools served to peers over libp2p (``/ipfs-accelerate/mcp/1.0.0``).

Why a separate server: a peer is a member of the network, not the node's operator. It gets the
read-only tools alone (``build_server(node, for_peers=True)``): nothing that submits, cancels or
reprioritises as this node, pulls models onto its disk, dials addresses, or reads or writes its
files.

Each stream runs one session through the SDK's own stdio plumbing (``stdio_server`` with the
stream's frames as its lines), so it behaves as ``mcp serve --transport stdio`` does, with the
same check on JSON-RPC ids. Bounded, because members are many and cheap to make:

- at most ``MAX_SESSIONS_PER_PEER`` sessions of one peer and ``MAX_SESSIONS`` in all (more are
  reset at once);
- at most ``MAX_IN_FLIGHT`` requests of one session being handled at once: the next is not read
  off the stream until an answer goes out (the SDK would start a task per request, unbounded);
- a session with nothing in flight and no message for ``IDLE_S`` ends;
- an answer larger than a frame becomes an error answer to that request, not the end of the
  session.

A session ends when the peer half-closes; a failure ends that stream only (the host resets it
and logs why).
"""

from __future__ import annotations

import json
import math
from typing import Any

import structlog
import trio

from mcp_server.transports import GuardedLines
from p2p.protocols.mcp_tunnel import MAX_SESSIONS_PER_PEER, MCP_PROTOCOL

log = structlog.get_logger("mcp_server.peer_mcp")

MAX_SESSIONS = 16
MAX_IN_FLIGHT = 8
IDLE_S = 600.0
FRAME_MARGIN = 1024


def _key(rid: Any) -> str | None:
    """A request id as a set key, for the ids MCP allows (strings and integers)."""
    if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
        return json.dumps(rid)
    return None


class _Session:
    """One peer session's frames as the text lines ``stdio_server`` reads, and where it writes
    its lines: one frame per JSON-RPC message, with the bounds of the module docstring."""

    def __init__(self, stream: Any, *, in_flight: int = MAX_IN_FLIGHT, idle_s: float = IDLE_S) -> None:
        self._stream = stream
        self._slots = trio.Semaphore(in_flight)
        self._open: set[str] = set()  # ids of requests read and not answered yet
        self._idle_s = idle_s
        self._wait: trio.CancelScope | None = None  # the reader's wait for a frame

    def _answered(self, rid: Any) -> None:
        key = _key(rid)
        if key is not None and key in self._open:
            self._open.discard(key)
            self._slots.release()
            if not self._open and self._wait is not None:  # idle from now
                self._wait.deadline = trio.current_time() + self._idle_s

    async def _next(self, frames: Any) -> bytes | None:
        """The next frame; None at the end of the stream, or after ``idle_s`` without one while
        no request is in flight (with one in flight the peer may wait for its answer; the wait's
        deadline starts when the last answer goes out: ``_answered``)."""
        with trio.CancelScope() as wait:
            wait.deadline = math.inf if self._open else trio.current_time() + self._idle_s
            self._wait = wait
            try:
                return await frames.__anext__()
            except StopAsyncIteration:
                return None
            finally:
                self._wait = None
        log.info("peer mcp session idle: ended", idle_s=self._idle_s)  # (a frame cut short is moot: it ends)
        return None

    async def _lines(self) -> Any:
        frames = self._stream.frames().__aiter__()
        while (frame := await self._next(frames)) is not None:
            text = frame.decode("utf-8", errors="replace")
            try:
                msg = json.loads(text)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and "method" in msg:
                key = _key(msg.get("id"))
                if key is not None and key not in self._open:
                    await self._slots.acquire()  # backpressure: the next request waits for an answer
                    self._open.add(key)
                if msg.get("method") == "notifications/cancelled" and isinstance(msg.get("params"), dict):
                    self._answered(msg["params"].get("requestId"))  # a cancelled request gets no answer
            yield text

    def __aiter__(self) -> Any:
        return self._lines()

    async def write(self, text: str) -> None:
        data = text.rstrip("\n").encode("utf-8")
        try:
            msg = json.loads(data)
        except ValueError:
            msg = None
        rid = msg.get("id") if isinstance(msg, dict) and "method" not in msg else None
        if len(data) > self._stream.max_frame_bytes - FRAME_MARGIN:
            log.info("peer mcp answer over the frame limit: sent as an error", bytes=len(data))
            data = json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
                "code": -32603, "message": f"the answer is {len(data)} bytes, over this link's frame limit "
                                           f"({self._stream.max_frame_bytes}): ask for less (a smaller limit, "
                                           "format=\"base64\" or \"compact\", fewer inputs)"}}).encode()
        await self._stream.write_frame(data)
        self._answered(rid)

    async def flush(self) -> None:
        return None


async def serve_session(server: Any, peer: str, stream: Any, *, idle_s: float = IDLE_S) -> None:
    """One MCP session with ``peer`` over ``stream`` until the peer half-closes (or idles)."""
    from mcp.server.stdio import stdio_server

    lowlevel = server._lowlevel_server  # as run_stdio and the SDK's run_stdio_async do
    session = _Session(stream, idle_s=idle_s)
    guarded = GuardedLines(session)
    log.info("peer mcp session", peer=peer)
    async with stdio_server(stdin=guarded, stdout=session) as (read_stream, write_stream):  # type: ignore[arg-type]
        guarded.write_stream = write_stream
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    log.info("peer mcp session ended", peer=peer)


def offer_to_peers(node: Any, server: Any) -> None:
    """Serve ``server`` (built with ``for_peers=True``) to the node's peers (bounds: above)."""
    sessions: dict[str, int] = {}

    async def handle(peer: str, stream: Any) -> None:
        total = sum(sessions.values())
        if sessions.get(peer, 0) >= MAX_SESSIONS_PER_PEER or total >= MAX_SESSIONS:
            log.info("peer mcp session refused: too many", peer=peer, of_peer=sessions.get(peer, 0), total=total)
            await stream.reset()
            return
        sessions[peer] = sessions.get(peer, 0) + 1
        try:
            await serve_session(server, peer, stream)
        finally:
            sessions[peer] -= 1
            if not sessions[peer]:
                del sessions[peer]

    node.net.set_stream_handler(MCP_PROTOCOL, handle)
