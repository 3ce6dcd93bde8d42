"""mDNS discovery (libp2p spec, via py-libp2p's zeroconf-based MDNSDiscovery), bridged to trio.

Why not ``new_host(enable_mDNS=True)``: that advertises the raw listen addresses, so a node on
``0.0.0.0`` tells the LAN to dial ``/ip4/0.0.0.0/...``. We build the discovery ourselves once
the host listens and advertise concrete interface addresses instead.

py-libp2p reports discoveries through a module-level singleton (``peerDiscovery``) from
zeroconf's own threads. The handler here only hops the ``PeerInfo`` onto the trio loop
(``TrioToken.run_sync_soon``) into a channel; connecting happens in the host's nursery.
mDNS fills the peerstore but does not connect: the consumer of :meth:`MdnsBridge.discovered`
does. Every host in a process sees every discovery (shared singleton), which is harmless: a
host dials only peers other than itself and skips peers it is already connected to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
import trio
from libp2p.abc import INetworkService
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.discovery.mdns.mdns import MDNSDiscovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

log = structlog.get_logger(__name__)


# A discovery is reported once per service (zeroconf's add_service), so a consumer whose first
# dial failed (the peer was still starting, the dial limit was reached, a key refused it) would
# never hear of that peer again. Known, still-advertised peers are handed out again on this
# schedule (doubling up to the cap); the consumer skips peers it is connected to or dialing.
REDELIVER_FIRST_S = 2.0
REDELIVER_MAX_S = 60.0


@asynccontextmanager
async def mdns_discovery(
    network: INetworkService, advertise: list[str], port: int
) -> AsyncIterator[trio.MemoryReceiveChannel[PeerInfo]]:
    """Advertise ``advertise`` (multiaddrs without /p2p/) and yield a channel of discovered peers.

    Every peer still advertised is delivered again from time to time (see REDELIVER_*), not
    only when zeroconf first reports it.
    """
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[PeerInfo](256)
    own_id = network.get_peer_id()
    known: dict[ID, PeerInfo] = {}

    def _deliver(info: PeerInfo) -> None:
        if info.peer_id == own_id:
            return
        known[info.peer_id] = info
        try:
            send.send_nowait(info)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # redelivered later (REDELIVER_*)

    def _handler(info: PeerInfo) -> None:  # runs in a zeroconf thread
        try:
            token.run_sync_soon(_deliver, info)
        except trio.RunFinishedError:
            pass

    # The handler goes in BEFORE MDNSDiscovery exists: its constructor starts zeroconf's
    # ServiceBrowser, which can report the peers already on the LAN within milliseconds, each
    # exactly once. Registered after the constructor's thread hop back to the loop (slow on a
    # loaded machine), those first reports were lost and the node never found those peers.
    peerDiscovery.register_peer_discovered_handler(_handler)
    try:
        # Zeroconf() binds sockets and starts threads: keep that blocking work off the event loop.
        discovery = await trio.to_thread.run_sync(
            lambda: MDNSDiscovery(network, port=port, listen_addrs=list(advertise))
        )
        try:
            # MDNSDiscovery.start() would register on the event loop thread, where zeroconf's
            # probing blocks for ~2 s, and spawn an unsupervised cleanup task. Do both ourselves.
            await trio.to_thread.run_sync(discovery.broadcaster.register)
            log.debug("mdns started", advertise=advertise)
            async with receive, trio.open_nursery() as nursery:
                nursery.start_soon(_cleanup_loop, discovery)
                nursery.start_soon(_redeliver_loop, discovery, known, _deliver)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:

            def _stop() -> None:
                try:
                    discovery.broadcaster.unregister()
                    discovery.listener.stop()
                    discovery.zeroconf.close()
                except Exception as exc:  # noqa: BLE001 - best effort at shutdown
                    log.debug("mdns stop failed", error=repr(exc))

            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await trio.to_thread.run_sync(_stop, abandon_on_cancel=True)
    finally:
        peerDiscovery.unregister_peer_discovered_handler(_handler)
        send.close()


async def _redeliver_loop(
    discovery: MDNSDiscovery, known: dict[ID, PeerInfo], deliver: Callable[[PeerInfo], None]
) -> None:
    """Hand every known peer that is still advertised to the consumer again, with a backoff of
    its own (2 s doubling to 60 s from when it was found: a peer found late is retried soon,
    whatever the others' backoff has grown to)."""
    due: dict[ID, tuple[float, float]] = {}  # peer -> (next delivery, its current delay)
    while True:
        await trio.sleep(REDELIVER_FIRST_S)
        now = trio.current_time()
        # The listener's dict is written from zeroconf's threads; list() copies it in one step.
        live = {peer_id for peer_id, _ in list(discovery.listener.discovered_services.values())}
        for peer_id, info in list(known.items()):
            if peer_id not in live:  # the service went away: forget it until it is found again
                known.pop(peer_id, None)
                due.pop(peer_id, None)
                continue
            at, delay = due.setdefault(peer_id, (now, REDELIVER_FIRST_S))  # first again at this tick
            if now >= at:
                deliver(info)
                delay = min(delay * 2, REDELIVER_MAX_S)
                due[peer_id] = (now + delay, delay)
        for peer_id in [p for p in due if p not in known]:
            del due[peer_id]


async def _cleanup_loop(discovery: MDNSDiscovery) -> None:
    """Forget services not refreshed within two TTLs (what MDNSDiscovery's own loop does)."""
    while True:
        await trio.sleep(discovery.cleanup_interval)
        try:
            discovery.listener.cleanup_stale_entries(max_age=discovery.ttl * 2)
        except Exception as exc:  # noqa: BLE001
            log.debug("mdns cleanup failed", error=repr(exc))
