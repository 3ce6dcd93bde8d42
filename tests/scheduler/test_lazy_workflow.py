"""A chunked workflow's tasks have no records until an op is about them, and peers claim them
as they work through them (``Scheduler._feed``, ``scheduler.claim_backlog``): two real nodes
over libp2p share a 3,000-task workflow with a backlog of 64, never hold much more than that
claimed and unfinished, and finish every task once, with the real default model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.config import NodeConfig
from p2p.node import Node
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(600)

N = 3_000
BACKLOG = 64


def _config(tmp: Path, cache: Path, name: str) -> NodeConfig:
    raw = make_node_config(tmp / name, cache, name=name, network=True, inline_inputs_bytes=0,
                           claim_backlog=BACKLOG).model_dump()
    raw["network"]["heartbeat_s"] = 0.5
    return NodeConfig.model_validate(raw)


async def test_two_peers_work_through_a_lazy_workflow_a_backlog_at_a_time(tmp_path: Path, shared_cache_dir: Path) -> None:
    inputs = [f"Document {i}: notes on item {i % 97} and topic {i % 13}." for i in range(N)]
    async with Node.open(_config(tmp_path, shared_cache_dir, "a")) as a, Node.open(_config(tmp_path, shared_cache_dir, "b")) as b:
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(60):
            while b.peer_id not in {r.heartbeat.peer_id for r in a.peers.records()} or \
                    a.peer_id not in {r.heartbeat.peer_id for r in b.peers.records()}:
                await trio.sleep(0.05)
        wid = (await a.submit_inputs("lazy", {"model": DEFAULT_MODEL}, inputs))["workflow_id"]
        wf = a.scheduler.state.workflows[wid]
        # records only for what was claimed meanwhile (the submit waited for its fsync)
        held = sum(1 for t in a.scheduler.state.tasks if t.startswith(wid))
        assert wf.lazy and wf.virtual == N - held and held <= 2 * BACKLOG, held
        most = 0
        with trio.fail_after(400):
            while a.workflow_summary(wid)["state"] != "completed":
                most = max(most, a.scheduler.local_queue(), b.scheduler.local_queue())
                await trio.sleep(0.02)
        # paced: a peer looks at new tasks only below the backlog, about as many as it has room for
        assert most <= 2 * BACKLOG, most
        status = a.workflow_status(wid, include_results=True)
        by = {}
        for t in status["tasks"]:
            assert t["state"] == "done" and t["result"]["embedding"], t
            by[t["peer"]] = by.get(t["peer"], 0) + 1
        assert set(by) == {a.peer_id, b.peer_id} and sum(by.values()) == N, by
        with trio.fail_after(60):  # b agrees on every field
            while b.clock_info()["hash"] != a.clock_info()["hash"]:
                await trio.sleep(0.1)
        assert b.workflow_status(wid, include_results=False) == a.workflow_status(wid, include_results=False)
        # nothing ran twice: one counted result per task, and no task went past its first attempt
        state = a.scheduler.state
        assert state.workflows[wid].virtual == 0
        assert all(len(state.tasks[t].valid_results) == 1 and state.tasks[t].attempt == 1 for t in state.workflows[wid].task_ids)
        print(f"shares: {sorted(by.values())}, most held unfinished: {most}")


async def test_a_restart_mid_workflow_goes_on_from_the_records(tmp_path: Path, shared_cache_dir: Path) -> None:
    """Closed with part of a lazy workflow done, the node re-folds only the tasks ops were about,
    steps over those done, and claims the rest as before."""
    n = 2_000
    cfg = make_node_config(tmp_path / "n", shared_cache_dir, inline_inputs_bytes=0, claim_backlog=32)
    async with Node.open(cfg) as node:
        wid = (await node.submit_inputs("restart", {"model": DEFAULT_MODEL}, [f"line {i} of a long file" for i in range(n)]))["workflow_id"]
        with trio.fail_after(300):
            while node.workflow_summary(wid)["completed"] < n // 4:
                await trio.sleep(0.02)
        before = node.workflow_summary(wid)
    async with Node.open(cfg) as again:
        state = again.scheduler.state
        wf = state.workflows[wid]
        held = sum(1 for t in state.tasks if t.startswith(wid))
        assert wf.lazy and wf.virtual == n - held and held < n, held
        assert again.workflow_summary(wid)["completed"] >= before["completed"]
        with trio.fail_after(300):
            await again.wait_for_workflow(wid, 300)
        done = again.workflow_status(wid, include_results=True)
        assert done["state"] == "completed" and all(t["result"]["embedding"] for t in done["tasks"])
        assert wf.virtual == 0 and state.counts(wf) == state.recount(wf)


def _sched(tmp: Path, name: str, models: frozenset[str], now: object = None, **config: object) -> object:
    from p2p.clock import MerkleClock
    from p2p.config import SchedulerConfig
    from p2p.identity import Identity
    from p2p.peers import PeerTable
    from p2p.scheduler.scheduler import PeerCaps, Scheduler

    ident = Identity.generate()
    clock = MerkleClock.open(tmp / f"{name}.sqlite", ident)
    me = PeerCaps(ident.peer_id_str, 1.0, models)
    cfg = SchedulerConfig(**config)  # type: ignore[arg-type]
    extra = {} if now is None else {"now": now}
    return Scheduler(clock, engine=None, peers=PeerTable(lambda: me, lease_s=cfg.lease_s), config=cfg, **extra)  # type: ignore[arg-type]


def test_the_feed_is_paced_by_the_backlog_and_skips_what_this_peer_cannot_run(tmp_path: Path) -> None:
    """Driven step by step (real clocks, no engine): a peer serving the model claims about its
    backlog's worth a pass and no more until it works some off; one that does not serve it
    looks at none of the tasks, so a million of them never fill its open set."""
    from p2p.content.inputs import chunk_block, pack_inputs
    from p2p.scheduler.ops import TaskSpec, WorkflowTag

    n = 1_000_000
    a = _sched(tmp_path, "a", frozenset(["m"]), claim_backlog=100)
    other = _sched(tmp_path, "other", frozenset(["another-model"]), claim_backlog=100)
    chunks = [(a.clock.put_block(chunk_block(g), durable=False), len(g))  # type: ignore[attr-defined]
              for g in pack_inputs([f"in {i}" for i in range(n)])]
    wid = a.submit_chunks("m1", TaskSpec(model="m", input="-"), chunks, 5, WorkflowTag.P2P_ELIGIBLE)  # type: ignore[attr-defined]
    other.ingest(other.clock.update(a.clock))  # type: ignore[attr-defined]
    for s in (a, other):
        wf = s.state.workflows[wid]  # type: ignore[attr-defined]
        assert wf.lazy and wf.virtual == n and len(s.state.tasks) == 0  # type: ignore[attr-defined]
    for _ in range(3):  # three passes: it claims its backlog's worth, then waits for room
        a.decide(a._feed())  # type: ignore[attr-defined]
        a.flush()  # type: ignore[attr-defined]
        a.decide(list(a._dirty))  # type: ignore[attr-defined]
    assert 100 <= a.local_queue() <= 200 and len(a.state.tasks) == a.local_queue(), a.local_queue()  # type: ignore[attr-defined]
    assert a.state.workflows[wid].virtual == n - a.local_queue()  # type: ignore[attr-defined]
    other.ingest(other.clock.update(a.clock))  # type: ignore[attr-defined]
    for _ in range(3):
        assert other._feed() == []  # type: ignore[attr-defined]
    assert not other._open  # type: ignore[attr-defined]
    assert other.open_task_ids()  # auto-pull still hears of the workflow's model


def _owned_chunked_task(a: Any, b: Any, dag: Any, timeout_s: float) -> str:
    """``a`` submits a 3-task p2p-only chunked workflow; ``b`` (whose chunks come through
    ``dag``) claims its first task and owns it. Returns that task's id."""
    from p2p.content.inputs import InputChunks, chunk_block, pack_inputs
    from p2p.scheduler.ops import TaskSpec, WorkflowTag

    b.inputs = InputChunks(b.clock, dag, lambda: [], timeout_s=timeout_s)
    chunks = [(a.clock.put_block(chunk_block(g), durable=False), len(g)) for g in pack_inputs(["x", "y", "z"])]
    wid = a.submit_chunks("w", TaskSpec(model="m", input="-"), chunks, 5, WorkflowTag.P2P_ONLY)
    b.ingest(b.clock.update(a.clock))
    tid = f"{wid}/0"
    b.decide(b._feed())
    b.flush()
    b.decide([tid])
    assert b._owned.get(tid) == 1 and tid in b._handles
    return tid


