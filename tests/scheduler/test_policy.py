"""The assignment policy with a hand-driven clock and real schedulers (clocks, signatures, fold).

What is checked: an owner that heartbeats but never finishes loses the attempt after
task_timeout_s and the next peer claims it with the reason; a paused owner that was superseded
re-asserts its running task and keeps it (the superseder drops it); a peer that is not caught
up claims nothing; the owner's own timeout fails the attempt, retryable, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2p.clock import MerkleClock
from p2p.config import SchedulerConfig
from p2p.identity import Identity
from p2p.peers import Heartbeat, PeerCaps, PeerTable
from p2p.scheduler.ops import TaskSpec, WorkflowTag
from p2p.scheduler.policy import UNHEARD_GRACE_LEASES, Claim, Drop
from p2p.scheduler.scheduler import Scheduler
from p2p.scheduler.state import TaskStatus

MODEL = "m"


class Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def peer(tmp: Path, name: str, now: Callable[[], float], ready: Callable[[], bool] = lambda: True,
         engine: Any = None, lagging: Callable[[str], bool] = lambda p: False, **cfg: Any) -> Scheduler:
    ident = Identity.generate()
    clock = MerkleClock.open(tmp / f"{name}.sqlite", ident)
    me = PeerCaps(ident.peer_id_str, 1.0, frozenset([MODEL]))
    config = SchedulerConfig(**({"lease_s": 10.0, "task_timeout_s": 60.0} | cfg))
    return Scheduler(clock, engine=engine, peers=PeerTable(lambda: me, lease_s=config.lease_s, now=now),
                     config=config, ready=ready, now=now, lagging=lagging)


def hear(s: Scheduler, other: Scheduler) -> None:
    """``s`` hears ``other``'s heartbeat and holds its events."""
    s.peers.observe(Heartbeat(peer_id=other.me, name="x", models=[MODEL], capacity=1.0))
    s.ingest(s.clock.update(other.clock))


def own_and_start(a: Scheduler, tid: str) -> None:
    a.decide([tid])
    a.flush()
    a.decide([tid])
    assert a.state.tasks[tid].owner().peer == a.me
    a._record({"op": "task.start", "task_id": tid, "attempt": 1})
    a.flush()


def test_an_owner_that_never_finishes_loses_the_attempt_after_task_timeout(tmp_path: Path) -> None:
    now = Now()
    a, b = peer(tmp_path, "a", now), peer(tmp_path, "b", now)
    wid = b.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.P2P_ONLY)  # b never runs it
    tid = f"{wid}/0"
    hear(a, b)
    own_and_start(a, tid)
    hear(b, a)
    assert b.state.task_status(b.state.tasks[tid]) is TaskStatus.RUNNING
    b.decide([tid])  # first sight of it running
    b.flush()
    assert b.state.tasks[tid].attempt == 1
    # a heartbeats all along but never finishes; b also has a third peer to hand it to: itself is
    # excluded (p2p-only), so add c, which b ranks next
    c = peer(tmp_path, "c", now)
    hear(c, a)
    hear(c, b)
    for _ in range(12):
        now.t += 10
        for s, others in ((c, (a, b)), (b, (a, c))):
            for o in others:
                s.peers.observe(Heartbeat(peer_id=o.me, name="x", models=[MODEL], capacity=1.0))
            s.ingest(s.clock.update(others[1].clock))
            # b is the attempt's judge (the submitter; a owns it): it records the loss, then c,
            # the only other peer that may run it, claims the next attempt
            s.decide([tid])
            s.flush()
    c.ingest(c.clock.update(b.clock))
    task = c.state.tasks[tid]
    assert task.attempt == 2 and task.owner().peer == c.me
    errors = task.errors() if callable(getattr(task, "errors", None)) else []
    assert any("task_timeout_s" in (e.get("error") or "") for e in errors), errors


