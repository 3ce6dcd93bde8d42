"""A hostile peer in a real network (issue 8): three honest ``p2p start`` processes with the real
model, plus ``tests/network/hostile_peer.py`` — a real node built from the project's own modules,
admitted with the same network key, whose every op is an attack written through the clock's API.

Each attack runs on its own workflow and is checked over MCP on every honest node, field by
field where it matters, against the clocks the honest nodes hold (their SQLite files, folded here
with the project's own ``State`` to name the judge of each attempt and what was refused):

1. a foreign ``workflow.cancel`` and ``workflow.reprioritize`` (to 10) of a running workflow, and
   the ``cancel_workflow``/``set_workflow_priority`` tools on a peer that is not its submitter;
2. claims with capacity 1e6 and zero-vector results, racing the honest claims (written as if the
   instant the submit arrived), once with 1e6 advertised and once with 1 advertised;
3. claims (attempt 1, and a takeover of attempt 2) and zero results written *after* seeing the
   honest claims of a running workflow;
4. claims and zero results for every attempt of every task of a completed workflow: written
   over everything it holds (nothing changes), and backdated to the submit (every result is
   replaced: the submitter's seals answer it, see the test);
5. a flood of expiries (attempts 1-3 of every task of a running 300-task workflow), and a
   patient expirer that ends each attempt the moment it is owned;
6. a forking worker: a sibling of its own newest event (one seq, two events), backdated to the
   submit, racing the honest claims with zero results.

What each measured is printed as a ``FIGURE hostile ...`` line (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import math
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from p2p.clock.cids import cid_from_bytes
from p2p.clock.event import load_stored_event
from p2p.scheduler.assignment import claim_beats
from p2p.scheduler.state import State, apply_event
from tests.cluster import Cluster, Peer, call, call_error, clock_ops, eventually, full_status, run_counts, settled, status_diff, \
    wait_done, wait_known, wait_peers
from tests.conftest import DEFAULT_MODEL, REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


# ----------------------------------------------------------------------------- the hostile peer


@dataclass
class Hostile:
    """The hostile peer's process, driven one JSON command at a time (see hostile_peer.py)."""

    proc: subprocess.Popen[bytes]
    log: Path
    peer_id: str = ""
    events: list[str] = field(default_factory=list)  # every event it wrote

    @classmethod
    def start(cls, data_dir: Path, env: dict[str, str], bootstrap: str, log: Path) -> Hostile:
        fh = open(log, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.network.hostile_peer", "--data-dir", str(data_dir), "--bootstrap", bootstrap],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fh, bufsize=0)
        h = cls(proc, log)
        h.peer_id = h._read(120)["peer_id"]
        return h

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if self.proc.poll() is not None or left <= 0:
                raise AssertionError(f"hostile peer: no reply (exit {self.proc.poll()}):\n{self.log.read_text()[-3000:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if ready:
                chunk = self.proc.stdout.read(1)
                if not chunk:
                    continue
                buf += chunk
        return json.loads(buf)

    def _request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        return self._read(timeout)

    async def cmd(self, name: str, timeout: float = 150, **args: Any) -> dict[str, Any]:
        reply = await trio.to_thread.run_sync(self._request, {"cmd": name, **args}, timeout, abandon_on_cancel=True)
        assert reply.get("ok"), f"hostile {name}: {reply}"
        self.events += reply.get("events", [])
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.wait(timeout=20)
            except Exception:  # noqa: BLE001 - it is stopped either way
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()


@dataclass
class Net:
    cluster: Cluster
    honest: list[Peer]
    hostile: Hostile


HOARD_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Iterator[Net]:
    """One network for every attack (each on its own workflows): n1, n2, n3 and the hostile peer."""
    root = tmp_path_factory.mktemp("hostile")
    # a short task_timeout_s (a consensus setting: the hostile peer runs it too) so that a
    # hoarder's claims are recorded lost within the test (test_claiming_everything_and_never_working...)
    cluster = Cluster(root, shared_cache_dir, env_extra={"IPFS_ACCELERATE_SCHEDULER__TASK_TIMEOUT_S": str(HOARD_TIMEOUT_S)})
    hostile: Hostile | None = None
    try:
        n1 = cluster.start("n1")
        n2 = cluster.start("n2", bootstrap=[n1])
        n3 = cluster.start("n3", bootstrap=[n1])
        hostile = Hostile.start(root / "hostile", cluster.env(), n1.addr, root / "hostile.log")
        yield Net(cluster, [n1, n2, n3], hostile)
    finally:
        if hostile is not None:
            hostile.stop()
        cluster.stop_all()


async def _ready(net: Net, serving: bool = False) -> None:
    """Every honest peer sees the others serving the model and the hostile peer (serving it or
    not, as told), and the hostile peer hears all three."""
    h = net.hostile.peer_id
    for p in net.honest:
        await wait_peers(p, [o for o in net.honest if o is not p])

        async def sees_hostile(p: Peer = p) -> bool:
            listed = {q["peer_id"]: q for q in (await call(p, "list_peers"))["peers"]}
            return h in listed and bool(listed[h]["models"]) == serving

        await eventually(sees_hostile, 60, f"{p.name} to see the hostile peer (serving={serving})")

    async def hears_all() -> bool:
        return {p.peer_id for p in net.honest} <= set((await net.hostile.cmd("info"))["peers"])

    await eventually(hears_all, 60, "the hostile peer to hear every honest peer")


# ------------------------------------------------------------------------------- reading clocks


def fold_clock(data_dir: Path) -> State:
    """An honest node's clock (its SQLite file, read-only) folded with the project's own fold."""
    db = sqlite3.connect(f"file:{data_dir / 'clock.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT e.cid, e.height, b.data FROM events e JOIN blocks b ON b.cid = e.cid ORDER BY e.ord").fetchall()
    finally:
        db.close()
    state = State(max_attempts=3)
    for raw, height, data in rows:
        ev = load_stored_event(cid_from_bytes(raw), data, height)
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
    return state


def events_by(data_dir: Path, author: str) -> set[str]:
    db = sqlite3.connect(f"file:{data_dir / 'clock.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT cid FROM events WHERE author = ?", (author,)).fetchall()
    finally:
        db.close()
    return {str(cid_from_bytes(r[0])) for r in rows}


async def wait_holds(net: Net, cids: list[str], timeout: float = 60) -> None:
    """Until every honest node holds these events of the hostile peer."""
    want = set(cids)
    for p in net.honest:
        async def holds(p: Peer = p) -> bool:
            return want <= events_by(p.data_dir, net.hostile.peer_id)

        await eventually(holds, timeout, f"{p.name} to hold the hostile peer's {len(want)} events")


# Longer inputs make each task cost something, so a workflow is still running when an attack lands.
FILLER = " ".join(["the quick brown fox jumps over the lazy dog"] * 6)


def _tasks(n: int, tag: str, long: bool = False) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"{tag}: a sentence about trust, number {i}." + (f" {FILLER}" if long else "")}
            for i in range(n)]