async def test_a_task_whose_input_is_unreachable_waits_instead_of_spending_attempts(tmp_path: Path) -> None:
    """The submitter went offline after submitting (laptops sleep): a worker that cannot fetch
    a chunk keeps its claim and tries again a lease later, spending no attempt, for up to half
    of task_timeout_s (injected time); then the attempt fails, retryably, saying why."""
    from p2p.replication import BlockServer
    from p2p.replication.dagservice import LocalDAGService
    from p2p.scheduler.state import TaskStatus

    clock = [1000.0]
    a = _sched(tmp_path, "a", frozenset(["m"]))
    b = _sched(tmp_path, "b", frozenset(["m"]), now=lambda: clock[0], task_timeout_s=60.0, lease_s=5.0)
    dag = LocalDAGService({a.me: BlockServer(a.clock, lambda: [], max_blocks_per_request=64, max_frame_bytes=4 << 20)})  # type: ignore[attr-defined]
    dag.down.add(a.me)  # type: ignore[attr-defined]
    tid = _owned_chunked_task(a, b, dag, timeout_s=1)
    tries = 0
    while True:
        b._heap.remove(b._handles.pop(tid))  # type: ignore[attr-defined]  (what the work loop does)
        b._running.add(tid)  # type: ignore[attr-defined]
        await b._execute(tid, 1, trio.Semaphore(0))  # type: ignore[attr-defined]
        b.flush()  # type: ignore[attr-defined]
        task = b.state.tasks[tid]  # type: ignore[attr-defined]
        tries += 1
        if task.fails:
            break
        assert b.state.task_status(task) is TaskStatus.CLAIMED and task.attempt == 1 and not task.started  # type: ignore[attr-defined]
        b.decide([tid])  # type: ignore[attr-defined]
        assert tid not in b._handles and b._owned.get(tid) == 1  # type: ignore[attr-defined]  (waiting out the backoff)
        clock[0] += 5.0  # a lease later
        b.decide([tid])  # type: ignore[attr-defined]
        assert tid in b._handles  # type: ignore[attr-defined]  (queued again)
    assert tries == 7  # 30 s of waiting, a try every 5 s, then the attempt fails
    (fail,) = task.fails.values()
    assert fail.retryable and "served by none of the peers asked" in fail.error


