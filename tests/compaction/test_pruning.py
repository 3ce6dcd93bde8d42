"""Pruning dead events and joining over pruned history (docs/compaction.md §5–§6), without
processes: real clocks (SQLite, Ed25519-signed events), real schedulers folding, the real
Replicator, BlockServer, Compactor, Pruner and DroppedAdopter, over an in-memory gossip hub and
DAGService, with an injected clock for time.

The story: a submitter's workflow runs on a worker; the submitter compacts it, both drop its
records and prune the events whose every op was about it (only once every live peer holds
them); a live workflow runs on top. A fresh peer then joins: it gets stubs where blocks were,
adopts the compacted workflow from the two peers' identical records and its snapshot, and
answers every field of every workflow as they do — before and after its own restart. A peer
that forges its stubs cannot get them adopted against the quorum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.clock import MerkleClock, codec
from p2p.clock.cids import block_cid, cid_from_bytes
from p2p.clock.stub import Stub, StubError, decode_stub
from p2p.compaction.compactor import Compactor
from p2p.compaction.expiry import ResultExpiry
from p2p.compaction.joining import DroppedAdopter
from p2p.compaction.pages import SnapshotPages, status_of
from p2p.compaction.pruner import Pruner
from p2p.config import NetworkConfig, SchedulerConfig
from p2p.identity import Identity
from p2p.peers import PeerCaps, PeerTable
from p2p.replication import BlockServer, MemoryHub, Replicator
from p2p.replication.dagservice import LocalDAGService
from p2p.scheduler import views
from p2p.scheduler.ops import TaskSpec, WorkflowTag
from p2p.scheduler.scheduler import Scheduler

MODEL = "m"
CHUNK = 2 << 20


class Peer:
    def __init__(self, tmp: Path, name: str, hub: MemoryHub, dag: LocalDAGService, now: list[float],
                 live: list[str] | None = None, quorum: int = 2) -> None:
        self.tmp, self.name, self.now = tmp, name, now
        self.ident = Identity.generate()
        self.id = self.ident.peer_id_str
        self.live = live if live is not None else []  # who this peer's liveness view holds
        self.clock = MerkleClock.open(tmp / f"{name}.sqlite", self.ident)
        self._build()
        cfg = NetworkConfig(reannounce_s=3600.0, announce_debounce_ms=0.0)
        self.adopter = DroppedAdopter(self, self.clock, dag)
        self.rep = Replicator(
            self.clock, hub.join(self.id), dag, peer_id=self.id, config=cfg, ingest=lambda evs: self.sched.ingest(evs),
            local_event=self.sched.local_event, take_unannounced=lambda: self.sched.take_unannounced(),
            connected_peers=lambda: [p for p in dag.servers if p != self.id], adopter=self.adopter,
            checkpoint_quorum=quorum,
        )
        dag.servers[self.id] = BlockServer(self.clock, self.rep.heads_raw, max_blocks_per_request=256,
                                           max_frame_bytes=8 << 20, dropped=self._records)

    def _build(self) -> None:
        me = PeerCaps(self.id, 1.0, frozenset([MODEL]))
        self.sched = Scheduler(self.clock, engine=None, peers=PeerTable(lambda: me, lease_s=30),  # type: ignore[arg-type]
                               config=SchedulerConfig())
        self.pruner = Pruner(self.sched, self.clock, self.id, live_peers=lambda: self.live, interval_s=0.0,
                             now=lambda: self.now[0])
        self.expiry = ResultExpiry(self.sched, self.clock, retention_s=100.0, wall=lambda: self.now[0])
        self.expiry.load()
        self.compactor = Compactor(self.sched, self.clock, self.id, retention_s=0.0, max_chunk_bytes=CHUNK,
                                   now=lambda: self.now[0], pruner=self.pruner, expiry=self.expiry)
        self.pages = SnapshotPages(lambda raw: self.clock.get_block(cid_from_bytes(raw)))

    # the adopter reads ``state`` and calls ``forget_workflow`` on what it is given as the scheduler
    @property
    def state(self) -> Any:
        return self.sched.state

    def forget_workflow(self, wid: str) -> None:
        self.sched.forget_workflow(wid)

    def _records(self, wids: list[str]) -> list[bytes]:
        dropped = self.sched.state.dropped
        return [dropped[w].encode() for w in wids if w in dropped]

    def restart(self) -> None:
        self.clock.close()
        self.clock = MerkleClock.open(self.tmp / f"{self.name}.sqlite", self.ident)
        self._build()
        self.sched.load()

    def submit(self, name: str, n: int) -> str:
        return self.sched.submit(name, [TaskSpec(model=MODEL, input=f"{name} {i}") for i in range(n)], 5,
                                 WorkflowTag.P2P_ELIGIBLE)

    def run(self, wid: str, index: int, block: bytes | None = None) -> None:
        """Claim, start and finish one task in one event (advertising first); ``block``: the
        result is that block of its own (a result too large to inline)."""
        if self.id not in self.sched.state.adverts:
            self.sched._after_local_append(self.clock.append([{"op": "peer.advertise", "capacity": 1e6, "models": [MODEL]}]))
        tid = f"{wid}/{index}"
        done: dict[str, Any] = {"op": "task.done", "task_id": tid, "attempt": 1}
        if block is None:
            done["result"] = {"v": index, "by": self.id}
        else:
            done["result_cid"] = self.clock.put_block(codec.decode(block))
        self.sched._after_local_append(self.clock.append([
            {"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": 1.0},
            {"op": "task.start", "task_id": tid, "attempt": 1}, done]))

    def block(self, cid: Any) -> dict[str, Any] | None:
        data = self.clock.get_block(cid)
        return None if data is None else codec.decode(data)

    def answers(self) -> dict[str, Any]:
        """Every field the tools show of every workflow (a dropped one through its snapshot)."""
        st = self.sched.state
        out: dict[str, Any] = {}
        for wid, wf in sorted(st.workflows.items()):
            out[wid] = {
                "status": status_of(st, wf, self.pages, include_results=True, offset=0, limit=1000, load_block=self.block),
                "page": status_of(st, wf, self.pages, include_results=True, offset=1, limit=2, load_block=self.block),
                "summary": views.workflow_summary(st, wf), "counts": st.counts(wf),
            }
        out["listing"] = [w.workflow_id for w in st.listed()]
        return out


async def settle(peers: list[Peer], timeout: float = 30.0) -> None:
    with trio.move_on_after(timeout):
        while (len({p.clock.get_hash() for p in peers}) != 1 or any(p.clock.orphan_count() for p in peers)
               or any(p.sched.state.events != len(p.clock) for p in peers)):
            await trio.sleep(0.01)
        return
    raise AssertionError([(p.name, p.clock.get_hash()[:8], p.clock.orphan_count(), p.sched.state.events, len(p.clock),
                           [str(c) for c in p.clock.missing()][:3]) for p in peers])


async def _pruned_pair(nursery: trio.Nursery, tmp_path: Path, hub: MemoryHub, dag: LocalDAGService,
                       now: list[float]) -> tuple[Peer, Peer, str, str]:
    """a submits, w runs; a compacts; both drop and prune; a live workflow runs on top."""
    a = Peer(tmp_path, "a", hub, dag, now)
    w = Peer(tmp_path, "w", hub, dag, now)
    for p in (a, w):
        await nursery.start(p.rep.run)
    a.live, w.live = [w.id], [a.id]
    wid = a.submit("corpus", 5)
    await settle([a, w])
    for i in range(5):
        w.run(wid, i)
    await settle([a, w])
    assert a.sched.state.workflow_status(a.sched.state.workflows[wid]).value == "completed"

    stranger = Identity.generate().peer_id_str  # live, but has written nothing: it may hold nothing
    a.live = [w.id, stranger]
    await a.compactor.step()
    assert wid in a.sched.state.dropped
    info = a.pruner.info()
    assert info["pruned_events"] == 0 and info["prune_held_back"] > 0 and info["prune_waiting_for"] == [stranger], info
    a.live = [w.id]
    now[0] += 1
    await a.compactor.step()  # a pass after the interval: w has written after a's submit, so it holds it
    assert a.pruner.info()["pruned_events"] > 0
    await settle([a, w])
    await w.compactor.step()  # verifies a's compaction, drops, prunes
    assert wid in w.sched.state.dropped and w.compactor.info()["verified"] == 1
    live = a.submit("live", 2)
    await settle([a, w])
    w.run(live, 0)
    await settle([a, w])
    for p in (a, w):  # the compact op's event is no longer a head: pruned too
        now[0] += 1
        await p.compactor.step()
    return a, w, wid, live


async def test_a_fresh_peer_joins_over_pruned_history_and_answers_alike(tmp_path: Path) -> None:
    now = [1000.0]
    hub, dag = MemoryHub(), LocalDAGService({})
    async with trio.open_nursery() as nursery:
        a, w, wid, live = await _pruned_pair(nursery, tmp_path, hub, dag, now)
        for p in (a, w):
            heads = {bytes(h) for h in p.clock.heads()}
            stubs = [ev for ev in p.clock.events() if ev.vv is not None]
            assert stubs and all(p.clock.get_block(ev.cid) is None for ev in stubs)
            assert {bytes(ev.cid) for ev in stubs}.isdisjoint(heads)
            assert p.pruner.info()["stubs_held"] == len(stubs)
        expected = a.answers()
        assert w.answers() == expected and wid in expected and live in expected

        j = Peer(tmp_path, "j", hub, dag, now)
        await nursery.start(j.rep.run)
        j.rep.peer_connected(a.id)
        await settle([a, w, j])
        with trio.fail_after(10):
            while not j.rep.refresh_ready():
                await trio.sleep(0.01)
        assert j.rep.stubs_adopted > 0 and j.rep.stubs_refused == 0
        assert j.adopter.info()["adopted"] == 1 and j.adopter.info()["refused"] == 0
        assert wid in j.sched.state.dropped and not any(t.startswith(wid + "/") for t in j.sched.state.tasks)
        assert j.answers() == expected
        # j never held a pruned block: its clock has stubs where a has them
        j_stubs = {bytes(ev.cid) for ev in j.clock.events() if ev.vv is not None}
        a_stubs = {bytes(ev.cid) for ev in a.clock.events() if ev.vv is not None}
        assert j_stubs and j_stubs <= a_stubs | {bytes(ev.cid) for ev in w.clock.events() if ev.vv is not None}
        assert all(j.clock.get_block(cid_from_bytes(c)) is None for c in j_stubs)

        # work goes on over the joined history: a new workflow, run by j, reaches everyone
        more = a.submit("more", 1)
        await settle([a, w, j])
        j.run(more, 0)
        await settle([a, w, j])
        expected = a.answers()
        assert j.answers() == expected == w.answers()
        nursery.cancel_scope.cancel()

    j.restart()  # the stubs replay (no ops), the adopted workflow is filed first
    assert j.answers() == expected
    assert j.sched.state.events == len(j.clock)
    a.restart()
    assert a.answers() == expected


class ForgingDAG(LocalDAGService):
    """Serves the stubs of the peers in ``forgers`` with a version vector that names one more
    author: well-formed stubs, signed by nobody, that differ from the honest peers' bytes."""

    def __init__(self, servers: dict[str, BlockServer]) -> None:
        super().__init__(servers)
        self.forgers: set[str] = set()

    async def get_blocks_and_stubs(self, peer: str, cids: list[bytes], ancestors: int = 0) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        blocks, stubs = await super().get_blocks_and_stubs(peer, cids, ancestors)
        if peer in self.forgers:
            forged = []
            for data in stubs:
                s = decode_stub(data)
                forged.append(Stub(s.cid, s.author, s.seq, s.height, s.parents, {**s.vv, "mallory": 1}, s.about).encode())
            stubs = forged
        return blocks, stubs