def _norm(task: dict[str, Any]) -> float:
    return math.sqrt(sum(x * x for x in task["result"]["embedding"]))


def _alive(net: Net) -> None:
    for p in net.honest:
        assert p.proc is not None and p.proc.poll() is None, f"{p.name} exited:\n{p.log_text()[-3000:]}"


def _hostile_refusals(net: Net, state: State) -> Counter[str]:
    """The hostile peer's claims and expiries the fold keeps but does not count, by reason."""
    out: Counter[str] = Counter()
    for r in state.refused():
        if r.author == net.hostile.peer_id:
            out[re.sub(r"\S*\d\S*", "#", r.reason)[:100]] += 1
    return out


def _right(task: Any, f: Any, hostile: str) -> str:
    """Why the fold let the hostile expiry ``f`` count, read from the expiry's own past: it was the
    attempt's judge there, or no judge was named (only the owner was a candidate), or another
    peer had expired the attempt before it; anything else is a broken rule."""
    judge = task.restricted(f.where).judge(f.attempt)
    if judge == hostile:
        return "judge"
    if judge is None:
        return "none named"
    if any(g.expired and g.attempt == f.attempt and g.peer != f.peer and g.where is not None and g.where.before(f.where)
           for g in task.fails.values()):
        return "concurring"
    return f"NO RIGHT ({task.task_id} attempt {f.attempt}, judge {judge})"


