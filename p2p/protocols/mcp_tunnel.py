"""Wire format of MCP between peers (``/ipfs-accelerate/mcp/1.0.0``).

Why: an agent connected to one node should reach any peer's tools (the guide's call_tool across
peers) without a second port or credential: the libp2p connection already authenticates the
peer and admits only members (network key or ``allow_peers``). One stream is one MCP session:
each frame (``p2p.net.framing``, uvarint length) is one JSON-RPC message, UTF-8 JSON as the
stdio transport writes a line, without the newline. The asker half-closes its side to end the
session. A node serves it unless ``mcp.serve_peers`` is false (then the stream is refused at
protocol negotiation); at most ``MAX_SESSIONS_PER_PEER`` sessions of one peer at once (more
bounds: ``mcp_server.peer_mcp``).
"""

from __future__ import annotations

MCP_PROTOCOL = "/ipfs-accelerate/mcp/1.0.0"
MAX_SESSIONS_PER_PEER = 4
