"""The DHT: peers of one network find each other through any bootstrap node, and models by CID.

py-libp2p's Kademlia (``libp2p.kad_dht.KadDHT``, ``/ipfs/kad/1.0.0``, as kubo speaks it) runs on
the host. Two kinds of provider record are put in it:

- a **rendezvous key** per network name (:func:`rendezvous_key`). Every node provides it and
  looks its providers up every ``network.dht_interval_s``. A provider it is not connected to is
  dialled, like a peer named in a relayed heartbeat. So two peers of network "blue" that share
  only a bootstrap node, one that runs another network name (under the same key; an open
  network's bootstrap node takes anyone), still find each other. Heartbeats cannot do that:
  they travel only on the network's own gossip topic. With a network key, a digest of it is
  part of the rendezvous key, so private networks that share a name never meet.
- the **CID of every model** a node serves. ``pull_model`` looks providers up when no connected
  peer offers the model.

**Records from outside the network are ignored.** A record is only a peer id and addresses.
Dialling one admits a member only: with a network key nobody else can connect, and with
``allow_peers`` nobody off the list. In an open network a stranger may connect, but it is used for
nothing until it heartbeats on the network's topic: models are taken only from peers whose
heartbeats offer them.

Mode: ``server`` answers other peers' queries and stores their records; ``client`` only asks.
``auto`` (the default) serves when the node listens on a public address, and is a client
behind NAT or on a LAN. Bootstrap nodes should run ``server``. A client puts its records on the
servers it knows. Nothing runs while no connected peer serves the DHT (the library's lookups
would otherwise dial whatever its peerstore holds), and with ``allow_peers`` the DHT is off
(``auto``) or refused (``server``/``client``): its lookups dial the peers they learn of.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

log = structlog.get_logger("p2p.dht")

LOOKUP_TIMEOUT_S = 20.0
DIALS_PER_LOOKUP = 8
EMPTY_TABLE_RETRY_S = 2.0  # how soon to look again while no DHT server is known
RETRY_AFTER_S = 300.0  # a provider we dialled and could not reach is tried again after this
REPROVIDE_ROUNDS = 10
MAX_PROVIDER_KEYS = 20_000  # keys whose provider records a server keeps (the library has no cap)


def rendezvous_key(network: str, psk: bytes | None = None) -> str:
    """The DHT key whose providers are the peers of ``network``: the multihash (hex) of its
    name under a prefix of ours, so no other application's key collides with it. With a
    network key, a digest of the key goes in too: two private networks that chose the same name
    (every default one is "default") do not share a rendezvous, and the key itself stays secret."""
    name = f"/ipfs-accelerate/rendezvous/{network}"
    if psk is not None:
        name += "/" + hashlib.sha256(b"ipfs-accelerate rendezvous salt" + psk).hexdigest()
    return (b"\x12\x20" + hashlib.sha256(name.encode()).digest()).hex()


def is_public(addr: str) -> bool:
    """Whether a multiaddr's IP is globally routable (not loopback, private or link-local)."""
    parts = addr.split("/")
    for proto, value in zip(parts[1::2], parts[2::2]):
        if proto in ("ip4", "ip6"):
            try:
                return ipaddress.ip_address(value).is_global
            except ValueError:
                return False
    return False


def choose_mode(mode: str, listen_addrs: list[str]) -> str:
    """``server`` or ``client`` for a configured ``auto|server|client``."""
    if mode != "auto":
        return mode
    return "server" if any(is_public(a) for a in listen_addrs) else "client"


@dataclass
class DhtStats:
    """What the DHT did, for ``get_node_info``."""

    mode: str = ""
    lookups: int = 0
    found: int = 0
    dialled: int = 0
    provided: int = 0
    failures: int = 0
    last_error: str = ""
    routing_table: int = 0
    network_peers: int = 0
    tried: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "routing_table": self.routing_table, "lookups": self.lookups,
                "network_peers_found": self.network_peers,
                "providers_found": self.found, "dialled": self.dialled, "provided": self.provided,
                "failures": self.failures, "last_error": self.last_error}