async def _submit(peer: Peer, name: str, n: int, long: bool = False) -> str:
    return (await call(peer, "submit_workflow", name=name, tasks=_tasks(n, name, long)))["workflow_id"]


async def _finish(net: Net, wid: str, n: int) -> dict[str, Any]:
    """Wait until every honest node has ``wid`` completed, and all agree on every field."""
    for p in net.honest:
        st = await wait_done(p, wid, 240)
        assert st["state"] == "completed" and st["completed"] == n and st["failed"] == 0 and st["cancelled"] == 0, (p.name, st)
    return (await settled(net.honest, [wid], timeout=90))[wid]


async def _release(net: Net, busy: str, events: list[str]) -> None:
    """Once every honest node holds the attack's events, the priority-1 workflow that kept the
    target unstarted has done its job: cancel it rather than wait for it (the race is decided by
    the events, whatever runs next)."""
    await wait_holds(net, events)
    await call(net.honest[0], "cancel_workflow", workflow_id=busy)


# -------------------------------------------------------------------------------------- attacks


async def test_a_foreign_cancel_or_reprioritise_changes_nothing(net: Net) -> None:
    await _ready(net)
    n1, n2, n3 = net.honest
    h = net.hostile
    n = 200
    wid = await _submit(n1, "steer", n)
    rep = await h.cmd("steer", workflow_id=wid, priority=10)
    assert rep["submitter"] == n1.peer_id and rep["open_tasks"] > 0, rep  # it was running when the ops were written
    await wait_known(n2, [wid])
    await wait_known(n3, [wid])
    for p in (n2, n3):  # the tools on a peer that is not the submitter: a clear error, nothing written
        for tool, extra in (("cancel_workflow", {}), ("set_workflow_priority", {"priority": 10})):
            text = await call_error(p, tool, workflow_id=wid, **extra)
            assert n1.peer_id in text and "only that peer may" in text, (p.name, tool, text)
    await wait_holds(net, rep["events"])
    for p in net.honest:  # the hostile ops are there and the workflow runs on, at its own priority
        st = await call(p, "get_workflow_status", workflow_id=wid, limit=1)
        assert st["state"] in ("running", "completed") and st["priority"] == 5 and st["cancelled"] == 0, (p.name, st)
    final = await _finish(net, wid, n)
    assert final["priority"] == 5 and final["submitter"] == n1.peer_id
    assert all(t["state"] == "done" and t["peer"] != h.peer_id and abs(_norm(t) - 1) < 1e-3 for t in final["tasks"])
    for p in net.honest:
        mine = [op for author, op in clock_ops(p.data_dir)
                if author in (n2.peer_id, n3.peer_id) and op.get("op") in ("workflow.cancel", "workflow.reprioritize")]
        assert not mine, f"a refused tool call wrote {mine}"
        reasons = sorted(r.reason for r in fold_clock(p.data_dir).rejected if r.author == h.peer_id)
        assert reasons == [f"only the workflow's submitter {n1.peer_id} may cancel it",
                           f"only the workflow's submitter {n1.peer_id} may reprioritize it"], (p.name, reasons)
        logged = [line for line in p.log_text().splitlines() if "op rejected" in line and h.peer_id in line]
        assert logged and "only the workflow's submitter" in logged[0], (p.name, logged[:2])
    _alive(net)
    print(f"\nFIGURE hostile steer: tasks={n} open_when_written={rep['open_tasks']} state=completed priority=5 "
          f"on {len(net.honest)}/3 nodes; tool errors on n2,n3 name the submitter")


def _honest_claims(ops: list[tuple[str, dict[str, Any]]], wid: str, hostile: str) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for author, op in ops:
        if op.get("op") == "task.claim" and op.get("attempt") == 1 and author != hostile and op["task_id"].startswith(wid):
            out.setdefault(op["task_id"], []).append((author, float(op["capacity"])))
    return out


