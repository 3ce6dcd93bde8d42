"""Discovery: which peers this node connects to, beyond what the host does by itself.

The host (p2p.net) dials bootstrap addresses with backoff and whatever mDNS finds on the LAN.
This component adds the rest: peers joined by hand (the connect_peer tool, ``p2p join``), kept
and redialled; peers *learned from peers* — a heartbeat relayed through the mesh from a peer we
are not connected to names its addresses, and we dial it; and it tells replication when a new
connection opens, so the new peer's heads are fetched at once.

A node that cannot be dialled (``network.relay_reserve``) also keeps reservations here: on up to
``max_relays`` connected peers that serve the circuit relay (identify says so), so that its
heartbeats can name an address through each (:mod:`p2p.net.relay`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import trio

from p2p.errors import NodeError
from p2p.net import NetError, PeerEventKind
from p2p.net.addrs import is_loopback

log = structlog.get_logger("p2p.discovery")

MAX_LEARNED_ADDRS = 6  # a heartbeat's addrs are the peer's word: try a few, not all
MAX_LEARNED_RELAYED = 4  # ... and then its addresses through relays, which come last in its list
RESERVE_CHECK_S = 5.0  # how often reservations are checked (and at once on a new connection)
RESERVE_RETRY_S = 60.0  # a relay that refused is asked again after this


class Discovery:
    """Connects to peers joined by hand or learned from peers; reports new connections."""

    def __init__(self, net: Any, *, on_connected: Callable[[str], None] = lambda peer: None,
                 max_relays: int = 0) -> None:
        self.net = net
        self._on_connected = on_connected
        self._dialing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self.max_relays = max_relays  # 0: this node does not reserve (it can be dialled)
        self._refused: dict[str, float] = {}
        self._check = trio.Event()

    async def run(self, events_rx: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.max_relays and getattr(self.net, "relays", None) is not None:
                nursery.start_soon(self._keep_reservations)
            task_status.started()
            async for ev in events_rx:
                if ev.kind is PeerEventKind.CONNECTED:
                    self._on_connected(ev.peer_id)
                self._check.set()

    async def _keep_reservations(self) -> None:
        relays = self.net.relays
        while True:
            for relay in list(relays.state.reservations):
                if not self.net.is_connected(relay) or not relays.held(relay):
                    relays.forget(relay)
            now = trio.current_time()
            for peer in self.net.connected_peers():
                if len(relays.state.reservations) >= self.max_relays:
                    break
                if (peer in relays.state.reservations or now - self._refused.get(peer, -RESERVE_RETRY_S) < RESERVE_RETRY_S
                        or self.net.connection_kind(peer) == "relayed" or not relays.is_relay(peer)):
                    continue
                # where we reach it now first, then what it told us; loopback only if nothing else
                addrs = list(dict.fromkeys(self.net.remote_addrs(peer) + self.net.peer_addrs(peer)))
                reachable = [a for a in addrs if not is_loopback(a)] or addrs
                if not await relays.reserve(peer, reachable, self.net.peer_id):
                    self._refused[peer] = now
                    log.info("relay reservation refused", relay=peer, error=relays.state.last_error)
            with trio.move_on_after(RESERVE_CHECK_S):
                await self._check.wait()
            self._check = trio.Event()

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
        direct = [a for a in addrs if "/p2p-circuit" not in a][:MAX_LEARNED_ADDRS]
        relayed = [a for a in addrs if "/p2p-circuit" in a][:MAX_LEARNED_RELAYED]
        self._nursery.start_soon(self._dial_learned, peer, direct + relayed)

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