def test_a_superseded_owner_that_is_still_running_keeps_the_task(tmp_path: Path) -> None:
    now = Now()
    a, b = peer(tmp_path, "a", now), peer(tmp_path, "b", now)
    wid = b.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.P2P_ONLY)
    tid = f"{wid}/0"
    hear(a, b)
    own_and_start(a, tid)
    # b, the attempt's judge, thinks a is dead (b was paused, say) and records attempt 1 lost;
    # c claims attempt 2
    b.ingest(b.clock.update(a.clock))
    b._record({"op": "task.fail", "task_id": tid, "attempt": 1, "error": "owner silent", "expired": True})
    b.flush()
    c = peer(tmp_path, "c", now)
    hear(c, a)
    hear(c, b)
    c.decide([tid])
    c.flush()
    assert c.state.tasks[tid].owner().peer == c.me
    hear(a, b)
    hear(a, c)
    task = a.state.tasks[tid]
    decisions = a.policy.decide(task, a.state.workflows[wid], a.state.task_status(task), a.peers.live_peers(),
                                running_attempt=1)
    assert decisions == [Claim(2, continues=True)]
    a._claim(task, Claim(2, continues=True), a.peers.live_peers())
    a.flush()
    hear(b, a)
    hear(c, a)
    for s in (a, b, c):
        assert s.state.tasks[tid].owner().peer == a.me, "the continuation beats the other claim"
    c.decide([tid])
    assert c.local_queue() == 0


def test_a_peer_that_is_not_caught_up_claims_nothing(tmp_path: Path) -> None:
    now = Now()
    caught_up = [False]
    a = peer(tmp_path, "a", now, ready=lambda: caught_up[0])
    wid = a.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.LOCAL_ONLY)
    tid = f"{wid}/0"
    a.decide([tid])
    a.flush()
    assert a.state.tasks[tid].attempt == 0
    caught_up[0] = True
    a.decide([tid])
    a.flush()
    assert a.state.tasks[tid].attempt == 1


class NeverEngine:
    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep_forever()


async def test_the_owner_gives_up_its_own_run_after_task_timeout(tmp_path: Path) -> None:
    a = peer(tmp_path, "a", Now(), engine=NeverEngine(), lease_s=0.05, task_timeout_s=0.2)
    wid = a.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.LOCAL_ONLY)
    tid = f"{wid}/0"
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        with trio.fail_after(20):
            while not a.state.tasks[tid].fails:
                await a.changed.wait()
        nursery.cancel_scope.cancel()
    errors = a.state.tasks[tid].errors()
    assert errors and "task_timeout_s" in errors[0]["error"], errors


class CountingEngine:
    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, model: str, inputs: list[str], task: Any = None, **kwargs: Any) -> Any:
        self.calls += 1
        raise ValueError("not a model")


async def test_tasks_dropped_while_catching_up_are_never_started(tmp_path: Path) -> None:
    """The work loop waits while not caught up; if the fold drops the queued tasks meanwhile
    (another peer owns them now), it must neither start them nor crash on an empty heap."""
    ready = [True]
    engine = CountingEngine()
    a = peer(tmp_path, "a", Now(), ready=lambda: ready[0], engine=engine)
    wid = a.submit("w", [TaskSpec(model=MODEL, input=f"x{i}") for i in range(3)], 5, WorkflowTag.LOCAL_ONLY)
    tids = list(a.state.workflows[wid].task_ids)
    async with trio.open_nursery() as nursery:
        ready[0] = False  # paused, catching up: the work loop must wait
        a.decide(tids)  # not ready: no claims
        a.flush()
        assert a.local_queue() == 0
        ready[0] = True
        a.decide(tids)
        a.flush()
        a.decide(tids)
        assert a.local_queue() == 3  # owned and queued
        ready[0] = False
        await nursery.start(a.run)
        await trio.sleep(0.2)  # the work loop is now parked on readiness with a full heap
        for tid in tids:  # meanwhile the tasks go elsewhere (here: dropped as if superseded)
            a._drop_local(tid, even_if_running=False)
        ready[0] = True
        await trio.sleep(0.3)
        assert engine.calls == 0 and a.local_queue() == 0
        nursery.cancel_scope.cancel()


async def test_a_task_left_while_catching_up_is_claimed_once_caught_up(tmp_path: Path) -> None:
    """A queued task decided while this peer could not claim (catching up) stays open, so the
    readiness change (peers_changed, as the replicator signals it) claims it; it must not wait
    for an event that happens to touch it (after a partition healed, 36 tasks waited forever)."""
    ready = [False]
    a = peer(tmp_path, "a", Now(), ready=lambda: ready[0], engine=CountingEngine(), lease_s=3600.0,
             task_timeout_s=7200.0)
    wid = a.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.LOCAL_ONLY)
    tid = f"{wid}/0"
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await trio.sleep(0.1)  # decided (the fold touched it) while not caught up: no claim
        assert a.state.tasks[tid].attempt == 0
        ready[0] = True
        a.peers_changed()
        with trio.fail_after(10):
            while a.state.tasks[tid].attempt == 0:
                await a.changed.wait()
        nursery.cancel_scope.cancel()