async def test_capacity_1e6_claims_racing_honest_peers(net: Net) -> None:
    """Backdated to the submit (as if written the instant it arrived, before any honest claim),
    the hostile peer claims every task at capacity 1e6 and returns zero vectors. The race is run
    at the capacity it *advertised*: with 1e6 advertised it wins nearly every race (what
    replicas are for: issue 8 item 4); with 1 advertised its share is the rendezvous share of a
    capacity-1 peer, at most the tasks it would win at 1. Tasks whose honest result the
    submitter sealed before the hostile's claim arrived keep it."""
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 150
    wa = await _submit(n1, "race-adv-1e6", n)
    ra = await h.cmd("race", workflow_id=wa, adv_capacity=1e6, claim_capacity=1e6)
    wb = await _submit(n1, "race-adv-1", n)
    rb = await h.cmd("race", workflow_id=wb, adv_capacity=1.0, claim_capacity=1e6)
    final_a = await _finish(net, wa, n)
    final_b = await _finish(net, wb, n)
    await wait_holds(net, ra["events"] + rb["events"])
    final_a, final_b = (await settled(net.honest, [wa, wb], timeout=90)).values()
    ops = clock_ops(n1.data_dir)
    state = fold_clock(n1.data_dir)
    figures = []
    for wid, final, adv in ((wa, final_a, 1e6), (wb, final_b, 1.0)):
        honest = _honest_claims(ops, wid, h.peer_id)
        stood = {t["task_id"] for t in final["tasks"] if t["peer"] == h.peer_id}
        for t in final["tasks"]:  # a hostile result is the zero vector; every other one is the model's
            assert (_norm(t) == 0.0) == (t["task_id"] in stood), t["task_id"]
        contested = {tid for tid, cl in honest.items() if len(cl) == 1}
        at_adv = {tid for tid in contested if claim_beats(tid, (h.peer_id, adv), honest[tid][0])}
        at_word = {tid for tid in contested if claim_beats(tid, (h.peer_id, 1e6), honest[tid][0])}
        # The other race with the seal: a hostile result the submitter sealed before the honest
        # claim reached it (it then saw the hostile as the owner) stands, as every seal does. Seen
        # in a full CI-like run (50 of 150 on a loaded machine). Where the hostile loses the race
        # at its advertised capacity, such a seal must not have had the honest claim in its past.
        sealed_hostile = set()
        for tid in stood & contested - at_adv:
            task = state.task(tid)
            seal = task.sealed()
            if seal is not None and seal.peer == h.peer_id:
                sealed_hostile.add(tid)
                seal_where = [w for (_, w) in task.accepts.values()]
                honest_claims = [c for p, c in task.claims.get(1, {}).items() if p != h.peer_id]
                assert not any(c.where.before(w) for c in honest_claims for w in seal_where), \
                    (tid, "the submitter sealed a losing hostile result after seeing the honest claim")
        # it wins at most the races it wins at its advertised capacity, and none the submitter
        # had sealed before its claim arrived (which of those it gets is a race with the seal)
        assert (stood & contested) - sealed_hostile <= at_adv, (wid, sorted((stood & contested) - sealed_hostile - at_adv)[:5])
        sealed_first = len(at_adv - stood)
        figures.append(f"adv={adv:g}: hostile_results={len(stood)}/{n} contested={len(contested)} "
                       f"won_at_advertised={len(at_adv)} would_win_at_claimed_1e6={len(at_word)} "
                       f"uncontested={n - len(honest)} open_when_written={(ra if wid == wa else rb)['open_tasks']} "
                       f"won_but_sealed_first={sealed_first} hostile_sealed_before_honest_claim={len(sealed_hostile)}")
    refused = _hostile_refusals(net, state)
    _alive(net)
    print("\nFIGURE hostile race: " + " | ".join(figures) + f" | refused={dict(refused)}")


