"""Replication without processes: real clocks (SQLite, signatures), real schedulers folding, the
real Replicator and BlockServer, over an in-memory Broadcaster and DAGService.

What is checked: peers converge on announcements alone; a deep catch-up proceeds round trip
after round trip (not one reply per announcement or heartbeat); a joiner is not caught up —
so it claims nothing — until it holds the heads its peer had when it connected; a partitioned
peer converges after the heal; a peer serving garbage blocks changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from p2p.clock import MerkleClock
from p2p.config import NetworkConfig, SchedulerConfig
from p2p.identity import Identity
from p2p.peers import PeerCaps, PeerTable
from p2p.replication import BlockServer, MemoryHub, Replicator
from p2p.replication.dagservice import LocalDAGService
from p2p.scheduler.ops import TaskSpec, WorkflowTag
from p2p.scheduler.scheduler import Scheduler

MODEL = "m"


class CountingDAG(LocalDAGService):
    def __init__(self, servers: dict[str, BlockServer]) -> None:
        super().__init__(servers)
        self.requests: list[tuple[str, int, int]] = []  # (peer, cids asked, ancestors)

    async def get_blocks_and_stubs(self, peer: str, cids: list[bytes], ancestors: int = 0) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        self.requests.append((peer, len(cids), ancestors))
        return await super().get_blocks_and_stubs(peer, cids, ancestors)


class Peer:
    def __init__(self, tmp: Path, name: str, hub: MemoryHub, dag: LocalDAGService, rep: dict[str, Any] | None = None,
                 **net: Any) -> None:
        self.ident = Identity.generate()
        self.id = self.ident.peer_id_str
        self.clock = MerkleClock.open(tmp / f"{name}.sqlite", self.ident)
        me = PeerCaps(self.id, 1.0, frozenset([MODEL]))
        self.sched = Scheduler(self.clock, engine=None, peers=PeerTable(lambda: me, lease_s=30),  # type: ignore[arg-type]
                               config=SchedulerConfig())
        cfg = NetworkConfig(**({"reannounce_s": 3600.0, "announce_debounce_ms": 0.0} | net))
        self.rep = Replicator(
            self.clock, hub.join(self.id), dag, peer_id=self.id, config=cfg, ingest=self.sched.ingest,
            local_event=self.sched.local_event, take_unannounced=self.sched.take_unannounced,
            connected_peers=lambda: [p for p in dag.servers if p != self.id], **(rep or {}),
        )
        dag.servers[self.id] = BlockServer(self.clock, self.rep.heads_raw, max_blocks_per_request=256,
                                           max_frame_bytes=8 << 20)

    def submit(self, i: int) -> str:
        return self.sched.submit(f"w{i}", [TaskSpec(model=MODEL, input=f"text {i}")], 5, WorkflowTag.P2P_ELIGIBLE)


async def settle(peers: list[Peer], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while (len({p.clock.get_hash() for p in peers}) != 1 or any(p.clock.orphan_count() for p in peers)
               or any(p.sched.state.events != len(p.clock) for p in peers)):
            await trio.sleep(0.01)


async def test_peers_converge_on_announcements(tmp_path: Path) -> None:
    hub, dag = MemoryHub(), CountingDAG({})
    peers = [Peer(tmp_path, n, hub, dag) for n in "abc"]
    async with trio.open_nursery() as nursery:
        for p in peers:
            await nursery.start(p.rep.run)
        for i in range(30):
            peers[i % 3].submit(i)
            if i % 7 == 0:
                await trio.sleep(0)
        await settle(peers)
        nursery.cancel_scope.cancel()
    for p in peers:
        assert len(p.sched.state.workflows) == 30
        assert p.clock.orphan_count() == 0


async def test_a_deep_catch_up_goes_round_trip_after_round_trip_and_gates_claims(tmp_path: Path) -> None:
    hub, dag = MemoryHub(), CountingDAG({})
    old = Peer(tmp_path, "old", hub, dag)
    for i in range(5000):  # 5,000 events: more than two catch-up replies' worth
        old.submit(i)
    joiner = Peer(tmp_path, "joiner", hub, dag)
    ready: list[bool] = []
    joiner.rep._on_ready = lambda: ready.append(joiner.rep.caught_up())
    async with trio.open_nursery() as nursery:
        await nursery.start(old.rep.run)
        await nursery.start(joiner.rep.run)
        assert joiner.rep.caught_up()
        joiner.rep.peer_connected(old.id)  # no announcement, no heartbeat follows: only the walk
        await trio.sleep(0)
        assert not joiner.rep.caught_up(), "a joiner must not claim before it holds its peer's heads"
        await settle([old, joiner], timeout=300)
        with trio.fail_after(10):
            while not joiner.rep.caught_up():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(joiner.sched.state.workflows) == 5000
    deep = [r for r in dag.requests if r[0] == old.id]
    assert 2 <= len(deep) <= 8, deep  # ~5000 / 2048 bulk replies, each asked for at once
    assert ready == [True]


async def test_a_partitioned_peer_converges_after_the_heal(tmp_path: Path) -> None:
    hub, dag = MemoryHub(), CountingDAG({})
    a, b = Peer(tmp_path, "a", hub, dag), Peer(tmp_path, "b", hub, dag)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.rep.run)
        await nursery.start(b.rep.run)
        hub.partitioned.add(b.id)
        dag.down.add(b.id)
        for i in range(20):
            a.submit(i)
            b.submit(100 + i)
        await trio.sleep(0.05)
        assert a.clock.get_hash() != b.clock.get_hash()
        hub.partitioned.clear()
        dag.down.clear()
        a.rep.peer_connected(b.id)  # the reconnection
        b.rep.peer_connected(a.id)
        await settle([a, b])
        nursery.cancel_scope.cancel()
    assert len(a.sched.state.workflows) == len(b.sched.state.workflows) == 40


async def test_garbage_blocks_change_nothing(tmp_path: Path) -> None:
    hub, dag = MemoryHub(), CountingDAG({})
    a = Peer(tmp_path, "a", hub, dag)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.rep.run)
        before = a.clock.get_hash()
        forged = [(b"\x01q\x12 " + bytes(32), b"\xa1aa\x01"), (b"junk", b"x" * 100)]
        missing = await a.rep._merge("mallory", forged)
        assert a.clock.get_hash() == before and not missing and len(a.clock) == 0
        nursery.cancel_scope.cancel()


async def test_a_node_that_just_started_waits_for_its_first_peer_and_its_heartbeat(tmp_path: Path) -> None:
    """Right after start a node knows nobody: claiming then would rank only itself and take
    every queued task (a restarted soak worker re-ran 1,682 tasks that way). It waits for its
    first peer's heads *and* heartbeat, or for the startup wait with nobody around."""
    now = [100.0]
    known: set[str] = set()
    hub, dag = MemoryHub(), CountingDAG({})
    old = Peer(tmp_path, "old", hub, dag)
    old.submit(1)
    new = Peer(tmp_path, "new", hub, dag, rep={"now": lambda: now[0], "startup_wait_s": 4.0,
                                               "known_peer": lambda p: p in known})
    alone = Peer(tmp_path, "alone", MemoryHub(), CountingDAG({}), rep={"now": lambda: now[0], "startup_wait_s": 4.0})
    async with trio.open_nursery() as nursery:
        for p in (old, new, alone):
            await nursery.start(p.rep.run)
        assert not new.rep.caught_up() and not alone.rep.caught_up()
        now[0] += 4.5
        assert alone.rep.refresh_ready()  # nobody came: it works alone
        now[0] -= 4.5
        new.rep.peer_connected(old.id)
        await settle([old, new])
        assert not new.rep.refresh_ready(), "heads held, but no heartbeat heard: its liveness view is incomplete"
        known.add(old.id)
        assert new.rep.refresh_ready() and new.rep.caught_up()
        nursery.cancel_scope.cancel()