def test_a_task_left_unclaimed_is_not_taken_over_while_its_betters_events_are_on_their_way(tmp_path: Path) -> None:
    """The k-th ranked peer claims a task its betters left unclaimed after k leases, but not
    while a better peer has announced events it does not hold yet: its claim may be in them."""
    now = Now()
    behind: set[str] = set()
    a = peer(tmp_path, "a", now, lagging=lambda p: p in behind)
    b = peer(tmp_path, "b", now)
    wid = a.submit("w", [TaskSpec(model=MODEL, input=f"x{i}") for i in range(12)], 5, WorkflowTag.P2P_ELIGIBLE)
    hear(a, b)
    hear(b, a)
    tids = [f"{wid}/{i}" for i in range(12)]
    mine = [t for t in tids if a.policy.ranking(a.state.tasks[t], a.state.workflows[wid], a.peers.live_peers())[0] == a.me]
    theirs = [t for t in tids if t not in mine]
    assert theirs, "b must rank first for some task"
    behind.add(b.me)
    for _ in range(4):  # far past one lease: b's tasks are still unclaimed here
        now.t += 10
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(tids)
        a.flush()
    assert all(a.state.tasks[t].attempt == 0 for t in theirs), "claimed while b's events were on their way"
    behind.clear()
    now.t += UNHEARD_GRACE_LEASES * 10  # b never wrote a word about the workflow: the longer wait
    a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
    a.decide(tids)
    a.flush()
    assert all(a.state.tasks[t].owner().peer == a.me for t in theirs)


def _b_ranks_first(tmp_path: Path) -> tuple[Now, Scheduler, Scheduler, str, list[str], list[str]]:
    """a submits 16 tasks and hears b (alive, serving the model); the tasks b ranks first for."""
    now = Now()
    a = peer(tmp_path, "a", now)
    b = peer(tmp_path, "b", now)
    wid = a.submit("w", [TaskSpec(model=MODEL, input=f"x{i}") for i in range(16)], 5, WorkflowTag.P2P_ELIGIBLE)
    hear(a, b)
    tids = [f"{wid}/{i}" for i in range(16)]
    theirs = [t for t in tids
              if a.policy.ranking(a.state.tasks[t], a.state.workflows[wid], a.peers.live_peers())[0] == b.me]
    assert len(theirs) >= 2, "b must rank first for two tasks"
    return now, a, b, wid, tids, theirs


def test_a_fallback_claim_waits_longer_while_the_top_peer_shows_no_sign_of_the_workflow(tmp_path: Path) -> None:
    """A big submit can reach the top-ranked peer after one lease has passed: the fallback
    waits UNHEARD_GRACE_LEASES more leases until that peer has written anything about the
    workflow, and only one lease once it has (it then holds the workflow and simply left it)."""
    now, a, b, wid, tids, theirs = _b_ranks_first(tmp_path)

    def tick(seconds: float) -> None:
        now.t += seconds
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(tids)
        a.flush()

    tick(0)
    tick(10.5)  # past one lease: b has not shown that it even holds the workflow
    assert all(a.state.tasks[t].attempt == 0 for t in theirs), "took work b may not have received yet"
    # b receives the workflow and claims one of its tasks: it holds the workflow
    hear(b, a)
    b.decide(theirs[:1])
    b.flush()
    hear(a, b)
    assert b.me in a.state.workflows[wid].heard_from
    tick(0)
    rest = theirs[1:]
    assert all(a.state.tasks[t].owner().peer == a.me for t in rest), "b holds the workflow and left these"
    assert a.state.tasks[theirs[0]].owner().peer == b.me


def test_a_top_peer_that_never_shows_up_loses_its_tasks_after_the_longer_wait(tmp_path: Path) -> None:
    now, a, b, wid, tids, theirs = _b_ranks_first(tmp_path)
    for seconds in (0, 10.5, 10 * UNHEARD_GRACE_LEASES - 1):
        now.t += seconds
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(tids)
        a.flush()
        assert all(a.state.tasks[t].attempt == 0 for t in theirs)
    now.t += 1
    a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
    a.decide(tids)
    a.flush()
    assert all(a.state.tasks[t].owner().peer == a.me for t in theirs), "a silent-on-the-workflow peer must not starve it"