async def test_claiming_everything_and_never_working_holds_nothing_for_long(net: Net) -> None:
    """Backdated to the submit, at an advertised capacity of 1e6, the hostile peer claims every
    task and then does nothing (no start, no result) while it keeps heartbeating. After
    task_timeout_s without any work of its own, each attempt it holds is recorded lost by its
    judge and the honest peers run the task: the workflow completes with the model's vectors.
    The target waits behind a priority-1 workflow on every honest peer, so its tasks are still
    unstarted when the hostile claims land (a race it wins by score, whatever the timing)."""
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 300
    busy = (await call(n1, "submit_workflow", name="hoard-busy", tasks=_tasks(1500, "hoard-busy", long=True),
                       priority=1))["workflow_id"]
    wid = (await call(n1, "submit_workflow", name="hoard", tasks=_tasks(n, "hoard"), priority=10))["workflow_id"]
    rep = await h.cmd("race", workflow_id=wid, adv_capacity=1e6, claim_capacity=1e6, hoard=True)
    await _release(net, busy, rep["events"])
    final = await _finish(net, wid, n)
    final = (await settled(net.honest, [wid], timeout=90))[wid]
    state = fold_clock(n1.data_dir)
    tasks = [state.task(tid) for tid in state.workflows[wid].task_ids]
    # attempts 1 it won and nobody had started (a started honest loser finishes: its result stands)
    held = [t for t in tasks if (o := t.owner(1)) is not None and o.peer == h.peer_id
            and not any(a == 1 for a, _ in t.started)]
    lost = [t for t in held if (f := t.fail_for(1)) is not None and f.expired and t.counts(f)
            and "started or finished no task" in f.error]
    _alive(net)
    print(f"\nFIGURE hostile hoard: tasks={n} hoarded_attempt_1={len(held)} recorded_lost={len(lost)} "
          f"task_timeout_s={HOARD_TIMEOUT_S:g} state={final['state']}")
    assert held, "the hoarder owned no attempt: the attack did not land"
    assert len(lost) == len(held), [t.errors() for t in held if t not in lost][:2]
    assert all(t["peer"] != h.peer_id and _norm(t) > 0.5 for t in final["tasks"])


async def test_wrong_results_are_outvoted_with_replicas(net: Net) -> None:
    """The capacity-1e6 race with zero vectors again, on ``replicas=2`` workflows. Slot 0 of every
    task: the hostile wins those races, its zero vector disagrees with the honest replica, a
    reserve replica runs and the honest majority stands; every honest node counts the hostile
    peer outvoted, past the threshold after which it assigns it no work. Every slot at once: it
    is one peer with one vote however many slots it holds, so no zero vector is ever accepted
    (a task it holds wholly fails with "replicas disagree" rather than carry its answer; the
    fold-level property is in tests/scheduler/test_replicas.py; its claims on the dormant
    reserves do not count). Both targets wait behind a priority-1 workflow, so the claims land
    before any replica ran."""
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 40
    # the target waits behind a priority-1 workflow on every honest peer, so its replicas are
    # unstarted (and unsealed) when the hostile claims land: the race is decided by score, not
    # by who finished first (idle peers had run and sealed it before the claims arrived)
    busy = (await call(n1, "submit_workflow", name="outvote-busy", tasks=_tasks(800, "outvote-busy", long=True),
                       priority=1))["workflow_id"]
    wid = (await call(n1, "submit_workflow", name="outvote", replicas=2, priority=10,
                      tasks=_tasks(n, "outvote", long=True)))["workflow_id"]
    rep = await h.cmd("race", workflow_id=wid, adv_capacity=1e6, claim_capacity=1e6)
    await _release(net, busy, rep["events"])
    final = await _finish(net, wid, n)
    final = (await settled(net.honest, [wid], timeout=90))[wid]
    disputed = [t for t in final["tasks"] if h.peer_id in t.get("disputed_by", [])]
    for t in final["tasks"]:
        assert t["state"] == "done" and h.peer_id not in t["peers"] and len(set(t["peers"])) == 2, t
        assert _norm(t) > 0.5, t["task_id"]  # the model's vector, never the zero one
    assert disputed, "the hostile won no slot: the attack did not land"
    for p in net.honest:
        listed = {q["peer_id"]: q for q in (await call(p, "list_peers"))["peers"]}
        assert listed[h.peer_id]["outvoted"] >= len(disputed) > 3, (p.name, listed[h.peer_id]["outvoted"])

    busy2 = (await call(n1, "submit_workflow", name="outvote-all-busy", tasks=_tasks(400, "outvote-all-busy", long=True),
                        priority=1))["workflow_id"]
    wid2 = (await call(n1, "submit_workflow", name="outvote-all", replicas=2, priority=10,
                       tasks=_tasks(20, "outvote-all", long=True)))["workflow_id"]
    rep2 = await h.cmd("race", workflow_id=wid2, adv_capacity=1e6, claim_capacity=1e6, slots="all")
    await _release(net, busy2, rep2["events"])
    for p in net.honest:
        await wait_done(p, wid2, 300)
    final2 = (await settled(net.honest, [wid2], timeout=90))[wid2]
    outcomes: Counter[str] = Counter()
    for t in final2["tasks"]:
        if t["state"] == "done":
            assert h.peer_id not in t["peers"] and _norm(t) > 0.5, t
            outcomes["done, honest"] += 1
        else:
            assert t["state"] == "failed" and "replicas disagree" in t["error"], t
            outcomes["failed, replicas disagree"] += 1
    state = fold_clock(n1.data_dir)
    wf2 = state.workflows[wid2]
    slots = [state.task(tid) for tid in wf2.physical_ids()]
    held = sum(1 for t in slots if (r := t.result) is not None and r.peer == h.peer_id)
    _alive(net)
    print(f"\nFIGURE hostile replicas: slot0 race: tasks={n} hostile_outvoted={len(disputed)} wrong_accepted=0 | "
          f"all-slots race: {dict(outcomes)} slots_with_hostile_result={held}/{len(slots)} wrong_accepted=0")


