"""Discovery: which peers this node connects to, beyond what the host does by itself.

The host (p2p.net) dials bootstrap addresses with backoff and whatever mDNS finds on the LAN.
This component adds the rest: peers joined by hand (the connect_peer tool, ``p2p join``), kept
and redialled; peers *learned from peers* — a heartbeat relayed through the mesh from a peer we
are not connected to names its addresses, and we dial it; and it tells replication when a new
connection opens, so the new peer's heads are fetched at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import trio

from p2p.errors import NodeError
from p2p.net import NetError, PeerEventKind

log = structlog.get_logger("p2p.discovery")

MAX_LEARNED_ADDRS = 8  # a heartbeat's addrs are the peer's word: try a few, not all


class Discovery:
    """Connects to peers joined by hand or learned from peers; reports new connections."""

    def __init__(self, net: Any, *, on_connected: Callable[[str], None] = lambda peer: None) -> None:
        self.net = net
        self._on_connected = on_connected
        self._dialing: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def run(self, events_rx: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for ev in events_rx:
                if ev.kind is PeerEventKind.CONNECTED:
                    self._on_connected(ev.peer_id)

    def listen_addrs(self) -> list[str]:
        return self.net.listen_addrs()

    async def connect(self, multiaddr: str) -> str:
        """Dial a peer (the connect_peer tool, `p2p join`) and keep the connection."""
        try:
            peer = await self.net.connect(multiaddr)
        except (NetError, ValueError) as exc:
            raise NodeError(f"cannot connect to {multiaddr}: {exc}") from None
        self.net.keep(multiaddr if "/p2p/" in multiaddr else f"{multiaddr}/p2p/{peer}")  # redialled if lost
        return str(peer)

    def learned(self, peer: str, addrs: list[str]) -> None:
        """A heartbeat from ``peer`` reached us: dial it if we are not connected."""
        if self.net.is_connected(peer) or peer in self._dialing or self._nursery is None:
            return
        self._dialing.add(peer)
        self._nursery.start_soon(self._dial_learned, peer, addrs[:MAX_LEARNED_ADDRS])

    async def _dial_learned(self, peer: str, addrs: list[str]) -> None:
        try:
            for addr in addrs:
                try:
                    await self.net.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
                    log.info("dialled a peer learned from peers", peer=peer, addr=addr)
                    return
                except Exception as exc:  # noqa: BLE001
                    log.debug("learned address failed", peer=peer, addr=addr, error=str(exc))
        finally:
            self._dialing.discard(peer)