def _claimed_by_b(tmp_path: Path, n: int = 12) -> tuple[Now, Scheduler, Scheduler, list[str]]:
    now = Now()
    a = peer(tmp_path, "a", now)
    b = peer(tmp_path, "b", now)
    wid = a.submit("w", [TaskSpec(model=MODEL, input=f"x{i}") for i in range(n)], 5, WorkflowTag.P2P_ELIGIBLE)
    hear(a, b)
    hear(b, a)
    tids = [f"{wid}/{i}" for i in range(n)]
    b.decide(tids)
    b.flush()
    hear(a, b)
    theirs = [t for t in tids if (o := a.state.tasks[t].owner()) is not None and o.peer == b.me]
    assert len(theirs) >= 2, "b must own two tasks"
    return now, a, b, theirs


def test_an_owner_that_claims_and_never_works_loses_its_claims(tmp_path: Path) -> None:
    """A live peer that claimed tasks and starts none of them (huge advertised capacity, then
    nothing) loses each attempt after task_timeout_s and a lease; the task goes back to work."""
    now, a, b, theirs = _claimed_by_b(tmp_path)
    for step in (0, 30, 35):  # 65 s: within task_timeout_s (60) + a lease (10)
        now.t += step
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(theirs)
        a.flush()
        assert all(a.state.tasks[t].owner(1).peer == b.me and not a.state.tasks[t].fails for t in theirs)
    now.t += 6
    a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
    a.decide(theirs)
    a.flush()
    for t in theirs:
        task = a.state.tasks[t]
        lost = task.fail_for(1)
        assert lost is not None and lost.expired and task.counts(lost), task.errors()
        assert "started or finished no task" in lost.error
    a.decide(theirs)  # queued again: the submitter takes them (b, which lost them, ranks last)
    a.flush()
    assert all(a.state.tasks[t].owner(2).peer == a.me for t in theirs)


def test_an_owner_that_keeps_working_keeps_its_claims_however_long_its_queue(tmp_path: Path) -> None:
    """b works through its queue one task per 20 s: after 120 s (twice task_timeout_s) the
    tasks it still holds are its own, and nobody recorded them lost."""
    now, a, b, theirs = _claimed_by_b(tmp_path, n=40)
    assert len(theirs) >= 8, "b must own eight tasks"
    work, held = theirs[:6], theirs[6:]
    for tid in work:
        now.t += 20
        b._record({"op": "task.start", "task_id": tid, "attempt": 1})
        b._record({"op": "task.done", "task_id": tid, "attempt": 1, "result": {"v": 1}})
        b.flush()
        hear(a, b)
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(held)
        a.flush()
    assert all(not a.state.tasks[t].fails and a.state.tasks[t].owner(1).peer == b.me for t in held)


def test_repeating_one_start_is_not_progress(tmp_path: Path) -> None:
    """Writing the same start again and again (to look busy) does not keep other claims."""
    now, a, b, theirs = _claimed_by_b(tmp_path)
    first, rest = theirs[0], theirs[1:]
    for _ in range(6):  # the first start is progress; the five copies after it are not
        now.t += 20
        b._record({"op": "task.start", "task_id": first, "attempt": 1})
        b.flush()
        hear(a, b)
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(rest)
        a.flush()
    assert all(a.state.tasks[t].fail_for(1) is not None for t in rest), "a repeated start kept the hoard"


def test_ops_on_tasks_it_does_not_own_are_not_progress(tmp_path: Path) -> None:
    """A hoarder that writes a failure, a result and a start for tasks it does not own (the fold
    ignores them) every 20 s still loses the claims it holds."""
    now, a, b, theirs = _claimed_by_b(tmp_path)
    wid = theirs[0].split("/")[0]
    not_b = [t for t in a.state.workflows[wid].task_ids if t not in theirs]
    assert not_b
    for i in range(6):
        now.t += 20
        other = not_b[i % len(not_b)]
        b._record({"op": "task.fail", "task_id": other, "attempt": 1, "error": "x"})
        b._record({"op": "task.done", "task_id": other, "attempt": 1, "result": {"v": 0}})
        b._record({"op": "task.start", "task_id": other, "attempt": 1})
        b.flush()
        hear(a, b)
        a.peers.observe(Heartbeat(peer_id=b.me, name="x", models=[MODEL], capacity=1.0))
        a.decide(theirs)
        a.flush()
    assert all(a.state.tasks[t].fail_for(1) is not None for t in theirs), "ops on others' tasks kept the hoard"