async def test_claims_written_after_seeing_honest_claims_never_win(net: Net) -> None:
    """Over everything it holds (it admits having seen the honest claims): a claim on attempt 1
    at capacity 1e6 (advertised 1e6 just before) and a takeover of attempt 2, each with a zero
    result, for every task. Late claims never own; the takeover is refused (attempt 1 had not
    ended); no hostile result stands; attempts stay 1."""
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 120
    wid = await _submit(n1, "late", n)
    rep = await h.cmd("late", workflow_id=wid, capacity=1e6)
    assert len(rep["targets"]) == n
    final = await _finish(net, wid, n)
    await wait_holds(net, rep["events"])
    final = (await settled(net.honest, [wid], timeout=90))[wid]
    assert all(t["peer"] != h.peer_id and t["attempts"] == 1 and abs(_norm(t) - 1) < 1e-3 for t in final["tasks"]), \
        [t for t in final["tasks"] if t["peer"] == h.peer_id or t["attempts"] != 1][:3]
    for p in net.honest:
        state = fold_clock(p.data_dir)
        takeovers = [r for r in state.refused() if r.author == h.peer_id and r.op == "task.claim"
                     and "attempt 2 while attempt 1 had not failed or expired" in r.reason]
        owned = [tid for tid in state.workflows[wid].task_ids
                 if (o := state.task(tid).owner(1)) is not None and o.peer == h.peer_id]
        assert len(takeovers) >= n and not owned, (p.name, len(takeovers), owned[:3])
    _alive(net)
    print(f"\nFIGURE hostile late: tasks={n} late_claims={n} (attempt 1) + {n} takeovers (attempt 2) "
          f"open_when_written={len(rep['open_targets'])} hostile_results_standing=0 attempts_raised=0")


async def _rewrite(net: Net, name: str, backdate: bool) -> tuple[dict[str, Any], list[str]]:
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 100
    wid = await _submit(n1, name, n)
    await _finish(net, wid, n)
    before = {p.name: await full_status(p, wid) for p in net.honest}
    rep = await h.cmd("rewrite", workflow_id=wid, attempts=[1, 2, 3], backdate=backdate)
    assert rep["open_tasks"] == 0
    await wait_holds(net, rep["events"])
    diffs = []
    replaced = {}
    for p in net.honest:
        after = await full_status(p, wid)
        diffs += [f"{p.name}: {d}" for d in status_diff(before[p.name], after, limit=4)]
        replaced[p.name] = sum(1 for t, b in zip(after["tasks"], before[p.name]["tasks"])
                               if t.get("result") != b.get("result"))
        zeros = sum(1 for t in after["tasks"] if t.get("peer") == h.peer_id and _norm(t) == 0.0)
        diffs += [f"{p.name}: {zeros}/{n} results are now the hostile peer's zero vectors"] if zeros else []
    _alive(net)
    print(f"\nFIGURE hostile rewrite backdate={backdate}: tasks={n} ops={rep['ops']} events={len(rep['events'])} "
          f"results_replaced={replaced} state_after=" + str({p.name: (await call(p, "get_workflow_status", workflow_id=wid, limit=1))["state"]
                                                             for p in net.honest}))
    return rep, diffs