@pytest.mark.parametrize("quorum", [2, 1])
async def test_stubs_one_peer_forges_are_not_adopted_against_the_quorum(tmp_path: Path, quorum: int) -> None:
    """j asks a, whose stubs w contradicts (forged). With a quorum of 2 nothing a pruned is
    adopted — j holds none of the history above the stubs, and claims nothing on its account;
    with a quorum of 1 j trusts the first peer it asked, a, which is honest here."""
    now = [1000.0]
    hub, dag = MemoryHub(), ForgingDAG({})
    async with trio.open_nursery() as nursery:
        a, w, wid, live = await _pruned_pair(nursery, tmp_path, hub, dag, now)
        expected = a.answers()
        dag.forgers.add(w.id)
        j = Peer(tmp_path, "j", hub, dag, now, quorum=quorum)
        await nursery.start(j.rep.run)
        j.rep.peer_connected(a.id)
        if quorum == 2:
            with trio.fail_after(10):
                while not j.rep.stubs_refused:
                    await trio.sleep(0.01)
            await trio.sleep(0.2)
            assert j.rep.stubs_adopted == 0 and j.adopter.info()["adopted"] == 0
            assert wid not in j.sched.state.workflows and live not in j.sched.state.workflows
            assert j.clock.orphan_count() > 0  # a's events above the stubs wait, unapplied
        else:
            await settle([a, w, j])
            assert j.rep.stubs_refused == 0 and j.answers() == expected
        nursery.cancel_scope.cancel()