async def test_a_task_cancelled_while_its_input_is_fetched_is_let_go(tmp_path: Path) -> None:
    """Cancelled while the fetch of its input hangs, then the fetch fails: the peer must not
    keep owning it (it is not open any more, so no pass would ever let it go; found by review)."""
    from p2p.replication import BlockServer
    from p2p.replication.dagservice import LocalDAGService
    from p2p.scheduler.state import TaskStatus

    clock = [1000.0]
    a = _sched(tmp_path, "a", frozenset(["m"]))
    b = _sched(tmp_path, "b", frozenset(["m"]), now=lambda: clock[0], task_timeout_s=60.0, lease_s=5.0)
    dag = LocalDAGService({a.me: BlockServer(a.clock, lambda: [], max_blocks_per_request=64, max_frame_bytes=4 << 20)})  # type: ignore[attr-defined]
    release = trio.Event()

    async def hanging(peer: str, cids: list[bytes], ancestors: int = 0) -> list[tuple[bytes, bytes]]:
        await release.wait()
        raise OSError("submitter unreachable")

    dag.get_blocks = hanging  # type: ignore[method-assign]
    tid = _owned_chunked_task(a, b, dag, timeout_s=100)
    wid = tid.partition("/")[0]
    b._heap.remove(b._handles.pop(tid))  # type: ignore[attr-defined]  (what the work loop does)
    b._unqueue(tid)  # type: ignore[attr-defined]
    b._running.add(tid)  # type: ignore[attr-defined]
    async with trio.open_nursery() as n:
        n.start_soon(b._execute, tid, 1, trio.Semaphore(0))  # type: ignore[attr-defined]
        await trio.sleep(0.1)  # fetching
        a.cancel(wid)  # type: ignore[attr-defined]
        a.flush()  # type: ignore[attr-defined]
        b.ingest(b.clock.update(a.clock))  # type: ignore[attr-defined]
        b.decide(list(b._dirty))  # type: ignore[attr-defined]
        release.set()
    assert b.state.task_status(b.state.task(tid)) is TaskStatus.CANCELLED  # type: ignore[attr-defined]
    assert b.local_queue() == 0 and not b._input_backoff  # type: ignore[attr-defined]