async def test_rewriting_a_completed_workflow_changes_nothing(net: Net) -> None:
    _, diffs = await _rewrite(net, "rewrite", backdate=False)
    assert not diffs, "\n".join(diffs)


async def test_rewriting_a_completed_workflow_with_backdated_claims_changes_nothing(net: Net) -> None:
    """Backdated claims (over the submit alone) race the honest ones by score and could win;
    the submitter's seals (workflow.accept, written as each task completes) make the results
    it saw stand whatever arrives later."""
    _, diffs = await _rewrite(net, "rewrite-backdated", backdate=True)
    assert not diffs, "\n".join(diffs)


async def test_expiring_every_attempt_as_soon_as_it_is_owned_fails_nothing(net: Net) -> None:
    """A patient attacker: each attempt of every open task is expired the moment another peer
    owns it (one attempt per round, over its heads, so from round 2 it is active in the workflow
    and a candidate judge). An attempt may end only where the hostile peer is its judge or the
    fold names none (the submitter owning its own task before anyone else wrote to the workflow:
    measured, every such attempt 1). Whether a task then fails for good is a race between the
    owner's result and the hostile expiry of the last attempt, where it judges that: when it
    happens the test reports xfail with the numbers (the rule allows it; see the report)."""
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 150
    wid = await _submit(n1, "persist", n, long=True)
    rep = await h.cmd("persist", workflow_id=wid, timeout=120)
    for p in net.honest:
        await wait_done(p, wid, 240)
    await wait_holds(net, rep["events"])
    final = (await settled(net.honest, [wid], timeout=90))[wid]
    state = fold_clock(n1.data_dir)
    tasks = [state.task(tid) for tid in state.workflows[wid].task_ids]
    ended: Counter[str] = Counter()  # the hostile expiries that count, by the right the fold found in their past
    for t in tasks:
        for f in t.fails.values():
            if f.peer != h.peer_id or not t.counts(f):
                continue
            ended[_right(t, f, h.peer_id)] += 1
    failed = [t for t in final["tasks"] if t["state"] == "failed"]
    raised = Counter(t["attempts"] for t in final["tasks"])
    _alive(net)
    print(f"\nFIGURE hostile persist: tasks={n} expiries={rep['ops']} by_attempt={rep['by_attempt']} "
          f"counted={sum(ended.values())} by_right={dict(ended)} attempts={dict(raised)} "
          f"failed={len(failed)} state={final['state']} errors_of_failed={[t.get('error') for t in failed[:2]]}")
    assert not [k for k in ended if k.startswith("NO RIGHT")], ended
    last = {t.task_id for t in tasks if t.owner(3) is not None and t.judge(3) in (h.peer_id, None)}
    print(f"FIGURE hostile persist: the hostile peer may end the last attempt of {len(last)} tasks "
          f"(judge of attempt 3, or none named); each fails for good if its expiry lands before the owner's result")
    if failed:  # the rule allows it (the judge of the last attempt); whether it happens is a race with the owner
        pytest.xfail(f"{len(failed)}/{n} tasks failed for good through expiries of the hostile peer as judge of "
                     f"their last attempt: {[t['task_id'] for t in failed[:3]]}")
    assert final["state"] == "completed"