class Dht:
    """Kademlia on the node's host: the network's rendezvous and model provider records.

    Why a component of its own: discovery dials what it is told about, replication knows
    nothing of routing, and the DHT's periodic work (re-provide, look up, feed the routing table
    with new connections) needs its own task in the node's nursery."""

    def __init__(self, net: Any, *, network: str, mode: str, interval_s: float,
                 dial: Callable[[str, list[str]], None], provides: Callable[[], list[str]],
                 psk: bytes | None = None) -> None:
        self.net = net
        self.key = rendezvous_key(network, psk)
        self.configured_mode = mode
        self.interval_s = interval_s
        self._dial = dial
        self._provides = provides
        self._kad: Any = None
        self._provided: set[str] = set()
        self._wake = trio.Event()
        self._rounds = 0
        self._empty_rounds = 0
        self.stats = DhtStats()
        self.rendezvous_peers: dict[str, float] = {}  # peer -> when a lookup last named it

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.tools.anyio_service import background_trio_service

        mode = choose_mode(self.configured_mode, self.net.listen_addrs())
        self.stats.mode = mode
        self._kad = KadDHT(self.net.libp2p_host, DHTMode.SERVER if mode == "server" else DHTMode.CLIENT,
                           enable_random_walk=False)
        async with background_trio_service(self._kad):
            log.info("dht up", mode=mode, rendezvous=self.key[:16])
            task_status.started()
            while True:
                await self._round()
                # no DHT server known yet: look again soon (2 s, doubling up to the interval)
                # rather than a whole interval later; a new connection pokes at once
                if self.stats.routing_table:
                    self._empty_rounds = 0
                    wait = self.interval_s
                else:
                    wait = min(self.interval_s, EMPTY_TABLE_RETRY_S * 2 ** min(self._empty_rounds, 10))
                    self._empty_rounds += 1
                with trio.move_on_after(wait * random.uniform(0.8, 1.2)):
                    await self._wake.wait()
                self._wake = trio.Event()

    def poke(self) -> None:
        """Run a round now, if no DHT server is known yet (a new connection may be the first)."""
        if not self.stats.routing_table:
            self._empty_rounds = 0
            self._wake.set()

    def _servers_known(self) -> bool:
        """Whether a connected peer serves the DHT (identify says so). Without one a round does
        nothing useful, and the library's lookups would fall back to dialling whatever is in
        the peerstore (it does so while its routing table holds fewer than 5 peers)."""
        from libp2p.kad_dht.common import PROTOCOL_ID
        from libp2p.peer.id import ID

        store = self.net.libp2p_host.get_peerstore()
        for peer in self.net.connected_peers():
            try:
                if str(PROTOCOL_ID) in [str(p) for p in (store.get_protocols(ID.from_base58(peer)) or [])]:
                    return True
            except Exception:  # noqa: BLE001 - a peer identify has not reached yet
                continue
        return False

    async def _round(self) -> None:
        if not self._servers_known():
            self.stats.routing_table = 0
            return
        await self._feed_routing_table()
        self._rounds += 1
        for key in [self.key, *self._provides()]:
            # new keys at once; all of them again every REPROVIDE_ROUNDS (a server may have restarted)
            if key not in self._provided or self._rounds % REPROVIDE_ROUNDS == 0:
                if await self._provide(key):
                    self._provided.add(key)
        for peer, addrs in await self.providers(self.key):
            self.rendezvous_peers[peer] = trio.current_time()
            self._maybe_dial(peer, addrs)
        if len(self.rendezvous_peers) > 4096:
            self.rendezvous_peers = dict(sorted(self.rendezvous_peers.items(), key=lambda kv: kv[1])[-2048:])
        self._bound_provider_store()
        self.stats.routing_table = self._kad.get_routing_table_size()
        self.stats.network_peers = len(self.rendezvous_peers)

    async def _feed_routing_table(self) -> None:
        from libp2p.peer.id import ID

        for peer in self.net.connected_peers():
            try:
                await self._kad.add_peer(ID.from_base58(peer))
            except Exception as exc:  # noqa: BLE001 - a peer that left meanwhile
                log.debug("dht: routing table add failed", peer=peer, error=str(exc))

    async def _provide(self, key: str) -> bool:
        try:
            with trio.fail_after(LOOKUP_TIMEOUT_S):
                ok = bool(await self._kad.provide(key))
        except Exception as exc:  # noqa: BLE001 - no server reachable yet, a peer that left
            self._failed(exc)
            return False
        self.stats.provided += int(ok)
        return ok

    async def provide(self, cid: str) -> None:
        """Advertise ``cid`` now (a model just pulled); re-advertised with the others."""
        if self._kad is not None and await self._provide(cid):
            self._provided.add(cid)

    async def providers(self, key: str, count: int = 20) -> list[tuple[str, list[str]]]:
        """(peer id, addresses) of the providers of ``key``, this node left out."""
        if self._kad is None:
            return []
        self.stats.lookups += 1
        try:
            with trio.fail_after(LOOKUP_TIMEOUT_S):
                infos = await self._kad.find_providers(key, count)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return []
        me = self.net.peer_id
        out = [(str(i.peer_id), [str(a) for a in i.addrs]) for i in infos if str(i.peer_id) != me]
        self.stats.found += len(out)
        return out

    def _maybe_dial(self, peer: str, addrs: list[str]) -> None:
        now = trio.current_time()
        if self.net.is_connected(peer) or now - self.stats.tried.get(peer, -RETRY_AFTER_S) < RETRY_AFTER_S:
            return
        if sum(1 for t in self.stats.tried.values() if now - t < self.interval_s) >= DIALS_PER_LOOKUP:
            return
        usable = addrs[:8]
        if not usable:
            return
        self.stats.tried[peer] = now
        if len(self.stats.tried) > 4096:
            self.stats.tried = dict(sorted(self.stats.tried.items(), key=lambda kv: kv[1])[-2048:])
        self.stats.dialled += 1
        log.info("dht: dialling a peer of the network", peer=peer, addrs=usable[:2])
        self._dial(peer, usable)

    def _bound_provider_store(self) -> None:
        """Keep at most MAX_PROVIDER_KEYS keys in the provider store, dropping the keys whose
        newest record is oldest. py-libp2p expires records after 48 h and rate-limits each peer,
        but sets no cap on keys, so a member could grow a server's memory for two days."""
        providers = getattr(getattr(self._kad, "provider_store", None), "providers", None)
        if not isinstance(providers, dict):
            return
        if len(providers) <= MAX_PROVIDER_KEYS:
            return
        ours = {bytes.fromhex(self.key)}

        def newest(item: tuple[bytes, dict[str, Any]]) -> float:
            return max((getattr(r, "timestamp", 0.0) for r in item[1].values()), default=0.0)

        extra = len(providers) - MAX_PROVIDER_KEYS
        for key, _ in sorted(providers.items(), key=newest)[:extra + len(ours)]:
            if key not in ours and extra > 0:
                del providers[key]
                extra -= 1
        log.warning("dht: provider store over its cap; dropped the stalest keys", cap=MAX_PROVIDER_KEYS)

    def _failed(self, exc: BaseException) -> None:
        self.stats.failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
        log.debug("dht operation failed", error=self.stats.last_error)
