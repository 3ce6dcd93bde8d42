"""The node on the network: replicate the Merkle clock and keep the peer table alive.

- **Announce**: after this peer appends events, its heads go out on the heads topic, debounced
  (gossipsub drops bursts), and again every ``reannounce_s`` (anti-entropy). Heartbeats carry
  the heads too, so a lost announcement is repaired within a heartbeat.
- **Fetch**: a peer that hears of heads it lacks asks the announcer for those blocks only; if
  their parents are missing too, it asks again with ``ancestors=N`` so a late joiner catches up
  in a few round trips instead of one per event. Every block is verified by the clock.
- **Liveness**: heartbeats (hardware, models, queue, capacity, addrs) every ``heartbeat_s``;
  leases expire after ``lease_s`` of silence; RTT comes from libp2p ping. A heartbeat from a
  peer we are not connected to (relayed through the mesh) is a peer learned from peers: dial it.

Everything runs in ``run()``'s nursery and stops with it.
"""

from __future__ import annotations

from collections import deque
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from multiformats import CID
from pydantic import ValidationError

from p2p.clock.cids import cid_from_bytes, cid_raw
from p2p.clock.event import event_parents
from p2p.errors import NodeError
from p2p.net import Debouncer, NetError, PeerEventKind, load_swarm_key, open_host
from p2p.peers import Heartbeat
from p2p.protocols.wire import (
    BLOCKS_PROTOCOL,
    BlocksReply,
    BlocksRequest,
    HeadsAnnouncement,
    HeadsReply,
    HeadsRequest,
    INLINE_ANNOUNCE_BYTES,
    WireError,
    decode_heads,
    decode_reply,
    decode_request,
    encode,
    topic,
)

if TYPE_CHECKING:
    from p2p.node import Node

log = structlog.get_logger("p2p.network")

CATCH_UP_BLOCKS = 2048  # ancestors asked for per round trip when parents are missing
MAX_HEADS = 1024  # the wire's cap; more concurrent heads than that collapse at our next append
PING_EVERY_S = 10.0