async def test_an_expiry_flood_fails_nothing(net: Net) -> None:
    """The hostile peer serves the model in its heartbeats (so honest peers rank it, wait for it,
    then claim its share a lease later, with its advert in their past: it is a candidate judge
    of those tasks), never claims, and floods expiries of attempts 1-3 of every task. Only the
    attempts it judges can end — and those for which the fold names no judge (``judge`` is None:
    the owner was the only candidate, e.g. the submitter claiming its own tasks before any other
    peer wrote to the workflow; then anyone's expiry counts); nothing fails; a live owner that
    had started continues. Tasks run twice are counted too: most come from the fallback race the
    never-claiming hostile causes (two honest peers claiming its share at once), not the flood."""
    h = net.hostile
    await h.cmd("beat", models=[DEFAULT_MODEL], capacity=2.0)
    try:
        await _ready(net, serving=True)
        n1 = net.honest[0]
        n = 300
        wid = await _submit(n1, "flood", n, long=True)
        touch = await h.cmd("touch", workflow_id=wid, capacity=2.0)
        rep = await h.cmd("flood", workflow_id=wid, attempts=[1, 2, 3], batch=250)
        assert rep["ops"] == 3 * n
        final = await _finish(net, wid, n)
        await wait_holds(net, touch["events"] + rep["events"])
        final = (await settled(net.honest, [wid], timeout=90))[wid]
        raised = {t["task_id"] for t in final["tasks"] if t["attempts"] > 1}
        assert all(t["peer"] != h.peer_id and abs(_norm(t) - 1) < 1e-3 for t in final["tasks"])
        state = fold_clock(n1.data_dir)
        tasks = [state.task(tid) for tid in state.workflows[wid].task_ids]
        # whose expiry of attempt 1 counts alone: the judge; nobody named (None) means anyone's
        judged = {t.task_id for t in tasks if t.judge(1) == h.peer_id}
        anyone = {t.task_id for t in tasks if t.judge(1) is None}
        counted = {t.task_id for t in tasks if any(f.peer == h.peer_id and t.counts(f) for f in t.fails.values())}
        rights = Counter(_right(t, f, h.peer_id) for t in tasks for f in t.fails.values()
                         if f.peer == h.peer_id and t.counts(f))
        ended_any = {t.task_id for t in tasks if any(t.counts(f) for f in t.fails.values())}
        continued = {t.task_id for t in tasks if t.attempt > 1 and (o := t.owner()) is not None and o.continues}
        owners = Counter(t.owner(1).peer for t in tasks if t.owner(1) is not None)
        runs = run_counts(clock_ops(n1.data_dir), {wid})
        twice = set(runs.ran_twice)
        refused = [f for t in tasks for f in t.fails.values() if f.peer == h.peer_id and f.expired and not t.counts(f)]
        _alive(net)
        names = {p.peer_id: p.name for p in net.honest}
        print(f"\nFIGURE hostile flood: tasks={n} expiries={rep['ops']} in {len(rep['events'])} events "
              f"({rep['seconds']:.3f} s) open_when_written={rep['open_tasks']} hostile_judge_of={len(judged)} "
              f"judge_none(anyone)={len(anyone)} counted={len(counted)} (judged {len(counted & judged)}, "
              f"anyone {len(counted & anyone)}; by right in the expiry's past {dict(rights)}) refused={len(refused)} attempts_raised={len(raised)} "
              f"(judged {len(raised & judged)}, anyone {len(raised & anyone)}) continuations={len(continued)} "
              f"ran_twice={len(twice)} (of them with a counted hostile expiry {len(twice & counted)}) failed=0 owners_attempt1={ {names.get(k, 'hostile'): v for k, v in owners.items()} }")
        assert not [k for k in rights if k.startswith("NO RIGHT")], rights
        assert raised <= ended_any, sorted(raised - ended_any)[:5]
        assert len(refused) + len(counted) == 3 * n, (len(refused), len(counted))
    finally:
        await h.cmd("beat", models=[], capacity=2.0)


async def test_a_forking_worker_is_named_and_every_peer_agrees(net: Net) -> None:
    """The fold is exact for authors that fork (p2p/scheduler/causality.py): whatever the races
    it wins, every honest node reads the workflow alike, field by field, names the forking peer
    in ``get_node_info``, and keeps working."""
    await _ready(net)
    n1 = net.honest[0]
    h = net.hostile
    n = 20
    wid = await _submit(n1, "fork", n, long=True)
    rep = await h.cmd("fork", workflow_id=wid)
    assert rep["ok"] and rep["seq"] >= 1, rep
    await wait_holds(net, rep["events"])
    final = await _finish(net, wid, n)  # completed everywhere, every field the same on all three
    for p in net.honest:
        assert h.peer_id in (await call(p, "get_node_info"))["clock"]["forked"], p.name
        assert fold_clock(p.data_dir).forked_authors() == [h.peer_id], p.name
    won = sum(1 for t in final["tasks"] if t["peer"] == h.peer_id)
    _alive(net)
    print(f"\nFIGURE hostile fork: tasks={n} won_by_the_forker={won} state=completed, the same on "
          f"{len(net.honest)}/3 nodes, each naming the forker")