async def test_a_peer_away_while_history_was_pruned_comes_back_to_the_same_answers(tmp_path: Path) -> None:
    """m saw the corpus submitted, then went away (not live: it holds back no pruning), ran one
    of its tasks while away, and comes back after a and w pruned: it adopts the compacted
    workflow over the part it had folded, its late result counts nowhere, and every peer
    answers alike."""
    now = [1000.0]
    hub, dag = MemoryHub(), LocalDAGService({})
    async with trio.open_nursery() as nursery:
        a = Peer(tmp_path, "a", hub, dag, now)
        w = Peer(tmp_path, "w", hub, dag, now)
        m = Peer(tmp_path, "m", hub, dag, now)
        for p in (a, w, m):
            await nursery.start(p.rep.run)
        a.live, w.live = [w.id], [a.id]
        wid = a.submit("corpus", 3)
        await settle([a, w, m])
        hub.partitioned.add(m.id)
        dag.down.add(m.id)
        m.run(wid, 0)  # while away: concurrent with everything below
        for i in range(3):
            w.run(wid, i)
        await settle([a, w])
        await a.compactor.step()
        await settle([a, w])
        await w.compactor.step()
        live = a.submit("live", 1)
        await settle([a, w])
        w.run(live, 0)
        await settle([a, w])
        for p in (a, w):
            now[0] += 1
            await p.compactor.step()
            assert p.pruner.info()["stubs_held"] > 0
        assert m.sched.state.workflows[wid].compacted is None and wid not in m.sched.state.dropped
        hub.partitioned.clear()
        dag.down.clear()
        m.rep.peer_connected(a.id)
        a.rep.peer_connected(m.id)
        w.rep.peer_connected(m.id)
        await settle([a, w, m])
        # (the live workflow finished too, and with a retention of 0 it was compacted as well)
        assert {wid, live} <= set(m.sched.state.dropped) and m.adopter.info()["adopted"] == 2
        expected = a.answers()
        assert m.answers() == expected == w.answers()
        assert expected[wid]["status"]["tasks"][0]["peer"] == w.id  # m's late run counts nowhere
        nursery.cancel_scope.cancel()


