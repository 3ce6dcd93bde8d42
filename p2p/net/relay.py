"""Circuit relay v2 and hole punching on a host: reach peers that cannot be dialled.

A peer behind a NAT can dial out but cannot be dialled. It keeps a connection to a reachable
peer that runs the relay service (``--relay-service``) and *reserves* a slot there. Its
address through the relay, ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``, goes into its
heartbeats. Any member that hears one dials that address: the relay joins the two streams, and
Noise and Yamux run end to end over them, so the relay sees only ciphertext.

Once a relayed connection is up, DCUtR (``libp2p.relay.circuit_v2.dcutr``) tries to replace it
with a direct one by hole punching. Both sides dial each other's observed addresses at the same
time, on a round trip measured over the relay. When it works, the connection is
``hole-punched``.

What py-libp2p 0.8.1 gives and what this module adds (measured; see docs/architecture.md §6.1):

- ``CircuitV2Protocol`` serves HOP (the relay's side) and STOP (accepting a relayed
  connection) once run as a service. Every node runs STOP; relays run HOP too.
- ``CircuitV2Transport.dial`` makes a relayed connection that is an ordinary swarm connection:
  streams, requests and gossip use it. The swarm itself never dials ``/p2p-circuit``
  addresses, so :meth:`Relays.dial` is called for them (``NetHost.connect`` does).
- Under a network key, the library's outbound relayed upgrade skips the key, while the inbound
  side applies it, so every relayed dial failed its security handshake. :meth:`Relays.dial`
  wraps the relayed stream in the key itself (:mod:`p2p.net.pnet`).
- The relay's default limits allow 4 reservations in all; ours are configured
  (``network.relay_*``). The data limit counts both directions, Noise and Yamux included. A
  relayed connection is meant for control traffic and small results: model pulls prefer direct
  connections.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

log = structlog.get_logger("p2p.net.relay")

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
RESERVE_TIMEOUT_S = 15.0
RELAY_DIAL_TIMEOUT_S = 20.0


@dataclass
class RelayLimitsConfig:
    """What a relay grants (the relay's side): see ``network.relay_*`` in configs/default.toml."""

    max_reservations: int = 128
    max_circuits: int = 16
    duration_s: int = 3600
    data_bytes: int = 1 << 28


@dataclass
class RelayState:
    """Reservations held and what hole punching did, for list_peers and get_node_info."""

    reservations: dict[str, list[str]] = field(default_factory=dict)  # relay peer -> our circuit addrs via it
    hole_punched: set[str] = field(default_factory=set)
    relayed_dials: int = 0
    reserve_failures: int = 0
    last_error: str = ""


def _unspecified(addr: str) -> bool:
    return addr.startswith(("/ip4/0.0.0.0/", "/ip6/::/"))


class Relays:
    """Circuit relay v2 on one host: the relay service (when on), STOP for everyone, relayed
    dials and reservations, and DCUtR.

    Why here and not in the node: these are properties of connections (how a peer is
    reached), which the host owns; the node only decides when to reserve (its peers' heartbeats
    say which peers are relays)."""

    def __init__(self, host: Any, psk: bytes | None, *, serve: bool, limits: RelayLimitsConfig,
                 hole_punch: bool) -> None:
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport

        self._host = host
        self._psk = psk
        self.serving = serve
        self._protocol = CircuitV2Protocol(host, limits=RelayLimits(
            duration=limits.duration_s, data=limits.data_bytes, max_circuit_conns=limits.max_circuits,
            max_reservations=limits.max_reservations), allow_hop=serve)
        # STOP only: with CLIENT, every dial would first make a reservation for the dialer
        self._transport = CircuitV2Transport(host, self._protocol, RelayConfig(roles=RelayRole.STOP))
        self._hole_punch = hole_punch
        self._dcutr: Any = None
        self.state = RelayState()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["Relays"]:
        """The services (STOP, HOP on a relay, DCUtR) for as long as the block runs."""
        from libp2p.tools.anyio_service import background_trio_service

        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(background_trio_service(self._protocol))
            if self._hole_punch:
                from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

                self._dcutr = DCUtRProtocol(self._host)
                await stack.enter_async_context(background_trio_service(self._dcutr))
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            try:
                yield self
            finally:
                self._nursery.cancel_scope.cancel()

    def is_relay(self, peer_id: str) -> bool:
        """Whether ``peer_id`` told us (identify) that it serves HOP."""
        from libp2p.peer.id import ID

        try:
            protocols = self._host.get_peerstore().get_protocols(ID.from_base58(peer_id)) or []
        except Exception:  # noqa: BLE001 - unknown peer
            return False
        return HOP_PROTOCOL in [str(p) for p in protocols]

    async def dial(self, circuit_addr: str, timeout: float = RELAY_DIAL_TIMEOUT_S) -> str:
        """Open a relayed connection to the peer at the end of ``circuit_addr``; returns its id."""
        from libp2p.peer.peerinfo import PeerInfo
        from multiaddr import Multiaddr

        ma = Multiaddr(circuit_addr)
        relay_ma, dest = self._transport.parse_circuit_ma(ma)
        import libp2p.network.swarm as swarm
        from libp2p.peer.id import ID

        relay_info = PeerInfo(ID.from_base58(relay_ma.get_peer_id()), [relay_ma])
        raw: Any = None
        try:
            with trio.fail_after(timeout):
                raw = await self._transport.dial_peer_info(PeerInfo(dest, [ma]), relay_info=relay_info)
                if self._psk is not None:
                    raw = swarm.new_protected_conn(raw, self._psk.hex())  # pnet, as the inbound side applies it
                await self._host.get_network().upgrade_outbound_raw_conn(raw, dest)
        except BaseException:
            # the relayed stream holds one of the relay's circuits: give it back whatever failed
            if raw is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await raw.close()
            raise
        self.state.relayed_dials += 1
        return str(dest)

    async def reserve(self, relay_peer: str, relay_addrs: list[str], own_id: str) -> bool:
        """Reserve a slot on a connected relay; on success our circuit addresses through it are
        remembered for heartbeats. The library refreshes the reservation before it expires
        (patch 10 of libp2p_patches drops it when a refresh fails). ``relay_addrs``: where the
        relay can be dialled, best first (the address of our live connection to it)."""
        from libp2p.peer.id import ID
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        rid = ID.from_base58(relay_peer)
        try:
            with trio.fail_after(RESERVE_TIMEOUT_S):
                stream = await self._host.new_stream(rid, [PROTOCOL_ID])
                try:
                    ok = bool(await self._transport.reserve(stream, rid, self._nursery))
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
        except Exception as exc:  # noqa: BLE001 - the relay refused, left, or is full
            ok = False
            self.state.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if not ok:
            self.state.reserve_failures += 1
            return False
        addrs = list(dict.fromkeys(
            f"{a.split('/p2p/')[0]}/p2p/{relay_peer}/p2p-circuit/p2p/{own_id}" for a in relay_addrs
            if "/p2p-circuit" not in a and not _unspecified(a)))
        self.state.reservations[relay_peer] = addrs[:4]
        log.info("relay reservation made", relay=relay_peer, addrs=addrs[:2])
        return True

    def forget(self, relay_peer: str) -> None:
        """The relay went away: its reservation no longer reaches us (and is not refreshed)."""
        from libp2p.peer.id import ID

        with contextlib.suppress(Exception):
            rid = ID.from_base58(relay_peer)
            self._transport._reservations.pop(rid, None)
            self._transport._reservation_proofs.pop(rid, None)
        if self.state.reservations.pop(relay_peer, None) is not None:
            log.info("relay reservation lost", relay=relay_peer)

    def held(self, relay_peer: str) -> bool:
        """Whether the library still holds our reservation on ``relay_peer`` (it drops one that
        expired or failed to refresh)."""
        from libp2p.peer.id import ID

        try:
            return ID.from_base58(relay_peer) in self._transport._reservations
        except Exception:  # noqa: BLE001 - a bad id, or internals that changed shape
            return False

    def circuit_addrs(self) -> list[str]:
        """Our addresses through the relays that hold a reservation for us."""
        return [a for relay, addrs in self.state.reservations.items() if self.held(relay) for a in addrs]

    def connection(self, conns: list[Any], peer_id: str) -> str | None:
        """``direct``, ``hole-punched`` or ``relayed`` for a peer's swarm connections (None: none).
        Any direct connection wins: new streams prefer it."""
        from libp2p.connection_types import ConnectionType

        if not conns:
            self.state.hole_punched.discard(peer_id)
            return None
        kinds = set()
        for conn in conns:
            try:
                kinds.add(conn.get_connection_type())
            except Exception:  # noqa: BLE001 - a connection closing under us
                continue
        if kinds and kinds != {ConnectionType.RELAYED}:
            if peer_id in self.state.hole_punched or self._upgraded_by_dcutr(peer_id):
                return "hole-punched"
            return "direct"
        return "relayed" if kinds else None

    def _upgraded_by_dcutr(self, peer_id: str) -> bool:
        """DCUtR left a direct connection to a peer we first reached through a relay."""
        dcutr = self._dcutr
        if dcutr is None:
            return False
        from libp2p.peer.id import ID

        try:
            direct = getattr(dcutr, "_direct_connections", None)
            if direct is not None and ID.from_base58(peer_id) in direct:
                self.state.hole_punched.add(peer_id)
                return True
        except Exception:  # noqa: BLE001 - library internals may change shape
            return False
        return False

    def info(self) -> dict[str, Any]:
        return {"service": self.serving, "hole_punching": self._hole_punch,
                "reservations": {k: v for k, v in self.state.reservations.items()},
                "relayed_dials": self.state.relayed_dials, "reserve_failures": self.state.reserve_failures,
                "hole_punched": sorted(self.state.hole_punched), "last_error": self.state.last_error}
