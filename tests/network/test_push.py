"""Direct event push (issue 9 item 3): announcements on a direct stream, bounded, hostile-proof.

1. Two real hosts in one process (loopback TCP, Noise, Yamux): pushed announcements arrive in
   order from the authenticated sender; an appender that outruns the stream never blocks: what
   it appends while the stream is busy folds into the frame still queued, every inline block
   still arrives, and without merging no more than ``push_queue`` frames wait per peer (the
   oldest are dropped, counted); the newest announcement always arrives.
2. Real ``p2p start`` processes with ``network.gossip_heads = false``: no heads travel by
   gossip (neither the heads topic nor heartbeats), so a workflow submitted after the peers
   connected can reach the other peer only by push. A hostile peer then writes junk, oversize
   frames, non-announcements and forged announcements on the push protocol: the node stays
   up, the honest peer keeps replicating by push, each fault is logged once per minute, and the
   node's own counters (its "replication stats" line at shutdown) show pushes heard.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.utils.varint import encode_uvarint
from multiaddr import Multiaddr

from p2p.clock.cids import block_cid, cid_raw
from p2p.config import NetworkConfig
from p2p.net import open_host
from p2p.protocols.wire import HeadsAnnouncement, encode
from p2p.replication.push import PushBroadcaster, push_protocol
from tests.cluster import Cluster, call, wait_known, wait_peers
from tests.conftest import DEFAULT_MODEL
from tests.net.junk_peer import STREAM_JUNK, junk_host


def _cfg() -> NetworkConfig:
    return NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False)


@asynccontextmanager
async def _two_hosts() -> AsyncIterator[tuple[Any, Any]]:
    """Two real hosts (loopback TCP, Noise, yamux), the first connected to the second."""
    async with open_host(create_new_key_pair(), _cfg()) as a, open_host(create_new_key_pair(), _cfg()) as b:
        await a.connect(b.listen_addrs()[0])
        with trio.fail_after(30):
            while b.peer_id not in a.connected_peers():
                await trio.sleep(0.01)
        yield a, b


def _ann(peer: str, n: int) -> bytes:
    return encode(HeadsAnnouncement(peer=peer, heads=[], events=n))


async def test_push_delivers_in_order_and_a_backlog_stays_bounded() -> None:
    async with _two_hosts() as (a, b):
        async with PushBroadcaster.open(a, queue=8, network="default") as pa, PushBroadcaster.open(b, queue=8, network="default") as pb:
            for i in range(3):
                await pa.broadcast(_ann(a.peer_id, i))
            got = []
            with trio.fail_after(30):
                while not got or got[-1][1] != 2:
                    p, d = await pb.next()
                    got.append((p, cbor2.loads(d)["events"]))
            # in order, from the authenticated sender (those queued while the stream opened
            # were folded into one frame)
            assert [p for p, _ in got] == [a.peer_id] * len(got)
            assert [n for _, n in got] == sorted({n for _, n in got})
            with trio.fail_after(30):  # the sender counts a frame once its write returns
                while pa.stats()["sent"] != pb.stats()["received"]:
                    await trio.sleep(0.01)
            first, folded = pa.stats()["sent"], pa.stats()["coalesced"]

            # 1,000 announcements without a checkpoint: the appender is never blocked, they fold
            # into the one frame still queued, and the newest heads are delivered
            for i in range(1000):
                pa.broadcast_nowait(_ann(a.peer_id, 1000 + i))
            st = pa.stats()
            assert st["queued"] == 1 and st["coalesced"] == folded + 999 and st["dropped_backlog"] == 0, st
            with trio.fail_after(30):
                while True:
                    peer, data = await pb.next()
                    if cbor2.loads(data)["events"] == 1999:
                        break
            assert pa.stats()["sent"] == first + 1, pa.stats()  # what was queued, not what was offered
            assert pb.stats()["received"] == pa.stats()["sent"]


async def test_a_burst_coalesces_without_losing_a_block_and_without_merging_a_backlog_stays_bounded() -> None:
    """Each of 300 announcements inlines one distinct block: coalesced while the stream is busy,
    every block still arrives, in order, in frames that respect the receiver's limits (at most
    ``MAX_INLINE_BLOCKS`` each). With merging off, a full queue drops its oldest (counted)."""
    from p2p.protocols.wire import MAX_INLINE_BLOCKS, decode_heads

    def ann(peer: str, i: int) -> bytes:
        data = f"block {i}".encode() * 10
        return encode(HeadsAnnouncement(peer=peer, heads=[cid_raw(block_cid(data))], events=i, blocks=[(cid_raw(block_cid(data)), data)]))

    async with _two_hosts() as (a, b):
        async with PushBroadcaster.open(a, queue=8, network="default") as pa, PushBroadcaster.open(b, queue=8, network="default") as pb:
            for i in range(300):
                pa.broadcast_nowait(ann(a.peer_id, i))
            assert pa.stats()["dropped_backlog"] == 0 and pa.stats()["queued"] <= 8, pa.stats()
            got: list[bytes] = []
            with trio.fail_after(30):
                while len(got) < 300:
                    _, data = await pb.next()
                    msg = decode_heads(data)
                    assert len(msg.blocks) <= MAX_INLINE_BLOCKS
                    got += [d for _, d in msg.blocks]
            assert got == [f"block {i}".encode() * 10 for i in range(300)]
            assert msg.events == 299 and pa.stats()["sent"] < 300

        async with PushBroadcaster.open(a, queue=8, network="other", merge=None) as pa, \
                PushBroadcaster.open(b, queue=8, network="other") as pb:
            for i in range(1000):
                pa.broadcast_nowait(_ann(a.peer_id, 1000 + i))
            st = pa.stats()
            assert st["queued"] <= 8 and st["dropped_backlog"] >= 1000 - 8 and st["coalesced"] == 0, st
            with trio.fail_after(30):
                while True:
                    _, data = await pb.next()
                    if cbor2.loads(data)["events"] == 1999:
                        break


async def test_a_peer_of_another_network_refuses_push_and_is_not_asked_again_soon() -> None:
    """Push's protocol id carries the network name: a connected node of another network (same
    key) refuses the stream, receives nothing, and is left alone for REFUSED_AFTER_S."""
    from p2p.replication.push import REFUSED_AFTER_S

    now = [1000.0]
    async with _two_hosts() as (a, b):
        async with PushBroadcaster.open(a, queue=8, network="red", now=lambda: now[0]) as pa, \
                PushBroadcaster.open(b, queue=8, network="blue") as pb:
            pa.broadcast_nowait(_ann(a.peer_id, 1))
            with trio.fail_after(30):
                while pa.counts.stream_failures == 0:
                    await trio.sleep(0.01)
            assert pa.counts.streams_opened == 0 and pb.counts.received == 0
            assert pa._retry_at[b.peer_id] == now[0] + REFUSED_AFTER_S
            pa.broadcast_nowait(_ann(a.peer_id, 2))  # skipped: no second negotiation
            await trio.sleep(0.2)
            assert pa.counts.stream_failures == 1 and pb.counts.received == 0


def _replicator_pair(tmp_path, cfg: NetworkConfig, *, push: bool, gossip_off: bool, tag: str = "",  # type: ignore[no-untyped-def]
                     others: tuple[str, ...] = ()):
    """Two in-process replicators on real clocks and schedulers, over in-memory gossip and push
    hubs: [(clock, scheduler, replicator)] (run each replicator's ``run`` in a nursery). Each
    knows the other as a live peer, and ``others`` too (peers the push hub does not reach)."""
    from p2p.clock import MerkleClock
    from p2p.config import SchedulerConfig
    from p2p.identity import Identity
    from p2p.peers import PeerCaps, PeerTable
    from p2p.replication import BlockServer, MemoryHub, Replicator
    from p2p.replication.dagservice import LocalDAGService
    from p2p.scheduler.scheduler import Scheduler

    gossip, direct, dag = MemoryHub(), MemoryHub(), LocalDAGService({})
    peers = []
    idents = [Identity.generate() for _ in "ab"]
    live = tuple(i.peer_id_str for i in idents) + others
    for name, ident in zip("ab", idents):
        clock = MerkleClock.open(tmp_path / f"{tag}{name}.sqlite", ident)
        me = PeerCaps(ident.peer_id_str, 1.0, frozenset(["m"]))
        sched = Scheduler(clock, engine=None, peers=PeerTable(lambda me=me: me, lease_s=30),  # type: ignore[arg-type]
                          config=SchedulerConfig())
        if gossip_off:
            gossip.partitioned.add(ident.peer_id_str)  # gossip delivers nothing
        rep = Replicator(clock, gossip.join(ident.peer_id_str), dag, peer_id=ident.peer_id_str, config=cfg,
                         ingest=sched.ingest, local_event=sched.local_event, take_unannounced=sched.take_unannounced,
                         direct=direct.join(ident.peer_id_str) if push else None, live_peers=lambda: live)
        dag.servers[ident.peer_id_str] = BlockServer(clock, rep.heads_raw, max_blocks_per_request=256, max_frame_bytes=8 << 20)
        peers.append((clock, sched, rep))
    return peers


async def test_local_appends_reach_peers_by_push_alone_without_the_debounce(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """In-process replicators (real clocks and schedulers): gossip partitioned away, its
    debounce and re-announce an hour long, so only the undebounced push of each local append
    (submit, claims, results alike) can carry events; they converge, both ways."""
    from p2p.scheduler.ops import TaskSpec, WorkflowTag

    cfg = NetworkConfig(reannounce_s=3600.0, announce_debounce_ms=3_600_000.0)
    peers = _replicator_pair(tmp_path, cfg, push=True, gossip_off=True)
    async with trio.open_nursery() as nursery:
        for _, _, rep in peers:
            await nursery.start(rep.run)
        for i in range(20):
            _, sched, _ = peers[i % 2]
            sched.submit(f"w{i}", [TaskSpec(model="m", input=f"t{i}")], 5, WorkflowTag.P2P_ELIGIBLE)
            if i % 3 == 0:
                await trio.sleep(0)
        with trio.fail_after(30):
            while len({c.get_hash() for c, _, _ in peers}) != 1 or any(len(s.state.workflows) != 20 for _, s, _ in peers):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    for _, _, rep in peers:
        st = rep.stats()
        assert st["heard_gossip"] == 0 and st["heard_push"] > 0 and st["gossip_announcements"] == 0, st
        assert st["synced_events"] >= 10, st


async def test_with_push_on_gossip_of_local_events_is_paced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Gossip open, push on and reaching every live peer: every append reaches the other peer
    by push at once, while gossip carries local events at most every
    ``push_gossip_interval_ms`` (each copy costs every receiver a decode). With push off, or a
    live peer push does not reach (only the mesh does, or it refused push), gossip is that
    peer's first path and goes at every burst."""
    from p2p.scheduler.ops import TaskSpec, WorkflowTag

    counts = {}
    for case in ("push reaches all", "a mesh-only peer", "push off"):
        cfg = NetworkConfig(reannounce_s=3600.0, push_gossip_interval_ms=60_000.0)
        others = ("12D3KooWMeshOnlyPeerMeshOnlyPeerMeshOnlyPeerMesh",) if case == "a mesh-only peer" else ()
        peers = _replicator_pair(tmp_path, cfg, push=case != "push off", gossip_off=False, tag=f"{len(counts)}-", others=others)
        async with trio.open_nursery() as nursery:
            for _, _, rep in peers:
                await nursery.start(rep.run)
            _, sched, _ = peers[0]
            for i in range(30):
                sched.submit(f"w{i}", [TaskSpec(model="m", input=f"t{i}")], 5, WorkflowTag.P2P_ELIGIBLE)
                await trio.sleep(0.02)  # a burst the gossip debounce (2 ms) would not coalesce
            with trio.fail_after(30):
                while len({c.get_hash() for c, _, _ in peers}) != 1 or any(len(s.state.workflows) != 30 for _, s, _ in peers):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        counts[case] = peers[0][2].stats()["gossip_announcements"]
        if case != "push off":
            assert peers[1][2].stats()["heard_push"] >= 1, peers[1][2].stats()
    # push reaching all: the first append's gossip goes at once, the next waits the interval (a minute)
    assert counts["push reaches all"] <= 1, counts
    assert counts["a mesh-only peer"] >= 10 and counts["push off"] >= 10, counts


# ------------------------------------------------------------------------ between processes

PUSH_ONLY = {"IPFS_ACCELERATE_NETWORK__GOSSIP_HEADS": "false"}


@pytest.fixture
def cluster_env() -> dict[str, str]:
    # re-announcements go by push as well; keep them rare so a late delivery is the push's own
    return {**PUSH_ONLY, "IPFS_ACCELERATE_NETWORK__REANNOUNCE_S": "30"}


async def _push_junk(attacker, addr: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Junk, an oversize frame, a non-announcement and forged announcements, each on a fresh
    push stream; returns what was written."""
    info = info_from_p2p_addr(Multiaddr(addr))
    forged_cid = cid_raw_of(b"not an event")
    payloads = dict(STREAM_JUNK)
    payloads["oversize-frame"] = encode_uvarint(2 << 20) + b"\x00" * 65536
    payloads["cbor-not-an-announcement"] = _frame(cbor2.dumps({"t": "want", "cids": [forged_cid]}))
    # well-formed announcements whose content is forged: a block that is not what its CID
    # says, another peer's name, heads nobody has; the clock must reject them, not the framing
    payloads["forged-blocks"] = _frame(encode(HeadsAnnouncement(
        peer="12D3KooWForgedForgedForgedForgedForgedForgedForged", heads=[forged_cid], events=1,
        blocks=[(forged_cid, b"\xa1\x61a\x01")])))
    payloads["forged-many"] = _frame(encode(HeadsAnnouncement(peer="x", heads=[forged_cid], events=7))) * 50
    sent = []
    for name, payload in payloads.items():
        try:
            with trio.fail_after(10):
                if not attacker.get_network().get_connections(info.peer_id):
                    await attacker.connect(info)
                stream = await attacker.new_stream(info.peer_id, [TProtocol(push_protocol(NetworkConfig().network))])
                try:
                    await stream.write(payload)
                    sent.append(name)
                    with trio.move_on_after(0.5):
                        while await stream.read(65536):
                            pass
                finally:
                    try:
                        await stream.reset()
                    except Exception:  # noqa: BLE001 - reset by the victim already
                        pass
        except Exception:  # noqa: BLE001 - the victim reset or refused it: fine
            pass
    return sent


def _frame(data: bytes) -> bytes:
    return encode_uvarint(len(data)) + data


def cid_raw_of(data: bytes) -> bytes:
    return cid_raw(block_cid(data))


def _stats(log: str) -> dict[str, int]:
    """The push counters of the node's 'replication stats' line (logged when it stops)."""
    lines = [ln for ln in log.splitlines() if "replication stats" in ln]
    assert lines, log[-3000:]
    out = {}
    for key in ("heard_push", "heard_gossip", "synced_events"):
        m = re.search(rf"{key}=(\d+)", lines[-1])
        assert m, lines[-1]
        out[key] = int(m.group(1))
    m = re.search(r"'received': (\d+)", lines[-1])
    assert m, lines[-1]
    out["received"] = int(m.group(1))
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_push_alone_replicates_and_a_hostile_pusher_changes_nothing(cluster: Cluster) -> None:
    n1 = cluster.start("n1", open=True)
    n2 = cluster.start("n2", bootstrap=[n1], open=True)
    await wait_peers(n1, [n2])
    await wait_peers(n2, [n1])

    async def submit(peer, name: str) -> str:  # type: ignore[no-untyped-def]
        tasks = [{"model": DEFAULT_MODEL, "input": f"{name} {i}"} for i in range(2)]
        return (await call(peer, "submit_workflow", name=name, tasks=tasks, tag="local-only"))["workflow_id"]

    # connected, synced: from here on only push can carry new heads (gossip heads are off)
    w1 = await submit(n1, "from-n1")
    await wait_known(n2, [w1], timeout=60)
    w2 = await submit(n2, "from-n2")
    await wait_known(n1, [w2], timeout=60)

    async with junk_host() as attacker:
        sent = await _push_junk(attacker, n1.addr)
        attacker_id = str(attacker.get_id())
    assert {"oversize-frame", "forged-blocks", "prefix+garbage-protobuf"} <= set(sent), sent
    info = await call(n1, "get_node_info")  # still serving
    assert n1.proc is not None and n1.proc.poll() is None, n1.log_text()[-4000:]

    # the honest peer is unaffected: push still carries its new work both ways
    w3 = await submit(n2, "after-junk-n2")
    await wait_known(n1, [w3], timeout=60)
    w4 = await submit(n1, "after-junk-n1")
    await wait_known(n2, [w4], timeout=60)
    assert (await call(n1, "get_node_info"))["clock"]["events"] >= info["clock"]["events"]

    log1 = n1.log_text()
    bad = [ln for ln in log1.splitlines() if "bad push frame" in ln and attacker_id in ln]
    assert len(bad) == 1, bad  # once per peer per minute, however many frames
    assert "Traceback" not in log1, log1[-4000:]
    cluster.stop_all()
    for peer in (n1, n2):
        st = _stats(peer.log_text())
        assert st["heard_gossip"] == 0, (peer.name, st)  # nothing came by gossip
        assert st["heard_push"] >= 2 and st["received"] >= 2, (peer.name, st)
        assert st["synced_events"] >= 2, (peer.name, st)