def test_a_stub_is_checked_field_by_field(tmp_path: Path) -> None:
    """Malformed stubs are refused with the reason; a stub whose height is not its parents' + 1
    is rejected by the clock and changes nothing."""
    ident = Identity.generate()
    clock = MerkleClock.open(tmp_path / "c.sqlite", ident)
    ev = clock.append([{"op": "peer.advertise", "capacity": 1.0, "models": [MODEL]}])
    other = block_cid(b"x")
    good = Stub(other, ident.peer_id_str, 2, 1, (ev.cid,), {ident.peer_id_str: 2}, ("w",))
    assert decode_stub(good.encode()) == good
    for bad, why in [
        (Stub(other, ident.peer_id_str, 2, 1, (ev.cid,), {ident.peer_id_str: 1}, ()), "own author"),
        (Stub(other, ident.peer_id_str, 2, 0, (ev.cid,), {ident.peer_id_str: 2}, ()), "height is 0 exactly"),
        (Stub(other, ident.peer_id_str, 0, 1, (ev.cid,), {ident.peer_id_str: 0}, ()), "seq >= 1"),
    ]:
        with pytest.raises(StubError, match=why):
            decode_stub(bad.encode())
    with pytest.raises(StubError, match="not DAG-CBOR"):
        decode_stub(b"\xff\x00")
    wrong = Stub(other, ident.peer_id_str, 2, 5, (ev.cid,), {ident.peer_id_str: 2}, ("w",))
    result = clock.add_stubs([wrong])
    assert result.rejected and "stub height 5" in result.rejected[0][1]
    assert not clock.has_event(other) and len(clock) == 1
    result = clock.add_stubs([good])
    assert [bytes(e.cid) for e in result.applied] == [bytes(other)] and clock.stub(other) == good.encode()
    assert clock.get_block(other) is None and clock.heads() == (other,)
    clock.close()
    clock = MerkleClock.open(tmp_path / "c.sqlite", ident)  # read back: the stub replays, no ops
    got = list(clock.events())
    assert [bytes(e.cid) for e in got] == [bytes(ev.cid), bytes(other)] and got[1].ops == () and got[1].vv == good.vv
    clock.close()


