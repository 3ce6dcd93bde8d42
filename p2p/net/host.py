"""The libp2p host of one peer: transports, security, pubsub, streams, discovery, redial.

``open_host`` builds a py-libp2p 0.8.1 host the way DESIGN.md's Security section asks and the
measured quirks in LIBRARY-NOTES.md require:

- TCP, **Noise only** (py-libp2p's default also accepts plaintext and secio), Yamux only.
- ``ConnectionConfig(max_connections_per_peer=1)``: with the default of 3 every dial waits out
  a 250 ms happy-eyeballs timer. Its stream negotiation timeouts are raised from 10 s to
  :data:`STREAM_NEGOTIATE_TIMEOUT_S`, our fetch timeout (see there).
- Optional private network (PSK). py-libp2p applies it to raw TCP connections only; QUIC
  bypasses it, so PSK + QUIC is refused.
- GossipSub v1.1 with a 1 s heartbeat (the library default is 120 s; the mesh is repaired only
  on heartbeats) and spam protection raised to :data:`GOSSIP_MAX_MSGS_PER_TOPIC_PER_S`: the
  library counts messages per *forwarding* neighbour (our own publishes included), so by our
  estimate a relay carrying 20 peers' 2 s heartbeats would already sit at the default 10/s.
- mDNS discovery that advertises concrete addresses and connects what it finds.
- Bootstrap peers dialled at start and redialled with capped exponential backoff
  (:mod:`p2p.net.bootstrap`); py-libp2p's own AutoConnector is stopped because it ignores
  ``allow_peers`` and would dial up to 200 peerstore entries.
- ``allow_peers``: other peers are never dialled, their streams are reset, their gossip is
  ignored, and their connections are closed as soon as they open.

Everything runs in the caller's trio context; leaving ``open_host`` cancels and closes it all.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from p2p.config import NetworkConfig
from p2p.net.addrs import (
    expand_wildcard,
    is_loopback,
    is_valid_peer_id,
    parse_multiaddr,
    peer_id_of,
    strip_peer_id,
)
from p2p.net import libp2p_patches
from p2p.net.bootstrap import KEPT_GIVE_UP_S, KeptPeer, keep_connected
from p2p.net.errors import DialError, NetConfigError, PeerNotAllowedError, ProtocolRefused, RequestError, describe
from p2p.net.events import Fanout, GossipMessage, PeerEvent, PeerEventKind
from p2p.net.framing import FrameError
from p2p.net.logs import quiet_library_logs
from p2p.net.mdns import mdns_discovery
from p2p.net.ratelog import peer_log
from p2p.net.streams import FramedStream, Traffic

log = structlog.get_logger(__name__)

DIAL_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 5.0
# How long a new stream's multistream-select may take, each way. The library's 10 s is below
# the block fetch's own 30 s (p2p.replication.dagservice.FETCH_TIMEOUT_S): with three nodes
# running flat out on two cores, stream opens were measured taking over 10 s, so fetches that
# their caller would have waited for failed early, workers claimed late and tasks ran twice
# (test_control_load, docs/architecture.md §12). A dead link is still dropped after
# TCP_USER_TIMEOUT_S, whatever a negotiation is waiting for.
STREAM_NEGOTIATE_TIMEOUT_S = 30.0
# A graceful close (yamux GO_AWAY, then the secure channel and TCP) that takes longer than this
# is aborted: over a cut link a writer blocked on the full socket holds yamux's write lock and
# the GO_AWAY queues behind it for as long as the link stays dead (54 s in the partition test).
CLOSE_GRACE_S = 2.0
# After the abort (sockets closed under the library), the library's own close finishes within
# this; it normally takes ~0.2 s (two fixed 0.1 s sleeps).
ABORT_WAIT_S = 5.0
# A TCP connection whose sent data stays unacknowledged this long is dropped by the kernel
# (TCP_USER_TIMEOUT; keepalive probes count too, so an idle link is checked as well). Without
# it a cut link keeps a connection "up" for many minutes, retransmitting with exponential
# backoff: after a 30 s partition healed, the halves resumed only on TCP's next retransmission
# (~30 s later), and nothing redialled because nothing had disconnected. Dropped, the
# connection is redialled (kept peers, with backoff) as soon as the link is back. A live peer
# ACKs within milliseconds even when its process is busy (the kernel ACKs). One cost: Linux
# also aborts a connection whose peer's receive window stays full this long (a peer stopped
# or stalled for over 10 s while we push blocks at it: measured, a 2 s timeout fired 2.4 s
# into a zero window); that peer is redialled when it resumes and the data sent again.
TCP_USER_TIMEOUT_S = 10.0
TCP_KEEPALIVE_IDLE_S = 5
TCP_KEEPALIVE_INTERVAL_S = 2
GOSSIP_HEARTBEAT_S = 1
GOSSIP_MAX_MSGS_PER_TOPIC_PER_S = 100.0
GOSSIP_MAX_MESSAGE_BYTES = 1 << 20  # py-libp2p's inbound pubsub RPC cap
# At most this many peers are kept connected by redial tasks (bootstrap + connect_peer/join).
# Each costs a task and a periodic dial; the connect_peer tool could otherwise add them forever.
MAX_KEPT_PEERS = 256
# At most this many mDNS-discovered peers are dialled at once (a LAN can announce thousands).
MAX_MDNS_DIALS = 16

StreamHandler = Callable[[str, FramedStream], Awaitable[None]]
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]


class _ConnectionNotifee(INotifee):
    """Forwards connection open/close to the host's event loop; never blocks the swarm."""

    def __init__(self, send: trio.MemorySendChannel[ID]) -> None:
        self._send = send

    def _push(self, conn: INetConn) -> None:
        peer = getattr(conn.muxed_conn, "peer_id", None)
        if peer is None:
            return
        try:
            self._send.send_nowait(peer)
        except trio.WouldBlock:
            log.warning("connection event queue full; peer state resyncs on the next event")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        _bound_dead_link_time(conn)
        self._push(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._push(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None


class NetHost:
    """A running libp2p host. Get one from :func:`open_host`; it is valid only inside that block."""

    def __init__(
        self,
        host: IHost,
        pubsub: Pubsub,
        gossipsub: GossipSub,
        config: NetworkConfig,
        nursery: trio.Nursery,
        *,
        max_kept_peers: int = MAX_KEPT_PEERS,
        kept_give_up_s: float = KEPT_GIVE_UP_S,
    ) -> None:
        if max_kept_peers < 1 or kept_give_up_s <= 0:
            raise NetConfigError("max_kept_peers must be >= 1 and kept_give_up_s > 0")
        self._host = host
        self._pubsub = pubsub
        self._gossipsub = gossipsub
        self._config = config
        self._nursery = nursery
        self._peer_id = str(host.get_id())
        self._allowed: frozenset[str] = frozenset(config.allow_peers)
        self._max_frame = config.max_frame_bytes
        self._connected: set[str] = set()
        self._connected_at: dict[str, float] = {}
        # peer id -> its kept address; one redial task per peer, insertion order = age
        self._kept: dict[str, KeptPeer] = {}
        self._max_kept = max_kept_peers
        self._kept_give_up_s = kept_give_up_s
        self._state_changed = trio.Event()
        self.relays: Any = None  # p2p.net.relay.Relays, set by open_host
        self._peer_events: Fanout[PeerEvent] = Fanout("peer-events")
        self._topics: dict[str, Fanout[GossipMessage]] = {}
        self._subscribe_lock = trio.Lock()
        self._dialing: set[str] = set()
        self.traffic = Traffic()  # payload bytes and messages moved (read by the metrics)

    # --- identity and addresses -------------------------------------------------------------

    def keep(self, addr: str, *, bootstrap: bool = False) -> bool:
        """Hold a connection to ``addr`` (ending in /p2p/<id>) for the host's life: dial now,
        redial with backoff whenever it drops. Bootstrap addresses and peers joined by hand.

        One redial task per *peer*: keeping a second address of a kept peer replaces its
        address. A non-bootstrap address that has not connected for ``kept_give_up_s`` is
        dropped (its peer can be kept again later). At most ``max_kept_peers`` peers are kept:
        the oldest non-bootstrap one makes room for a new one; when all are bootstrap peers the
        new address is refused (logged, returns False). Returns True when ``addr`` is kept."""
        peer = peer_id_of(addr)
        if peer == self._peer_id:
            return False
        kept = self._kept.get(peer)
        if kept is not None:
            kept.addr = addr
            kept.bootstrap = kept.bootstrap or bootstrap
            return True
        if len(self._kept) >= self._max_kept:
            victim = next((k for k in self._kept.values() if not k.bootstrap), None)
            if victim is None:
                peer_log.warning(
                    "kept-peers", "kept-peer limit reached; not keeping a new address",
                    limit=self._max_kept, kept=len(self._kept), addr=addr,
                )
                return False
            peer_log.warning(
                "kept-peers", "kept-peer limit reached; the oldest hand-added peer is no longer redialled",
                limit=self._max_kept, dropped=victim.addr, added=addr,
            )
            self._forget_kept(victim)
        kept = KeptPeer(addr=addr, bootstrap=bootstrap, give_up_after_s=self._kept_give_up_s)
        self._kept[peer] = kept
        self._nursery.start_soon(self._run_kept, kept)
        return True

    def kept_peers(self) -> dict[str, str]:
        """Peer id -> address of every peer a redial task keeps connected."""
        return {peer: k.addr for peer, k in self._kept.items()}

    def _forget_kept(self, kept: KeptPeer) -> None:
        if self._kept.get(kept.peer) is kept:
            del self._kept[kept.peer]
        kept.cancel_scope.cancel()

    async def _run_kept(self, kept: KeptPeer) -> None:
        try:
            with kept.cancel_scope:
                await keep_connected(self, kept, self._config.reconnect_max_backoff_s)
        finally:
            if self._kept.get(kept.peer) is kept:
                del self._kept[kept.peer]

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def libp2p_host(self) -> IHost:
        """The underlying py-libp2p host, for protocols this wrapper does not cover (DHT, relay)."""
        return self._host

    @property
    def pubsub(self) -> Pubsub:
        return self._pubsub

    def listen_addrs(self) -> list[str]:
        """Dialable addresses ending in /p2p/<id>; wildcards expanded, loopback last."""
        out: list[str] = []
        for addr in self._host.get_transport_addrs():
            for concrete in expand_wildcard(addr):
                full = f"{strip_peer_id(str(concrete))}/p2p/{self._peer_id}"
                if full not in out:
                    out.append(full)
        out.sort(key=is_loopback)
        return out

    # --- peers -------------------------------------------------------------------------------

    def allowed(self, peer_id: str) -> bool:
        """True when ``allow_peers`` is empty or names ``peer_id`` (we always allow ourselves)."""
        return not self._allowed or peer_id in self._allowed or peer_id == self._peer_id

    def diagnose(self, peer_id: str) -> dict[str, Any]:
        """What a liveness verdict needs to be explained from a log alone: this process's event
        loop (runnable tasks), and per connection to ``peer_id`` its open yamux streams, free
        outbound stream slots and control frames waiting to be written. Never raises."""
        out: dict[str, Any] = {}
        try:
            out["runnable_tasks"] = trio.lowlevel.current_statistics().tasks_runnable
            conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
            out["connections"] = [_muxer_report(c) for c in conns]
        except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the caller
            out["error"] = describe(exc)
        return out

    def connected_peers(self) -> list[str]:
        return sorted(self._connected)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self._connected

    def connected_since(self, peer_id: str) -> float | None:
        """``time.monotonic()`` when the current connection to ``peer_id`` opened, or None."""
        return self._connected_at.get(peer_id)

    def peer_addrs(self, peer_id: str) -> list[str]:
        """Addresses the peerstore knows for ``peer_id`` (from dials, identify, mDNS)."""
        try:
            addrs = self._host.get_peerstore().addrs(ID.from_base58(peer_id))
        except Exception:  # noqa: BLE001 - unknown peer or bad id
            return []
        return [f"{strip_peer_id(str(a))}/p2p/{peer_id}" for a in addrs]

    async def connect(self, multiaddr: str, timeout: float = DIAL_TIMEOUT_S) -> str:
        """Dial ``multiaddr`` (must end in /p2p/<id>) and return the peer id once usable. A
        ``/p2p-circuit`` address is dialled through its relay (:mod:`p2p.net.relay`)."""
        if "/p2p-circuit" in multiaddr:
            return await self._dial_relayed(multiaddr, timeout)
        ma = parse_multiaddr(multiaddr)
        try:
            info = info_from_p2p_addr(ma)
        except Exception as exc:  # noqa: BLE001
            raise NetConfigError(f"cannot dial {multiaddr!r}: {describe(exc)}") from None
        return await self._dial(info, timeout, label=multiaddr)

    async def _dial_relayed(self, multiaddr: str, timeout: float) -> str:
        head, sep, peer = multiaddr.rstrip("/").rpartition("/p2p-circuit/p2p/")
        if not sep or not is_valid_peer_id(peer) or "/p2p/" not in head:
            raise NetConfigError(f"cannot dial {multiaddr!r}: a relayed address is <relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>")
        if peer == self._peer_id:
            raise DialError(f"refusing to dial ourselves ({multiaddr})")
        relay = head.rpartition("/p2p/")[2]
        for who in (peer, relay):
            if not self.allowed(who):
                raise PeerNotAllowedError(f"peer {who} is not in allow_peers")
        if self.relays is None:
            raise DialError(f"cannot connect to {multiaddr}: relaying is not running")
        try:
            got = await self.relays.dial(multiaddr, timeout)
        except trio.TooSlowError:
            raise DialError(f"cannot connect to {multiaddr}: timed out after {timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - py-libp2p raises many unrelated types
            raise DialError(f"cannot connect to {multiaddr}: {describe(exc)}") from None
        self._sync_peer(ID.from_base58(got))
        return got

    def remote_addrs(self, peer_id: str) -> list[str]:
        """The addresses our live connections to ``peer_id`` run to (where it is reachable for
        us now; no ``/p2p`` suffix)."""
        try:
            conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:  # noqa: BLE001
            return []
        out: list[str] = []
        for conn in conns or []:
            try:
                out += [str(a) for a in conn.get_transport_addresses()]
            except Exception:  # noqa: BLE001 - a connection closing under us
                continue
        return out

    def connection_kind(self, peer_id: str) -> str | None:
        """How we are connected to ``peer_id``: ``direct``, ``relayed``, ``hole-punched`` or None."""
        if peer_id not in self._connected:
            if self.relays is not None:
                self.relays.state.hole_punched.discard(peer_id)
            return None
        try:
            conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:  # noqa: BLE001 - bad id, closing network
            return None
        if self.relays is None:
            return "direct" if conns else None
        return self.relays.connection(list(conns or []), peer_id)

    async def _dial(self, info: PeerInfo, timeout: float, label: str) -> str:
        peer = str(info.peer_id)
        if peer == self._peer_id:
            raise DialError(f"refusing to dial ourselves ({label})")
        if not self.allowed(peer):
            raise PeerNotAllowedError(f"peer {peer} is not in allow_peers")
        # py-libp2p keeps a negative cache of peers whose addresses all failed and refuses to
        # dial them for a while; our callers (bootstrap redial with backoff, explicit connects)
        # already pace their attempts, and a restarted peer must be reachable at once.
        network = self._host.get_network()
        if hasattr(network, "unblock_peer"):
            network.unblock_peer(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except trio.TooSlowError:
            raise DialError(f"cannot connect to {label}: timed out after {timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - py-libp2p raises many unrelated types
            raise DialError(f"cannot connect to {label}: {describe(exc)}") from None
        self._sync_peer(info.peer_id)
        return peer

    async def disconnect(self, peer_id: str, grace_s: float = CLOSE_GRACE_S) -> None:
        """Close every connection to ``peer_id``; returns within ``grace_s + ABORT_WAIT_S``.

        The library's graceful close runs as a task of the host; when it has not finished after
        ``grace_s`` (a dead link: see :data:`CLOSE_GRACE_S`) the TCP sockets under the peer's
        connections are closed with a reset, which ends every read and write blocked on them
        (py-libp2p's TCP stream ignores a write to a socket closed under it: that write returns
        as if sent, harmless on a connection being dropped), so that same close completes and
        the swarm removes the connection and reports the disconnect (redial then opens a fresh
        connection). The close is never cancelled midway:
        py-libp2p would keep a half-closed connection registered."""
        try:
            pid = ID.from_base58(peer_id)
        except Exception as exc:  # noqa: BLE001 - not a peer id: nothing to close
            log.debug("disconnect failed", peer=peer_id, error=describe(exc))
            return
        done = trio.Event()

        async def close() -> None:
            try:
                await self._host.disconnect(pid)
            except Exception as exc:  # noqa: BLE001
                log.debug("disconnect failed", peer=peer_id, error=describe(exc))
            finally:
                done.set()

        self._nursery.start_soon(close)
        with trio.move_on_after(grace_s):
            await done.wait()
            return
        aborted = _abort_transports(self._host.get_network().get_connections(pid))
        log.info("graceful close timed out; connection aborted", peer=peer_id, grace_s=grace_s, sockets=aborted)
        with trio.move_on_after(ABORT_WAIT_S):
            await done.wait()
            return
        log.warning("connection still closing after the abort", peer=peer_id, waited_s=grace_s + ABORT_WAIT_S)

    async def wait_connected(self, peer_id: str, timeout: float) -> None:
        """Return once ``peer_id`` is connected; ``trio.TooSlowError`` after ``timeout``."""
        with trio.fail_after(timeout):
            while peer_id not in self._connected:
                await self._state_changed.wait()

    async def wait_disconnected(self, peer_id: str) -> None:
        while peer_id in self._connected:
            await self._state_changed.wait()

    @asynccontextmanager
    async def peer_events(self) -> AsyncIterator[trio.MemoryReceiveChannel[PeerEvent]]:
        """Channel of :class:`PeerEvent` (first connection up / last connection down)."""
        async with self._peer_events.subscribe() as receive:
            yield receive

    def _sync_peer(self, pid: ID) -> None:
        """Reconcile our view of ``pid`` with the swarm's and emit a transition if any."""
        peer = str(pid)
        now = bool(self._host.get_network().get_connections(pid))
        was = peer in self._connected
        if now == was:
            return
        if now:
            if not self.allowed(peer):
                log.info("closing connection from peer not in allow_peers", peer=peer)
                self._nursery.start_soon(self.disconnect, peer)
                return
            self._connected.add(peer)
            self._connected_at[peer] = time.monotonic()
            kind = PeerEventKind.CONNECTED
        else:
            self._connected.discard(peer)
            self._connected_at.pop(peer, None)
            kind = PeerEventKind.DISCONNECTED
        log.debug("peer " + kind.value, peer=peer)
        self._peer_events.publish(PeerEvent(kind, peer))
        self._state_changed.set()
        self._state_changed = trio.Event()

    async def _connection_events(self, receive: trio.MemoryReceiveChannel[ID]) -> None:
        async with receive:
            async for pid in receive:
                self._sync_peer(pid)

    # --- pubsub ------------------------------------------------------------------------------

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish to ``topic``. Bursts above ~GOSSIP_MAX_MSGS_PER_TOPIC_PER_S are dropped by
        gossipsub: batch through :class:`p2p.net.pacing.Debouncer`."""
        if len(data) > GOSSIP_MAX_MESSAGE_BYTES - 1024:
            raise ValueError(f"gossip message of {len(data)} bytes is over the ~1 MiB pubsub limit")
        await self._pubsub.publish(topic, data)
        self.traffic.gossip_messages_out += 1
        self.traffic.gossip_bytes_out += len(data)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[trio.MemoryReceiveChannel[GossipMessage]]:
        """Channel of :class:`GossipMessage` from other peers on ``topic`` (our own are dropped).

        The libp2p subscription stays (we keep relaying the topic) until the host closes.
        """
        fanout = await self._ensure_topic(topic)
        async with fanout.subscribe() as receive:
            yield receive

    async def _ensure_topic(self, topic: str) -> Fanout[GossipMessage]:
        async with self._subscribe_lock:
            fanout = self._topics.get(topic)
            if fanout is None:
                fanout = Fanout(f"gossip:{topic}")
                sub = await self._pubsub.subscribe(topic)
                self._topics[topic] = fanout
                self._nursery.start_soon(self._pump_topic, topic, sub, fanout)
            return fanout

    async def _pump_topic(self, topic: str, sub: Any, fanout: Fanout[GossipMessage]) -> None:
        """Drain py-libp2p's 32-message subscription queue into our own fan-out at once."""
        try:
            async for msg in sub:
                try:
                    origin = str(ID(msg.from_id))
                except Exception:  # noqa: BLE001 - a message without a valid origin
                    continue
                if origin == self._peer_id or not self.allowed(origin):
                    continue
                self.traffic.gossip_messages_in += 1
                self.traffic.gossip_bytes_in += len(msg.data)
                fanout.publish(GossipMessage(origin, bytes(msg.data)))
        except Exception as exc:  # noqa: BLE001 - keep the host up; subscribers just stop hearing
            log.warning("gossip subscription ended", topic=topic, error=describe(exc))
        self._topics.pop(topic, None)
        fanout.close()

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers that told us they subscribe to ``topic``."""
        return sorted(str(p) for p in self._pubsub.peer_topics.get(topic, set()))

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our gossipsub mesh for ``topic`` (they get our publishes directly)."""
        return sorted(str(p) for p in self._gossipsub.mesh.get(topic, set()))

    # --- streams -----------------------------------------------------------------------------

    def set_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id``. The handler gets (peer id, FramedStream); when it returns the
        stream is closed, when it raises the stream is reset and the host carries on."""

        async def _serve(raw: INetStream) -> None:
            peer = str(raw.muxed_conn.peer_id)
            stream = FramedStream(raw, peer, protocol_id, self._max_frame, self.traffic)
            if not self.allowed(peer):
                log.info("refusing stream from peer not in allow_peers", peer=peer, protocol=protocol_id)
                await stream.reset()
                return
            try:
                await handler(peer, stream)
            except FrameError as exc:
                log.warning("bad frame from peer", peer=peer, protocol=protocol_id, error=str(exc))
                await stream.reset()
            except Exception as exc:  # noqa: BLE001 - a handler bug must not take the node down
                log.warning("stream handler failed", peer=peer, protocol=protocol_id, error=describe(exc))
                await stream.reset()
            else:
                await stream.close()

        self._host.set_stream_handler(TProtocol(protocol_id), _serve)

    def set_request_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        """Serve :meth:`request`: each request frame on a stream gets one reply frame."""

        async def _serve(peer: str, stream: FramedStream) -> None:
            async for payload in stream.frames():
                await stream.write_frame(await handler(peer, payload))

        self.set_stream_handler(protocol_id, _serve)

    def remove_stream_handler(self, protocol_id: str) -> None:
        self._host.remove_stream_handler(TProtocol(protocol_id))

    @asynccontextmanager
    async def open_stream(self, peer_id: str, protocol_id: str) -> AsyncIterator[FramedStream]:
        """A new stream to ``peer_id`` (dialled from the peerstore if not connected); closed on
        exit, reset if the block raises."""
        if not self.allowed(peer_id):
            raise PeerNotAllowedError(f"peer {peer_id} is not in allow_peers")
        try:
            raw = await self._host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol_id)])
        except Exception as exc:  # noqa: BLE001
            kind = ProtocolRefused if _refused(exc) else RequestError
            raise kind(f"cannot open {protocol_id} to {peer_id}: {describe(exc)}") from None
        stream = FramedStream(raw, peer_id, protocol_id, self._max_frame, self.traffic)
        try:
            yield stream
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.reset()
            raise
        else:
            with trio.CancelScope(shield=True):
                await stream.close()

    async def request(
        self, peer_id: str, protocol_id: str, payload: bytes, timeout: float = REQUEST_TIMEOUT_S
    ) -> bytes:
        """Send one request frame on a new stream and return the reply frame."""
        try:
            with trio.fail_after(timeout):
                async with self.open_stream(peer_id, protocol_id) as stream:
                    await stream.write_frame(payload)
                    await stream.close_write()
                    return await stream.read_frame()
        except trio.TooSlowError:
            raise RequestError(f"{protocol_id} to {peer_id}: no reply within {timeout:g} s") from None
        except (RequestError, PeerNotAllowedError):
            raise
        except FrameError as exc:
            raise RequestError(f"{protocol_id} to {peer_id}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - stream reset, connection lost...
            raise RequestError(f"{protocol_id} to {peer_id}: {describe(exc)}") from None

    async def ping(self, peer_id: str, timeout: float = PING_TIMEOUT_S) -> float:
        """Round-trip time in milliseconds of one /ipfs/ping/1.0.0 exchange (stream setup excluded)."""
        payload = secrets.token_bytes(32)
        try:
            with trio.fail_after(timeout):
                raw = await self._host.new_stream(ID.from_base58(peer_id), [PING_PROTOCOL_ID])
                try:
                    start = time.perf_counter()
                    await raw.write(payload)
                    got = b""
                    while len(got) < len(payload):
                        chunk = await raw.read(len(payload) - len(got))
                        if not chunk:
                            raise RequestError(f"ping to {peer_id}: stream closed")
                        got += chunk
                    rtt_ms = (time.perf_counter() - start) * 1000.0
                finally:
                    with trio.CancelScope(shield=True):
                        try:
                            await raw.close()
                        except Exception:  # noqa: BLE001
                            pass
        except trio.TooSlowError:
            raise RequestError(f"ping to {peer_id}: no reply within {timeout:g} s") from None
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RequestError(f"ping to {peer_id}: {describe(exc)}") from None
        if got != payload:
            raise RequestError(f"ping to {peer_id}: reply does not match")
        return rtt_ms

    # --- background tasks --------------------------------------------------------------------

    async def _mdns_loop(self, port: int) -> None:
        """Connect every peer mDNS finds. A LAN without multicast only costs us discovery."""
        advertise = [strip_peer_id(a) for a in self.listen_addrs() if "/tcp/" in a]
        non_loopback = [a for a in advertise if not is_loopback(a)]
        try:
            async with mdns_discovery(self._host.get_network(), non_loopback or advertise, port) as found:
                async with trio.open_nursery() as nursery:
                    async for info in found:
                        peer = str(info.peer_id)
                        log.debug("mdns found", peer=peer, connected=peer in self._connected, dialing=peer in self._dialing)
                        if peer in self._connected or peer in self._dialing or not self.allowed(peer):
                            continue
                        if len(self._dialing) >= MAX_MDNS_DIALS:  # mDNS re-announces; try later
                            continue
                        self._dialing.add(peer)
                        nursery.start_soon(self._dial_discovered, info)
        except Exception as exc:  # noqa: BLE001 - e.g. no multicast route, port 5353 unusable
            log.warning("mDNS discovery unavailable; continuing without it", error=describe(exc))

    async def _dial_discovered(self, info: PeerInfo) -> None:
        peer = str(info.peer_id)
        try:
            await self._dial(info, DIAL_TIMEOUT_S, label=f"mDNS peer {peer}")
            log.info("mdns peer connected", peer=peer)
        except (DialError, PeerNotAllowedError) as exc:
            log.debug("mdns peer dial failed", peer=peer, error=str(exc))
        finally:
            self._dialing.discard(peer)


# Attributes that lead from a swarm connection down to its TCP socket: SwarmConn.muxed_conn ->
# Yamux.secured_conn -> SecureSession.conn -> NoiseTransportReadWriter.conn -> (PskConn._conn ->)
# RawConnection.stream -> TrioTCPStream.stream -> trio.SocketStream.
_TRANSPORT_ATTRS = ("muxed_conn", "secured_conn", "conn", "_conn", "read_writer", "read_write_closer", "stream")


def _refused(exc: BaseException) -> bool:
    """Whether a failed stream open was the peer answering "na" to the protocol (py-libp2p
    wraps the ProtocolNotSupportedError in a StreamFailure, or says so in the message)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ProtocolNotSupportedError) or "protocols not supported" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _tcp_sockets(conn: object) -> list[trio.SocketStream]:
    """The trio socket streams under ``conn``, found through :data:`_TRANSPORT_ATTRS`. None for
    a relayed connection: the socket under it is our connection to the relay, which carries
    every other circuit and our reservation (aborting it would cut them all)."""
    found: list[trio.SocketStream] = []
    if _is_relayed(conn):
        return found
    seen: set[int] = set()
    todo = [conn]
    while todo and len(seen) < 64:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, trio.SocketStream):
            found.append(obj)
            continue
        attrs = getattr(obj, "__dict__", {})
        todo.extend(attrs[name] for name in _TRANSPORT_ATTRS if attrs.get(name) is not None)
    return found


def _announced_addrs(candidates: list[Multiaddr]) -> list[Multiaddr]:
    """What the host tells peers (identify) and puts in DHT provider records: its addresses with
    wildcards expanded to the interfaces' (``/ip4/0.0.0.0`` is nobody's address to dial), loopback
    last, then whatever identify observed."""
    out: list[Multiaddr] = []
    seen: set[str] = set()
    for addr in candidates:
        for concrete in expand_wildcard(addr):
            if str(concrete) not in seen:
                seen.add(str(concrete))
                out.append(concrete)
    out.sort(key=lambda a: is_loopback(str(a)))
    return out


def _is_relayed(conn: object) -> bool:
    from libp2p.connection_types import ConnectionType

    try:
        return conn.get_connection_type() is ConnectionType.RELAYED  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not a swarm connection, or closing
        return False


def _bound_dead_link_time(conn: INetConn) -> int:
    """Set :data:`TCP_USER_TIMEOUT_S` (and keepalive) on the TCP sockets under ``conn``, inbound
    and outbound alike; returns how many. Platforms without the options keep TCP's defaults."""
    n = 0
    for stream in _tcp_sockets(conn):
        sock = stream.socket
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", TCP_KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", TCP_KEEPALIVE_INTERVAL_S),
                                ("TCP_USER_TIMEOUT", int(TCP_USER_TIMEOUT_S * 1000))):
                opt = getattr(socket, name, None)
                if opt is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
            n += 1
        except OSError as exc:  # a socket already closed, an option the kernel refuses
            log.debug("tcp timeouts not set", error=str(exc))
    return n


def _abort_transports(conns: list[INetConn]) -> int:
    """Close the TCP sockets under ``conns`` at once, with a reset (SO_LINGER 0: nothing left
    to retransmit; a peer that comes back gets a RST for its old connection and drops it too).
    Every task blocked reading or writing them gets ``ClosedResourceError``. Returns how many."""
    n = 0
    for conn in conns:
        for stream in _tcp_sockets(conn):
            try:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            stream.socket.close()  # trio wakes every waiter on it with ClosedResourceError
            n += 1
    return n


def _security_options(key_pair: KeyPair) -> dict[TProtocol, Any]:
    """Noise only: py-libp2p's default also negotiates /plaintext/2.0.0 and secio."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return {TProtocol(NOISE_PROTOCOL_ID): noise}


def _listen_multiaddrs(config: NetworkConfig) -> list[Multiaddr]:
    addrs = [parse_multiaddr(a) for a in config.listen]
    if not addrs:
        raise NetConfigError("network.listen is empty; give at least one multiaddr")
    is_quic = [("/quic" in str(a)) for a in addrs]
    if any(is_quic) and not config.quic:
        raise NetConfigError("network.listen has a QUIC address but network.quic is false")
    if config.quic and not any(is_quic):
        # Listen on QUIC next to every TCP address (same IP, any free UDP port).
        for a in list(addrs):
            text = str(a)
            if "/tcp/" in text:
                addrs.append(Multiaddr(text.split("/tcp/")[0] + "/udp/0/quic-v1"))
    return addrs


@asynccontextmanager
async def open_host(
    key_pair: KeyPair,
    config: NetworkConfig,
    psk: bytes | None = None,
    *,
    max_kept_peers: int = MAX_KEPT_PEERS,
    kept_give_up_s: float = KEPT_GIVE_UP_S,
) -> AsyncIterator[NetHost]:
    """Start a host listening on ``config.listen``; it stops (connections closed) on exit.

    ``psk`` is the 32-byte swarm key (see :mod:`p2p.net.psk`); ``config.psk_file`` is *not*
    read here, so the caller decides where keys come from. ``max_kept_peers`` and
    ``kept_give_up_s`` bound the redial tasks of :meth:`NetHost.keep`.

    py-libp2p is patched first (:mod:`p2p.net.libp2p_patches`): no input from a peer can end
    the host; only local errors (cannot listen, bad config, out of memory) leave this block.

    py-libp2p's ``host.run()`` and the services wrap whatever crosses them in (nested)
    ExceptionGroups; a lone exception -- ours or the caller's from inside the block -- is
    unwrapped again so ``except DialError`` / ``pytest.raises(ValueError)`` work as expected.
    """
    try:
        options = {"max_kept_peers": max_kept_peers, "kept_give_up_s": kept_give_up_s}
        async with _open_host(key_pair, config, psk, options) as net:
            yield net
    except BaseExceptionGroup as group:
        leaf = _sole_exception(group)
        if leaf is None:
            raise
        context, suppress = leaf.__context__, leaf.__suppress_context__
        try:
            raise leaf
        finally:
            leaf.__context__, leaf.__suppress_context__ = context, suppress


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one leaf of a group nested around a single exception, else None."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def _open_host(
    key_pair: KeyPair, config: NetworkConfig, psk: bytes | None, host_options: dict[str, Any]
) -> AsyncIterator[NetHost]:
    quiet_library_logs()
    libp2p_patches.apply()  # before new_host: BasicHost binds its stream handler at construction
    if psk is not None and len(psk) != 32:
        raise NetConfigError(f"a swarm key is 32 bytes, got {len(psk)}")
    if psk is not None and config.quic:
        raise NetConfigError("py-libp2p does not apply the swarm key (PSK) to QUIC; disable quic or the PSK")
    for peer in config.allow_peers:
        if not is_valid_peer_id(peer):
            raise NetConfigError(f"network.allow_peers has an invalid peer id: {peer!r}")
    bootstrap = list(dict.fromkeys(config.bootstrap))
    own_id = str(ID.from_pubkey(key_pair.public_key))
    for addr in bootstrap:
        peer_id_of(addr)  # validates: a bootstrap address must name its peer
    listen = _listen_multiaddrs(config)

    host = new_host(
        key_pair=key_pair,
        sec_opt=_security_options(key_pair),
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=listen,
        enable_mDNS=False,  # see p2p.net.mdns: we advertise concrete addresses ourselves
        enable_quic=config.quic,
        connection_config=ConnectionConfig(
            max_connections_per_peer=1,
            outbound_stream_protocol_negotiation_timeout=STREAM_NEGOTIATE_TIMEOUT_S,
            inbound_stream_protocol_negotiation_timeout=STREAM_NEGOTIATE_TIMEOUT_S,
        ),
        psk=psk.hex() if psk is not None else None,
        addrs_factory=_announced_addrs,
    )
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V11],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=GOSSIP_HEARTBEAT_S,
        max_messages_per_topic_per_second=GOSSIP_MAX_MSGS_PER_TOPIC_PER_S,
    )
    pubsub = Pubsub(host, gossipsub)
    send, receive = trio.open_memory_channel[ID](4096)
    host.get_network().register_notifee(_ConnectionNotifee(send))

    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(host.run(listen_addrs=listen))
        except Exception as exc:  # noqa: BLE001 - e.g. address in use
            raise NetConfigError(f"cannot listen on {[str(a) for a in listen]}: {describe(exc)}") from None
        # py-libp2p's AutoConnector dials peerstore entries (up to 200!) whenever we hold fewer
        # than low_watermark=100 connections, ignoring allow_peers. We decide whom to dial.
        auto_connector = getattr(host.get_network(), "auto_connector", None)
        if auto_connector is not None:
            await auto_connector.stop()
        bound = host.get_transport_addrs()
        if len(bound) < len(listen):  # py-libp2p logs a bind failure (port in use) and carries on
            raise NetConfigError(
                f"cannot listen on {[str(a) for a in listen]} (address in use or not local?); "
                f"bound only {[str(a) for a in bound]}"
            )
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(gossipsub))
        await pubsub.wait_until_ready()
        # before the host's nursery, so it closes after it: a cancel of that nursery must not
        # reach the relay services' shutdown (it replaced the caller's own exception)
        from p2p.net.relay import RelayLimitsConfig, Relays

        relays = await stack.enter_async_context(Relays(
            host, psk, serve=config.relay_service, hole_punch=config.hole_punching,
            limits=RelayLimitsConfig(max_reservations=config.relay_max_reservations, max_circuits=config.relay_max_circuits,
                                     duration_s=config.relay_duration_s, data_bytes=config.relay_data_bytes),
        ).running())
        nursery = await stack.enter_async_context(trio.open_nursery())
        net = NetHost(host, pubsub, gossipsub, config, nursery, **host_options)
        net.relays = relays
        stack.callback(net._peer_events.close)
        nursery.start_soon(net._connection_events, receive)
        for addr in bootstrap:
            if peer_id_of(addr) != own_id:
                net.keep(addr, bootstrap=True)
        if config.mdns:
            tcp_ports = [a.value_for_protocol("tcp") for a in host.get_transport_addrs() if "/tcp/" in str(a)]
            nursery.start_soon(net._mdns_loop, int(tcp_ports[0]) if tcp_ports else 0)
        log.info("host started", peer=net.peer_id, addrs=net.listen_addrs(), psk=psk is not None)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()
            send.close()
            log.debug("host stopping", peer=net.peer_id)


__all__ = [
    "ABORT_WAIT_S",
    "CLOSE_GRACE_S",
    "DIAL_TIMEOUT_S",
    "GOSSIP_MAX_MSGS_PER_TOPIC_PER_S",
    "MAX_KEPT_PEERS",
    "FramedStream",
    "NetHost",
    "RequestHandler",
    "StreamHandler",
    "open_host",
]


def _muxer_report(conn: Any) -> dict[str, Any]:
    muxed = getattr(conn, "muxed_conn", None)
    report: dict[str, Any] = {"streams": len(getattr(muxed, "streams", {}) or {})}
    sem = getattr(muxed, "stream_backlog_semaphore", None)
    if sem is not None:
        report["outbound_slots_free"] = sem.value
    if muxed is not None:
        report.update(libp2p_patches.queued(muxed))
    channel = getattr(muxed, "new_stream_send_channel", None)
    if channel is not None:
        stats = channel.statistics()  # inbound streams not yet accepted; a reader waiting to hand one over
        report["accept_backlog"] = stats.current_buffer_used
        report["reader_waiting_on_accept"] = stats.tasks_waiting_send
    closed = getattr(conn, "event_closed", None)
    if closed is not None:
        report["closed"] = closed.is_set()
    return report
