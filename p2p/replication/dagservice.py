"""DAGService: blocks by CID from a peer; BlockServer: the serving side.

go-ds-crdt fetches blocks through a ``DAGService`` (IPFS's Get/GetMany). Ours is addressed to a
peer, because our blocks live with the peers that announced them: ask the announcer for the
heads it announced, and for their ancestors in bulk when a catch-up is deep
(``ancestors=N``: one round trip brings up to N blocks, parents after children).

The production implementation speaks ``/ipfs-accelerate/<network>/blocks/1.0.0`` (one CBOR request
frame, one CBOR reply frame; p2p.protocols.wire). :class:`LocalDAGService` calls
:class:`BlockServer` objects directly, so replication is tested without processes.

Serving a catch-up reads thousands of blocks; the server does it through the clock's
``collect_blocks`` (a worker thread on a read connection), so a peer that catches up never
stalls the serving node's heartbeats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog

from p2p.net.ratelog import PeerLogLimiter
from p2p.protocols.wire import (
    BlocksReply,
    BlocksRequest,
    DroppedReply,
    DroppedRequest,
    HeadsReply,
    HeadsRequest,
    WireError,
    blocks_protocol,
    decode_reply,
    decode_request,
    encode,
)

log = structlog.get_logger("p2p.replication")
peer_log = PeerLogLimiter(log)

CATCH_UP_BLOCKS = 2048  # ancestors asked for per round trip when parents are missing
FETCH_TIMEOUT_S = 30.0

Block = tuple[bytes, bytes]  # (binary CID, block bytes)


class DAGService(Protocol):
    """Blocks from a given peer: what replication needs of the blocks protocol."""

    async def get_blocks(self, peer: str, cids: list[bytes], ancestors: int = 0) -> list[Block]:
        """Blocks ``peer`` has among ``cids`` (and up to ``ancestors`` of their ancestors)."""

    async def get_heads(self, peer: str) -> list[bytes]:
        """``peer``'s current heads."""

    async def get_blocks_and_stubs(self, peer: str, cids: list[bytes], ancestors: int = 0) -> tuple[list[Block], list[bytes]]:
        """``get_blocks``, plus the stubs (encoded) of the asked-for events ``peer`` pruned."""

    async def get_dropped(self, peer: str, workflows: list[str]) -> list[bytes]:
        """The records (encoded) of those compacted ``workflows`` whose events ``peer`` pruned."""


class StreamDAGService:
    """DAGService over the blocks stream protocol of a :class:`p2p.net.NetHost`."""

    def __init__(self, net: Any, network: str, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self._net = net
        self.protocol = blocks_protocol(network)
        self._timeout_s = timeout_s

    async def _ask(self, peer: str, msg: Any) -> Any:
        return decode_reply(await self._net.request(peer, self.protocol, encode(msg), timeout=self._timeout_s))

    async def get_blocks(self, peer: str, cids: list[bytes], ancestors: int = 0) -> list[Block]:
        return (await self.get_blocks_and_stubs(peer, cids, ancestors))[0]

    async def get_blocks_and_stubs(self, peer: str, cids: list[bytes], ancestors: int = 0) -> tuple[list[Block], list[bytes]]:
        reply = await self._ask(peer, BlocksRequest(cids=cids, ancestors=ancestors))
        if not isinstance(reply, BlocksReply):
            raise WireError(f"{peer} answered a blocks request with {reply.t!r}")
        return list(reply.blocks), list(reply.pruned)

    async def get_dropped(self, peer: str, workflows: list[str]) -> list[bytes]:
        reply = await self._ask(peer, DroppedRequest(workflows=workflows))
        if isinstance(reply, BlocksReply):
            return []  # an older peer: it cannot read the request, so it pruned nothing either
        if not isinstance(reply, DroppedReply):
            raise WireError(f"{peer} answered a dropped request with {reply.t!r}")
        return list(reply.records)

    async def get_heads(self, peer: str) -> list[bytes]:
        reply = await self._ask(peer, HeadsRequest())
        if not isinstance(reply, HeadsReply):
            raise WireError(f"{peer} answered a heads request with {reply.t!r}")
        return list(reply.heads)


class BlockServer:
    """Answers blocks and heads requests from this peer's clock, within the configured caps."""

    def __init__(self, clock: Any, heads: Callable[[], list[bytes]], *, max_blocks_per_request: int,
                 max_frame_bytes: int, dropped: Callable[[list[str]], list[bytes]] = lambda wids: []) -> None:
        self._clock = clock
        self._heads = heads
        self._dropped = dropped
        self._max_blocks = max_blocks_per_request
        self._budget = max_frame_bytes - 4096  # room for the reply's framing

    async def handle(self, peer: str, payload: bytes) -> bytes:
        """The request handler: malformed input gets an empty reply and a log line, never an
        exception into the host."""
        try:
            return encode(await self.answer(decode_request(payload)))
        except WireError as exc:
            peer_log.warning(peer, "bad blocks request", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - one peer's request must not stop the node
            peer_log.log("error", peer, "serving blocks failed", error=repr(exc))
        return encode(BlocksReply(blocks=[]))

    async def answer(self, req: BlocksRequest | HeadsRequest | DroppedRequest) -> BlocksReply | HeadsReply | DroppedReply:
        if isinstance(req, HeadsRequest):
            return HeadsReply(heads=self._heads(), events=len(self._clock))
        if isinstance(req, DroppedRequest):
            records, budget = [], self._budget
            for data in self._dropped(list(dict.fromkeys(req.workflows))):
                budget -= len(data) + 16
                if budget < 0:
                    break
                records.append(data)
            return DroppedReply(records=records)
        cids = req.cids[: self._max_blocks]
        limit = self._max_blocks + min(req.ancestors, CATCH_UP_BLOCKS)
        stubs: list[bytes] = []
        blocks = await self._clock.collect_blocks(cids, min(req.ancestors, CATCH_UP_BLOCKS), limit, self._budget, stubs)
        return BlocksReply(blocks=blocks, pruned=stubs)


class LocalDAGService:
    """DAGService that calls peers' :class:`BlockServer` objects in-process (tests)."""

    def __init__(self, servers: dict[str, BlockServer]) -> None:
        self.servers = servers
        self.down: set[str] = set()

    def _server(self, peer: str) -> BlockServer:
        if peer in self.down or peer not in self.servers:
            raise ConnectionError(f"{peer} is unreachable")
        return self.servers[peer]

    async def get_blocks(self, peer: str, cids: list[bytes], ancestors: int = 0) -> list[Block]:
        return (await self.get_blocks_and_stubs(peer, cids, ancestors))[0]

    async def get_blocks_and_stubs(self, peer: str, cids: list[bytes], ancestors: int = 0) -> tuple[list[Block], list[bytes]]:
        reply = await self._server(peer).answer(BlocksRequest(cids=cids, ancestors=ancestors))
        assert isinstance(reply, BlocksReply)
        return list(reply.blocks), list(reply.pruned)

    async def get_dropped(self, peer: str, workflows: list[str]) -> list[bytes]:
        reply = await self._server(peer).answer(DroppedRequest(workflows=workflows))
        assert isinstance(reply, DroppedReply)
        return list(reply.records)

    async def get_heads(self, peer: str) -> list[bytes]:
        reply = await self._server(peer).answer(HeadsRequest())
        assert isinstance(reply, HeadsReply)
        return list(reply.heads)