async def test_result_blocks_expire_after_retention_but_one_a_live_workflow_names_stays(tmp_path: Path) -> None:
    """results.retention_s after a compacted workflow was dropped, its result blocks are deleted:
    its page shows result_cid without the result (and says the results expired) — except a
    block a live workflow names too (content-addressed: shared). A restart remembers."""
    now = [1000.0]
    hub, dag = MemoryHub(), LocalDAGService({})
    shared, own = codec.encode({"v": "shared" * 200}), codec.encode({"v": "own" * 200})
    async with trio.open_nursery() as nursery:
        a = Peer(tmp_path, "a", hub, dag, now)
        await nursery.start(a.rep.run)
        done, live = a.submit("done", 2), a.submit("live", 2)
        a.run(done, 0, shared)
        a.run(done, 1, own)
        a.run(live, 0, shared)  # live keeps running: task 1 is never done
        await a.compactor.step()
        assert done in a.sched.state.dropped and live not in a.sched.state.dropped
        before = a.answers()[done]["status"]
        assert [t.get("result") for t in before["tasks"]] == [{"v": "shared" * 200}, {"v": "own" * 200}]
        now[0] += 99
        await a.compactor.step()
        assert a.expiry.info()["results_expired"] == 0  # not yet
        now[0] += 2
        await a.compactor.step()
        info = a.expiry.info()
        assert info["results_expired"] == 1 and info["result_blocks_expired"] == 1, info
        after = a.answers()[done]["status"]
        assert after["compacted"]["results_expired"] is True
        assert after["tasks"][0]["result"] == {"v": "shared" * 200}  # the live workflow names it: kept
        assert "result" not in after["tasks"][1] and after["tasks"][1]["result_cid"] == str(block_cid(own))
        assert a.answers()[live]["status"]["tasks"][0]["result"] == {"v": "shared" * 200}
        nursery.cancel_scope.cancel()
    a.restart()
    a.expiry.load()
    assert a.answers()[done]["status"] == after
