"""Two peers claim the same task during a partition; after the heal exactly one owner and one
result stand, the same on both. Real clocks (SQLite, signatures) and real schedulers, driven
step by step so the race happens every time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2p.clock import MerkleClock
from p2p.config import SchedulerConfig
from p2p.identity import Identity
from p2p.peers import Heartbeat, PeerTable
from p2p.scheduler.assignment import claim_beats
from p2p.scheduler.policy import UNHEARD_GRACE_LEASES
from p2p.scheduler.ops import TaskSpec, WorkflowTag
from p2p.scheduler.results import pack_result
from p2p.scheduler.scheduler import PeerCaps, Scheduler
from p2p.scheduler.state import TaskStatus

MODEL = "m"


def _peer(tmp: Path, name: str, now: Callable[[], float] = time.monotonic, **config: Any) -> Scheduler:
    ident = Identity.generate()
    clock = MerkleClock.open(tmp / f"{name}.sqlite", ident)
    me = PeerCaps(ident.peer_id_str, 1.0, frozenset([MODEL]))
    cfg = SchedulerConfig(**config)
    table = PeerTable(lambda: me, lease_s=cfg.lease_s, now=now)
    return Scheduler(clock, engine=None, peers=table, config=cfg, now=now)  # type: ignore[arg-type]


def _partitioned_claims(tmp: Path) -> tuple[Scheduler, Scheduler, str]:
    a, b = _peer(tmp, "a"), _peer(tmp, "b")
    wid = a.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.P2P_ELIGIBLE)
    b.ingest(b.clock.update(a.clock))
    tid = f"{wid}/0"
    for s in (a, b):  # each sees only itself, so each claims
        s.decide([tid])
        s.flush()  # the claim event is written and folded
        s.decide([tid])  # now it is the owner and queues the task
        assert s.local_queue() == 1
        assert s.state.tasks[tid].owner().peer == s.me
    return a, b, tid


def _heal(a: Scheduler, b: Scheduler) -> None:
    b.ingest(b.clock.update(a.clock))
    a.ingest(a.clock.update(b.clock))


def test_the_loser_of_a_concurrent_claim_drops_the_task(tmp_path: Path) -> None:
    a, b, tid = _partitioned_claims(tmp_path)
    _heal(a, b)
    for s in (a, b):
        s.decide([tid])
    winner, loser = (a, b) if claim_beats(tid, (a.me, 1.0), (b.me, 1.0)) else (b, a)
    assert a.state.tasks[tid].owner().peer == b.state.tasks[tid].owner().peer == winner.me
    assert winner.local_queue() == 1 and loser.local_queue() == 0
    assert a.clock.get_hash() == b.clock.get_hash()


def test_when_both_ran_exactly_one_result_is_recorded(tmp_path: Path) -> None:
    a, b, tid = _partitioned_claims(tmp_path)
    for s, value in ((a, 1.0), (b, 2.0)):  # both finished before hearing of the other
        s.clock.append([{"op": "task.done", "task_id": tid, "attempt": 1, "result": pack_result({"embedding": [value]})}])
    a.ingest(a.clock.events())
    b.ingest(b.clock.events())
    _heal(a, b)
    assert a.state.snapshot() == b.state.snapshot()
    ta, tb = a.state.tasks[tid], b.state.tasks[tid]
    assert a.state.task_status(ta) is TaskStatus.DONE
    assert ta.result.peer == tb.result.peer and ta.result.result == tb.result.result
    assert len(ta.valid_results) == 2  # the duplicate is kept, never used
    assert a.clock.get_hash() == b.clock.get_hash()


def test_a_restarted_node_does_not_declare_unknown_owners_dead(tmp_path: Path) -> None:
    """Within lease_s of starting, an owner we have not heard from yet is presumed alive."""
    clock_now = [1000.0]
    ident = Identity.generate()
    me = PeerCaps(ident.peer_id_str, 1.0, frozenset([MODEL]))
    table = PeerTable(lambda: me, lease_s=10, now=lambda: clock_now[0])
    assert table.is_alive("someone-else")
    clock_now[0] += 11
    assert not table.is_alive("someone-else")
    table.observe(Heartbeat(peer_id="someone-else", name="x", models=[MODEL], capacity=1.0))
    assert table.is_alive("someone-else")


def test_a_task_its_top_ranked_peer_never_claims_is_claimed_after_a_deadline(tmp_path: Path) -> None:
    """A peer that advertises the model at a huge capacity but never claims can't starve a task."""
    now = [1000.0]
    a = _peer(tmp_path, "a", now=lambda: now[0], lease_s=0.2, task_timeout_s=1.0, pause_threshold_s=0.1)
    fake = Heartbeat(peer_id=Identity.generate().peer_id_str, name="fake", models=[MODEL], capacity=1e6)
    a.peers.observe(fake)
    wid = a.submit("w", [TaskSpec(model=MODEL, input="x")], 5, WorkflowTag.P2P_ELIGIBLE)
    tid = f"{wid}/0"
    a.decide([tid])
    a.flush()
    assert a.state.tasks[tid].attempt == 0  # the fake peer ranks first; we wait
    now[0] += 0.19
    a.peers.observe(fake)
    a.decide([tid])
    a.flush()
    assert a.state.tasks[tid].attempt == 0  # still within one lease of waiting
    now[0] += 0.06
    a.peers.observe(fake)  # still "alive": it heartbeats, it just never claims
    a.decide([tid])
    a.flush()
    # it never wrote a word about the workflow either: the wait is UNHEARD_GRACE_LEASES longer
    assert a.state.tasks[tid].attempt == 0
    now[0] += UNHEARD_GRACE_LEASES * 0.2
    a.peers.observe(fake)
    a.decide([tid])
    a.flush()
    assert a.state.tasks[tid].owner().peer == a.me