class StalledDAG(CountingDAG):
    """A peer that never answers block requests (a hostile or hung peer)."""

    async def get_blocks_and_stubs(self, peer: str, cids: list[bytes], ancestors: int = 0) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        self.requests.append((peer, len(cids), ancestors))
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_heads_announced_during_a_stalled_sync_are_bounded(tmp_path: Path) -> None:
    """A peer that stalls its reply and keeps announcing fresh random heads cannot grow what we
    hold for it: its latest heads replace the earlier ones, at most MAX_HEADS of them."""
    import os

    from p2p.clock.cids import block_cid, cid_raw
    from p2p.replication.replicator import MAX_HEADS

    hub, dag = MemoryHub(), StalledDAG({})
    a = Peer(tmp_path, "a", hub, dag)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.rep.run)
        for _ in range(20):
            a.rep.want("mallory", [cid_raw(block_cid(os.urandom(16))) for _ in range(MAX_HEADS + 100)])
            await trio.sleep(0)
        assert len(dag.requests) == 1  # one sync in flight, stalled
        assert len(a.rep._syncing["mallory"]) <= MAX_HEADS
        nursery.cancel_scope.cancel()


class OtherNetworkDAG(CountingDAG):
    """Peers in ``foreign`` run another network under the same key: they refuse the blocks
    protocol (its id carries the network name), as a real host does at negotiation."""

    def __init__(self, servers: dict[str, BlockServer], foreign: set[str]) -> None:
        super().__init__(servers)
        self.foreign = foreign
        self.refused = 0

    async def get_heads(self, peer: str) -> list[bytes]:
        if peer in self.foreign:
            from p2p.net.errors import ProtocolRefused

            self.refused += 1
            raise ProtocolRefused(f"cannot open /ipfs-accelerate/blue/blocks/1.0.0 to {peer}: protocol not supported")
        return await super().get_heads(peer)


async def test_a_peer_of_another_network_neither_gates_claims_nor_ends_the_startup_wait(tmp_path: Path) -> None:
    """A shared bootstrap or relay node of another network connects: its heads request is
    refused, so no gate waits for a heartbeat it will never send, and the startup wait (for a
    peer of *this* network) goes on as if it had not come."""
    now = [100.0]
    hub, dag = MemoryHub(), OtherNetworkDAG({}, {"red"})
    new = Peer(tmp_path, "new", hub, dag, rep={"now": lambda: now[0], "startup_wait_s": 4.0,
                                               "known_peer": lambda p: False})
    async with trio.open_nursery() as nursery:
        await nursery.start(new.rep.run)
        assert not new.rep.refresh_ready()  # the startup wait
        new.rep.peer_connected("red")
        with trio.fail_after(10):
            while dag.refused == 0:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert "red" not in new.rep._gates, new.rep._gates  # nothing waits for red
        assert not new.rep.refresh_ready(), "red's connection ended the startup wait"
        now[0] += 4.5
        assert new.rep.refresh_ready()  # the startup wait ends on time, red or not
        nursery.cancel_scope.cancel()
