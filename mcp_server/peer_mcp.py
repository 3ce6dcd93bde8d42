"""This node's MCP tools served to peers over libp2p (``/ipfs-accelerate/mcp/1.0.0``).

Why a separate server: a peer is a member of the network, not the node's operator. The tools a
peer gets are every tool except those that touch the node's own files
(``export_workflow_results`` writes a path on this machine, ``submit_workflow_file`` reads one,
and its rows would travel to every peer): ``build_server(node, local_files=False)``.

Each stream runs one session through the SDK's own stdio plumbing (``stdio_server`` with the
stream's frames as its lines), so it behaves as ``mcp serve --transport stdio`` does, with the
same check on JSON-RPC ids. A session ends when the peer half-closes; a failure ends that stream
only (the host resets it and logs why).
"""

from __future__ import annotations

from typing import Any

import structlog

from mcp_server.transports import GuardedLines
from p2p.protocols.mcp_tunnel import MAX_SESSIONS_PER_PEER, MCP_PROTOCOL

log = structlog.get_logger("mcp_server.peer_mcp")


class _FrameLines:
    """A stream's frames as the text lines ``stdio_server`` reads."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def _lines(self) -> Any:
        async for frame in self._stream.frames():
            yield frame.decode("utf-8", errors="replace")

    def __aiter__(self) -> Any:
        return self._lines()


class _FrameWriter:
    """What ``stdio_server`` writes lines to: one frame per JSON-RPC message."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def write(self, text: str) -> None:
        await self._stream.write_frame(text.rstrip("\n").encode("utf-8"))

    async def flush(self) -> None:
        return None


async def serve_session(server: Any, peer: str, stream: Any) -> None:
    """One MCP session with ``peer`` over ``stream`` until the peer half-closes."""
    from mcp.server.stdio import stdio_server

    lowlevel = server._lowlevel_server  # as run_stdio and the SDK's run_stdio_async do
    guarded = GuardedLines(_FrameLines(stream))
    log.info("peer mcp session", peer=peer)
    async with stdio_server(stdin=guarded, stdout=_FrameWriter(stream)) as (read_stream, write_stream):  # type: ignore[arg-type]
        guarded.write_stream = write_stream
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    log.info("peer mcp session ended", peer=peer)


def offer_to_peers(node: Any, server: Any) -> None:
    """Serve ``server`` (built with ``local_files=False``) to the node's peers, at most
    ``MAX_SESSIONS_PER_PEER`` sessions of one peer at once (more are reset)."""
    sessions: dict[str, int] = {}

    async def handle(peer: str, stream: Any) -> None:
        if sessions.get(peer, 0) >= MAX_SESSIONS_PER_PEER:
            log.info("peer mcp session refused: too many", peer=peer, sessions=sessions[peer])
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
