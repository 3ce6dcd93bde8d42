"""The compactor between peers, without processes: real clocks (SQLite, Ed25519-signed events),
real schedulers folding, events exchanged as blocks the way replication delivers them, and an
injected clock for time (a month passes in a test).

One story, step by step: a submitter's workflow runs on a worker; a third peer goes offline and,
while away, writes a late (higher-scoring) result for it; after ``retention_s`` the submitter
compacts; the worker and a late joiner verify the snapshot; the offline peer comes back a month
later, and its late result counts nowhere — every peer, the returning one included, answers
every field alike. A hostile submitter's compaction naming a forged snapshot is caught, and
changes no answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2p.clock import MerkleClock, codec
from p2p.clock.cids import block_cid, cid_from_bytes
from p2p.compaction.pages import SnapshotPages, status_of
from p2p.compaction.compactor import Compactor
from p2p.compaction.snapshot import build_snapshot, decode_snapshot
from p2p.config import SchedulerConfig
from p2p.identity import Identity
from p2p.peers import PeerCaps, PeerTable
from p2p.scheduler import views
from p2p.scheduler.ops import TaskSpec, WorkflowTag
from p2p.scheduler.scheduler import Scheduler

MODEL = "m"
RETENTION_S = 3600.0
DAY = 86_400.0
CHUNK = 2 << 20


class Peer:
    def __init__(self, tmp: Path, name: str, now: list[float]) -> None:
        self.name = name
        self.ident = Identity.generate()
        self.id = self.ident.peer_id_str
        self.clock = MerkleClock.open(tmp / f"{name}.sqlite", self.ident)
        me = PeerCaps(self.id, 1.0, frozenset([MODEL]))
        self.sched = Scheduler(self.clock, engine=None, peers=PeerTable(lambda: me, lease_s=30),  # type: ignore[arg-type]
                               config=SchedulerConfig())
        self.compactor = Compactor(self.sched, self.clock, self.id, retention_s=RETENTION_S, max_chunk_bytes=CHUNK,
                                   now=lambda: now[0])
        self.pages = SnapshotPages(lambda raw: self.clock.get_block(cid_from_bytes(raw)))

    def take(self, *others: "Peer") -> None:
        """Receive every event the others hold (what replication delivers)."""
        for other in others:
            self.clock.add_blocks([(ev.cid, ev.data) for ev in other.clock.events()])

    def run(self, wid: str, index: int, capacity: float = 1.0, result: Any = None) -> None:
        """Claim, start and finish one task in one event of this peer (advertising first)."""
        if not any(op.get("op") == "peer.advertise" for ev in self.clock.events() if ev.author == self.id for op in ev.ops):
            self.clock.append([{"op": "peer.advertise", "capacity": 1e6, "models": [MODEL]}])
        tid = f"{wid}/{index}"
        self.clock.append([{"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": capacity},
                           {"op": "task.start", "task_id": tid, "attempt": 1},
                           {"op": "task.done", "task_id": tid, "attempt": 1, "result": result or {"v": index, "by": self.id}}])

    def answer(self, wid: str) -> dict[str, Any]:
        state = self.sched.state
        return status_of(state, state.workflows[wid], self.pages, include_results=True, offset=0, limit=100,
                         load_block=lambda c: None)

    def submit(self, name: str, n: int) -> str:
        return self.sched.submit(name, [TaskSpec(model=MODEL, input=f"{name} {i}") for i in range(n)], 5,
                                 WorkflowTag.P2P_ELIGIBLE)


async def test_compact_verify_join_and_a_month_offline_peer(tmp_path: Path) -> None:
    now = [1000.0]
    a, b, m, j = (Peer(tmp_path, n, now) for n in "abmj")
    wid = a.submit("corpus", 3)
    for p in (b, m):
        p.take(a)
    # m goes offline having seen only the submit and, while away, runs task 0 with a claim that
    # outscores b's: concurrent with everything b does
    m.run(wid, 0, capacity=1e6, result={"v": "late"})
    for i in range(3):
        b.run(wid, i)
    a.take(b)
    assert a.answer(wid)["state"] == "completed"
    uncompacted = Peer(tmp_path, "x", now)  # what every peer would answer without compaction
    uncompacted.take(a, b, m)
    assert uncompacted.answer(wid)["tasks"][0]["peer"] == m.id  # m's late claim outscores b's

    await a.compactor.step()  # finished: the retention clock starts
    assert a.compactor.info()["waiting"] == 1 and a.compactor.info()["written"] == 0
    now[0] += RETENTION_S - 1
    await a.compactor.step()
    assert a.compactor.info()["written"] == 0  # not yet
    before = a.answer(wid)
    now[0] += 2
    await a.compactor.step()
    info = a.compactor.info()
    assert info["written"] == 1 and info["compacted"] == 1 and info["waiting"] == 0, info
    wf = a.sched.state.workflows[wid]
    assert wf.compacted is not None and wf.compacted.where.who == a.id
    after = a.answer(wid)
    assert {k: v for k, v in after.items() if k != "compacted"} == {k: v for k, v in before.items() if k != "compacted"}
    assert after["compacted"] == {"snapshot": str(wf.compacted.snapshot), "by": a.id, "results_expired": False}
    # the snapshot's blocks are in a's clock (served over the blocks protocol), and read back
    root = a.clock.get_block(wf.compacted.snapshot)
    head = decode_snapshot(root, [a.clock.get_block(c) for c in codec.decode(root)["chunks"]])
    assert [t["result"] for t in head["tasks"]] == [{"v": i, "by": b.id} for i in range(3)]

    # b and a late joiner verify it
    b.take(a)
    j.take(a)
    for p in (b, j):
        await p.compactor.step()
        assert p.compactor.info()["verified"] == 1 and p.compactor.info()["forged"] == {}, p.compactor.info()
        assert p.answer(wid) == after

    # a month later m comes back: its late result reaches everyone, and everything reaches m
    now[0] += 30 * DAY
    for p in (a, b, j):
        p.take(m)
    m.take(a, b, j)
    for p in (a, b, j, m):
        await p.compactor.step()
        assert p.answer(wid) == after, p.id  # the late result counts nowhere, m included
        assert p.answer(wid)["tasks"][0]["peer"] == b.id
    # m's claim, start and result came after the compaction to a, b and j, which had verified it
    # and dropped the workflow's records: skipped; m had folded its own before the compaction
    # reached it (the counts depend on arrival; the answers do not)
    assert [p.sched.state.dropped_ops for p in (a, b, j, m)] == [3, 3, 3, 0]
    assert m.compactor.info()["verified"] == 1
    assert len({p.clock.get_hash() for p in (a, b, j, m)}) == 1
    # every peer verified it, so every peer dropped its records: no task of it is held
    for p in (a, b, j, m):
        assert wid in p.sched.state.dropped and not any(t.startswith(wid) for t in p.sched.state.tasks), p.id
        assert p.compactor.info()["dropped"] == 1

    # a restart files the dropped workflow first and skips every op about it
    for p in (a, m):
        p.clock.close()
        p.clock = MerkleClock.open(tmp_path / f"{p.name}.sqlite", p.ident)
        p.sched = Scheduler(p.clock, engine=None, peers=PeerTable(lambda: PeerCaps(p.id, 1.0, frozenset([MODEL])), lease_s=30),  # type: ignore[arg-type]
                            config=SchedulerConfig())
        p.pages = SnapshotPages(lambda raw, c=p.clock: c.get_block(cid_from_bytes(raw)))
        p.sched.load()
        st = p.sched.state
        assert wid in st.dropped and not any(t.startswith(wid) for t in st.tasks)
        assert st.dropped_ops >= 7, st.dropped_ops  # submit's tasks' claims, starts, results, compact op...
        assert p.answer(wid) == after, p.id
        assert views.workflow_summary(st, st.workflows[wid]) == {k: v for k, v in after.items()
                                                                  if k not in ("offset", "limit", "tasks", "has_more")}
        assert [w["workflow_id"] for w in map(lambda w: views.workflow_summary(st, w), st.listed())] == [wid]
        assert st.recount(st.workflows[wid]) == st.counts(st.workflows[wid])
        # a page of one task reads the chunk it covers
        page = status_of(st, st.workflows[wid], p.pages, include_results=True, offset=1, limit=1, load_block=lambda c: None)
        assert page["tasks"] == after["tasks"][1:2] and page["has_more"] is True


def _run_by_b(tmp_path: Path, name: str) -> tuple[Peer, Peer, str]:
    """A submitter (``name``) whose 2-task workflow ``b`` ran; both hold every event."""
    now = [1000.0]
    sub, b = Peer(tmp_path, name, now), Peer(tmp_path, "b", now)
    wid = sub.submit(name, 2)
    b.take(sub)
    for i in range(2):
        b.run(wid, i)
    sub.take(b)
    return sub, b, wid


async def test_a_forged_snapshot_is_caught_and_changes_no_answer(tmp_path: Path) -> None:
    h, b, wid = _run_by_b(tmp_path, "h")
    honest = build_snapshot(h.sched.state, wid, max_chunk_bytes=CHUNK)
    h.sched.compact(wid, block_cid(b"a summary that claims other results"))  # the hostile submitter
    b.take(h)
    await b.compactor.step()
    info = b.compactor.info()
    assert info["forged"] == {h.id: 1} and info["verified"] == 0 and info["compacted"] == 1, info
    assert info["dropped"] == 0 and wid not in b.sched.state.dropped  # a forged snapshot frees nothing
    # the fold's answer is the cut's, whatever the op names: the honest snapshot's content
    assert build_snapshot(b.sched.state, wid, max_chunk_bytes=CHUNK).root_cid == honest.root_cid
    await b.compactor.step()
    assert b.compactor.info()["forged"] == {h.id: 1}  # checked once per compaction in force


async def test_a_workflow_touched_while_its_snapshot_is_built_is_compacted_later(tmp_path: Path, monkeypatch: Any) -> None:
    """An event about the workflow folded while the snapshot was built (it yields to the loop
    between slices): the snapshot would not be the cut's, so it is dropped and built again on
    the next look; after MAX_RETRIES in a row (a peer that keeps writing junk about it) it is
    built without yielding, so no peer can keep a workflow from being compacted."""
    import p2p.compaction.compactor as compactor_mod

    a, b, wid = _run_by_b(tmp_path, "a")
    a.compactor.retention_s = 0
    real = compactor_mod.build_snapshot_async
    touched = []

    async def build_then_touch(*args: Any, **kw: Any) -> Any:
        snap = await real(*args, **kw)
        # an op on it arrives meanwhile, every time (a peer's junk start on a done task)
        b.clock.append([{"op": "task.start", "task_id": f"{wid}/0", "attempt": 1 + len(touched)}])
        a.take(b)
        touched.append(1)
        return snap

    monkeypatch.setattr(compactor_mod, "build_snapshot_async", build_then_touch)
    for k in range(compactor_mod.MAX_RETRIES):
        await a.compactor.step()
        assert a.compactor.stats.retried == k + 1 and a.compactor.info()["written"] == 0
    await a.compactor.step()  # then built without yielding: nothing can move it meanwhile
    assert len(touched) == compactor_mod.MAX_RETRIES
    assert a.compactor.info()["written"] == 1 and a.sched.state.workflows[wid].compacted is not None
    assert a.answer(wid)["state"] == "completed"


async def test_records_stay_until_every_result_block_they_name_is_here(tmp_path: Path) -> None:
    """A result stored as its own block that has not reached this peer yet: while the records
    stay the node fetches it (Node._missing_result_blocks); dropped, nothing would. So the drop
    waits for it, and the snapshot's answers then carry the result itself."""
    now = [1000.0]
    a, b = Peer(tmp_path, "a", now), Peer(tmp_path, "b", now)
    wid = a.submit("blocks", 2)
    b.take(a)
    b.clock.append([{"op": "peer.advertise", "capacity": 1e6, "models": [MODEL]}])
    big = b.clock.put_block({"embedding": [0.5] * 8})
    for i in range(2):
        tid = f"{wid}/{i}"
        done: dict[str, Any] = {"op": "task.done", "task_id": tid, "attempt": 1}
        done.update({"result_cid": big} if i == 0 else {"result": {"v": i}})
        b.clock.append([{"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": 1.0},
                        {"op": "task.start", "task_id": tid, "attempt": 1}, done])
    a.take(b)  # the events, not the result block
    assert not a.clock.has(big)
    a.compactor.retention_s = 0
    await a.compactor.step()
    info = a.compactor.info()
    assert info["written"] == 1 and info["dropped"] == 0, info  # compacted; records kept
    assert wid not in a.sched.state.dropped and f"{wid}/0" in a.sched.state.tasks
    a.clock.add_raw_block(big, b.clock.get_block(big))
    await a.compactor.step()
    assert a.compactor.info()["dropped"] == 1 and wid in a.sched.state.dropped
    loaded = lambda c: codec.decode(a.clock.get_block(c))  # noqa: E731
    page = status_of(a.sched.state, a.sched.state.workflows[wid], a.pages, include_results=True, offset=0, limit=2,
                     load_block=loaded)
    assert page["tasks"][0]["result"] == {"embedding": [0.5] * 8} and page["tasks"][1]["result"] == {"v": 1}


async def test_its_own_compaction_read_back_after_a_restart_is_verified_and_dropped(tmp_path: Path) -> None:
    """A compaction this node wrote without dropping (a crash before the drop was recorded, a
    version that did not drop, or ``drop_compacted`` off then on): after a restart it is rebuilt
    and compared like a peer's, and dropped."""
    a, b, wid = _run_by_b(tmp_path, "a")
    a.compactor.retention_s = 0
    a.compactor.drop = False
    await a.compactor.step()
    assert a.compactor.info()["written"] == 1 and wid not in a.sched.state.dropped
    a.clock.close()
    a.clock = MerkleClock.open(tmp_path / "a.sqlite", a.ident)
    a.sched = Scheduler(a.clock, engine=None, peers=PeerTable(lambda: PeerCaps(a.id, 1.0, frozenset([MODEL])), lease_s=30),  # type: ignore[arg-type]
                        config=SchedulerConfig())
    a.sched.load()
    a.compactor = Compactor(a.sched, a.clock, a.id, retention_s=0, max_chunk_bytes=CHUNK, now=lambda: 0.0)
    assert wid not in a.sched.state.dropped
    await a.compactor.step()
    assert a.compactor.info()["verified"] == 1 and wid in a.sched.state.dropped