class Network:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.config = node.config.network
        self.net: Any = None
        self.heads_topic = topic(self.config.network, "heads")
        self.peers_topic = topic(self.config.network, "peers")
        self._syncing: dict[str, set[bytes]] = {}  # peer -> heads it announced that we lack
        self._dialing: set[str] = set()
        self._missing_results: dict[bytes, set[str]] = {}  # result block cid -> peers that have it
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        psk = load_swarm_key(Path(self.config.psk_file).expanduser()) if self.config.psk_file else None
        async with AsyncExitStack() as stack:
            self.net = await stack.enter_async_context(open_host(self.node.identity.key_pair, self.config, psk))
            self.net.set_request_handler(BLOCKS_PROTOCOL, self._serve)
            heads_rx = await stack.enter_async_context(self.net.subscribe(self.heads_topic))
            peers_rx = await stack.enter_async_context(self.net.subscribe(self.peers_topic))
            events_rx = await stack.enter_async_context(self.net.peer_events())
            # gossipsub allows ~100 messages/s per topic and peer (p2p.net.host); stay under it
            announcer: Debouncer[int] = Debouncer(
                self._announce, delay_s=self.config.announce_debounce_ms / 1000, min_interval_s=0.012, name="heads"
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(announcer.run)
                nursery.start_soon(self._on_local_events, announcer)
                nursery.start_soon(self._reannounce, announcer)
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._on_heads, heads_rx)
                nursery.start_soon(self._on_heartbeats, peers_rx)
                nursery.start_soon(self._on_peer_events, events_rx)
                nursery.start_soon(self._expire_leases)
                nursery.start_soon(self._retry_results)
                nursery.start_soon(self._measure_rtt)
                log.info("p2p node up", peer_id=self.node.peer_id, addrs=self.listen_addrs())
                task_status.started()

    def listen_addrs(self) -> list[str]:
        return self.net.listen_addrs() if self.net is not None else []

    async def connect(self, multiaddr: str) -> str:
        """Dial a peer (the connect_peer tool, `p2p join`); sync with it at once."""
        try:
            peer = await self.net.connect(multiaddr)
        except (NetError, ValueError) as exc:
            raise NodeError(f"cannot connect to {multiaddr}: {exc}") from None
        self.net.keep(multiaddr if "/p2p/" in multiaddr else f"{multiaddr}/p2p/{peer}")  # redialled if lost
        return str(peer)

    # ------------------------------------------------------------- announcing

    async def _on_local_events(self, announcer: Debouncer[int]) -> None:
        while True:
            await self.node.scheduler.local_event.wait()
            announcer.submit(1)

    async def _reannounce(self, announcer: Debouncer[int]) -> None:
        while True:
            await trio.sleep(self.config.reannounce_s)
            announcer.submit(0)

    def _heads_message(self, inline: bool) -> HeadsAnnouncement:
        clock = self.node.clock
        blocks: list[tuple[bytes, bytes]] = []
        pending = self.node.scheduler.unannounced
        if inline and pending and sum(len(e.data) for e in pending) <= INLINE_ANNOUNCE_BYTES:
            blocks = [(cid_raw(e.cid), e.data) for e in pending]
        pending.clear()
        return HeadsAnnouncement(peer=self.node.peer_id, heads=self._heads_raw(), events=len(clock), blocks=blocks)

    def _heads_raw(self) -> list[bytes]:
        return [cid_raw(c) for c in self.node.clock.heads()[:MAX_HEADS]]

    async def _announce(self, items: list[int]) -> None:
        await self.net.publish(self.heads_topic, encode(self._heads_message(inline=any(items))))

    async def _heartbeats(self) -> None:
        while True:
            hb = Heartbeat.model_validate(  # validated: a heartbeat peers reject would make us look dead
                self.node.heartbeat().model_dump() | {"heads": [str(c) for c in self.node.clock.heads()[:MAX_HEADS]]}
            )
            try:
                await self.net.publish(self.peers_topic, hb.model_dump_json().encode())
            except Exception as exc:  # noqa: BLE001 - no peers yet, or a transient pubsub error
                log.debug("heartbeat not sent", error=str(exc))
            await trio.sleep(self.config.heartbeat_s)

    # --------------------------------------------------------------- hearing

    async def _on_heads(self, rx: Any) -> None:
        async for msg in rx:
            try:
                ann = decode_heads(msg.data)
                if ann.blocks:
                    self._merge(msg.from_peer, ann.blocks)
                self._want(msg.from_peer, ann.heads)
            except WireError as exc:
                log.warning("bad heads announcement", peer=msg.from_peer, error=str(exc))
            except Exception:  # noqa: BLE001 - one peer's message must not stop the node
                log.exception("heads announcement failed", peer=msg.from_peer)

    async def _on_heartbeats(self, rx: Any) -> None:
        async for msg in rx:
            try:
                self._heartbeat(msg)
            except ValidationError as exc:
                log.warning("bad heartbeat", peer=msg.from_peer, error=exc.errors()[0]["msg"])
            except Exception:  # noqa: BLE001 - one peer's message must not stop the node
                log.exception("heartbeat failed", peer=msg.from_peer)

    def _heartbeat(self, msg: Any) -> None:
        hb = Heartbeat.model_validate_json(msg.data)
        if hb.peer_id != msg.from_peer:
            # gossip keeps the original author in from_peer (signed by it); a mismatch is a spoof
            log.warning("heartbeat for another peer ignored", peer=msg.from_peer, claimed=hb.peer_id)
            return
        if hb.peer_id == self.node.peer_id:
            return
        if self.node.peers.observe(hb):
            log.info("peer alive", peer=hb.peer_id, name=hb.name, models=len(hb.models))
            self.node.scheduler.peers_changed()
        heads = []
        for h in hb.heads:
            try:
                heads.append(cid_raw(CID.decode(h)))
            except Exception:  # noqa: BLE001 - a malformed head is ignored; the rest still sync
                continue
        self._want(hb.peer_id, heads)
        if (not self.net.is_connected(hb.peer_id) and hb.addrs and self._nursery is not None
                and hb.peer_id not in self._dialing):
            self._dialing.add(hb.peer_id)
            self._nursery.start_soon(self._dial_learned, hb.peer_id, hb.addrs)

    async def _dial_learned(self, peer: str, addrs: list[str]) -> None:
        try:
            for addr in addrs[:8]:  # a heartbeat's addrs are the peer's word: try a few, not all
                try:
                    await self.net.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
                    log.info("dialled a peer learned from peers", peer=peer, addr=addr)
                    return
                except Exception as exc:  # noqa: BLE001
                    log.debug("learned address failed", peer=peer, addr=addr, error=str(exc))
        finally:
            self._dialing.discard(peer)

    async def _on_peer_events(self, rx: Any) -> None:
        async for ev in rx:
            if ev.kind is PeerEventKind.CONNECTED and self._nursery is not None:
                self._nursery.start_soon(self._initial_sync, ev.peer_id)

    async def _initial_sync(self, peer: str) -> None:
        """Ask a newly connected peer for its heads; gossip meshes take a heartbeat to form."""
        try:
            reply = decode_reply(await self.net.request(peer, BLOCKS_PROTOCOL, encode(HeadsRequest())))
        except Exception as exc:  # noqa: BLE001
            log.debug("initial sync failed", peer=peer, error=str(exc))
            return
        if isinstance(reply, HeadsReply):
            self._want(peer, reply.heads)

    # --------------------------------------------------------------- fetching

    def _want(self, peer: str, heads: list[bytes]) -> None:
        clock = self.node.clock
        missing = {h for h in heads if not clock.has_event(cid_from_bytes(h))}
        if not missing or self._nursery is None:
            return
        pending = self._syncing.get(peer)
        if pending is not None:  # a sync with this peer is running: it picks these up
            pending |= missing
            return
        self._syncing[peer] = set(missing)
        self._nursery.start_soon(self._sync_from, peer)

    async def _sync_from(self, peer: str) -> None:
        """Fetch what ``peer`` announced until nothing it has is missing here."""
        try:
            ancestors = 0
            while self._syncing.get(peer):
                announced = self._syncing[peer]
                self._syncing[peer] = set()
                heads = sorted(h for h in announced if not self.node.clock.has_event(cid_from_bytes(h)))
                # what this peer announced first, then parents our orphans still miss: within
                # the server's per-request cap, so unfetchable parents can't crowd heads out
                parents = sorted({cid_raw(c) for c in self.node.clock.missing()} - set(heads))
                want = (heads + parents)[: self.config.max_blocks_per_request]
                if not want:
                    continue
                req = BlocksRequest(cids=want, ancestors=ancestors)
                try:
                    reply = decode_reply(await self.net.request(peer, BLOCKS_PROTOCOL, encode(req), timeout=30))
                except Exception as exc:  # noqa: BLE001
                    log.info("block fetch failed", peer=peer, error=str(exc))
                    return
                if not isinstance(reply, BlocksReply) or not reply.blocks:
                    return
                before = len(self.node.clock)
                try:
                    missing = self._merge(peer, reply.blocks)
                except Exception:  # a bug must not let one peer's blocks stop the node
                    log.exception("merging blocks failed", peer=peer)
                    return
                if len(self.node.clock) == before and ancestors:
                    # it sent blocks but none applied (rejected, or parents it can't give us):
                    # stop asking; the next announcement or heartbeat starts a fresh attempt
                    log.info("sync made no progress; pausing", peer=peer, missing=len(missing))
                    return
                if missing:
                    self._syncing[peer] |= missing
                    ancestors = CATCH_UP_BLOCKS  # deep history is missing: ask for it in bulk
        finally:
            self._syncing.pop(peer, None)

    def _merge(self, peer: str, blocks: list[tuple[bytes, bytes]]) -> set[bytes]:
        clock = self.node.clock
        pairs = []
        for raw_cid, data in blocks:
            try:
                pairs.append((cid_from_bytes(raw_cid), data))
            except Exception:  # noqa: BLE001 - not a CID: nothing to verify it against
                log.warning("block with a malformed CID skipped", peer=peer)
        result = clock.add_blocks(pairs)
        for cid, reason in result.rejected:
            log.warning("block rejected", peer=peer, cid=str(cid), reason=reason)
        if result.applied:
            self.node.scheduler.ingest(result.applied)
            for cid in self._result_cids(result.applied):
                if not self.node.clock.has(cid_from_bytes(cid)):
                    self._missing_results.setdefault(cid, set()).add(peer)
            if self._missing_results and self._nursery is not None:
                self._nursery.start_soon(self._fetch_results, peer)
        return {cid_raw(c) for c in result.missing}

    @staticmethod
    def _result_cids(events: list[Any]) -> list[bytes]:
        out = []
        for ev in events:
            for op in ev.ops:
                if isinstance(op, dict) and op.get("op") == "task.done" and op.get("result_cid") is not None:
                    out.append(cid_raw(op["result_cid"]))
        return out

    async def _fetch_results(self, peer: str) -> None:
        """Fetch result blocks (results too large to inline) that ``peer`` told us about."""
        clock = self.node.clock
        want = [c for c, peers in self._missing_results.items() if peer in peers]
        for i in range(0, len(want), 256):
            try:
                reply = decode_reply(await self.net.request(peer, BLOCKS_PROTOCOL, encode(BlocksRequest(cids=want[i:i + 256])), timeout=30))
            except Exception as exc:  # noqa: BLE001 - retried by _retry_results from any peer
                log.info("result fetch failed", peer=peer, error=str(exc))
                return
            if isinstance(reply, BlocksReply):
                for raw_cid, data in reply.blocks:
                    try:
                        clock.add_raw_block(cid_from_bytes(raw_cid), data)
                        self._missing_results.pop(raw_cid, None)
                    except Exception as exc:  # noqa: BLE001
                                log.warning("result block rejected", peer=peer, error=str(exc))
        self.node.scheduler.changed.fire()

    # ---------------------------------------------------------------- serving

    async def _serve(self, peer: str, payload: bytes) -> bytes:
        try:
            return self._answer(decode_request(payload))
        except WireError as exc:
            log.warning("bad blocks request", peer=peer, error=str(exc))
        except Exception:  # noqa: BLE001 - one peer's request must not stop the node
            log.exception("serving blocks failed", peer=peer)
        return encode(BlocksReply(blocks=[]))

    def _answer(self, req: BlocksRequest | HeadsRequest) -> bytes:
        clock = self.node.clock
        if isinstance(req, HeadsRequest):
            return encode(HeadsReply(heads=self._heads_raw(), events=len(clock)))
        limit = self.config.max_blocks_per_request + min(req.ancestors, CATCH_UP_BLOCKS)
        budget = self.config.max_frame_bytes - 4096
        out: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        queue = deque(req.cids[: self.config.max_blocks_per_request])
        walk = req.ancestors > 0
        while queue and len(out) < limit:
            raw = queue.popleft()
            if raw in seen:
                continue
            seen.add(raw)
            try:
                cid = cid_from_bytes(raw)
            except Exception:  # noqa: BLE001
                continue
            data = clock.get_block(cid)
            if data is None:
                continue
            if budget - len(data) - 64 < 0:
                break
            budget -= len(data) + 64
            out.append((raw, data))
            if walk and clock.has_event(cid):
                queue.extend(cid_raw(p) for p in event_parents(data))
        return encode(BlocksReply(blocks=out))

    # -------------------------------------------------------------- liveness

    async def _retry_results(self) -> None:
        """Result blocks not fetched yet are asked of every connected peer (any may hold them),
        including those a restart left behind (their events are stored, their blocks not)."""
        for task in self.node.scheduler.state.tasks.values():
            res = task.result
            if res is not None and res.result is None and res.result_cid is not None and not self.node.clock.has(res.result_cid):
                self._missing_results.setdefault(cid_raw(res.result_cid), set())
        while True:
            await trio.sleep(self.config.reannounce_s)
            if self._missing_results:
                for peer in self.net.connected_peers():
                    for peers in self._missing_results.values():
                        peers.add(peer)
                    await self._fetch_results(peer)

    async def _expire_leases(self) -> None:
        while True:
            await trio.sleep(min(1.0, self.config.heartbeat_s))
            gone = self.node.peers.expire()
            if gone:
                log.info("peers went silent", peers=sorted(gone))
                self.node.scheduler.peers_changed()

    async def _measure_rtt(self) -> None:
        while True:
            for peer in list(self.net.connected_peers()):
                try:
                    self.node.peers.set_rtt(peer, await self.net.ping(peer))
                except Exception:  # noqa: BLE001
                    pass
            await trio.sleep(PING_EVERY_S)

