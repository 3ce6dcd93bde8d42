"""A hostile peer for the trust tests (issue 8): a real p2p node that joins like any other and
then writes, through the clock's own API, the ops an attacker would.

    python -m tests.network.hostile_peer --data-dir DIR --bootstrap MULTIADDR [--name NAME]

What it is made of: the project's own ``p2p.node.Node`` (identity, Merkle clock in SQLite,
libp2p host with the network key taken from the environment exactly as ``p2p start`` takes it,
replication, heartbeats), with one change: its scheduler never decides anything, so it claims,
runs, expires and advertises nothing by itself. Every op it writes comes from a command. Its
events are signed by its own key and announced by its replicator like any local event
(``Scheduler._after_local_append``), so honest peers receive them exactly as they receive each
other's. It cannot forge other peers' signatures; everything else a peer with the key can write,
it writes.

Two ways of writing, both real:

- *over its heads* (``MerkleClock.append``): the event names every event this peer holds as
  parents, as an honest peer's would: it admits having seen everything;
- *backdated* (``create_event`` with chosen parents, merged with ``MerkleClock.add_blocks``):
  the event names only the workflow's submit (and this peer's own previous event, so its
  sequence stays one chain, no fork) as parents: it pretends to have written the instant it saw
  the submit, before any honest claim or result. The DAG cannot tell that from a fast peer.

Protocol: one JSON object per line on stdin, one JSON line per command on stdout (the first
line, ``{"ready": ...}``, comes when the node is up). Logs go to stderr.

Commands (``cmd``):

- ``info``: peer id, addresses, peers it hears (``peers``), and those serving models;
- ``beat``: what its heartbeat claims from now on (``models``, ``capacity``);
- ``touch``: once it knows ``workflow_id``, write a ``peer.advertise`` over its heads at once
  (so honest claims written after that have it in their past: it is then "active" in the
  workflow, a candidate judge);
- ``steer``: ``workflow.cancel`` and ``workflow.reprioritize`` (to ``priority``) of a workflow;
- ``flood``: once every task of ``workflow_id`` has an owner (or is finished) in its fold, a
  ``task.fail{expired}`` for each attempt in ``attempts`` of every task, ``batch`` ops an event;
- ``persist``: expire each attempt of every open task the moment another peer owns it, round
  after round, until the workflow ends;
- ``race``: backdated, a ``peer.advertise`` (``adv_capacity``) and a claim on attempt 1 of every
  task (``claim_capacity``), then a zero-vector result for each claim; of a replicated workflow,
  slot 0 of each task, or every slot with ``"slots": "all"``;
- ``late``: once every task has an honest owner in its fold, over its heads: a
  ``peer.advertise`` (``capacity``), then for every task it does not own a claim on attempt 1
  and on attempt 2 (a takeover), each with a zero-vector result;
- ``rewrite``: a ``peer.advertise`` (1e6) and, for every attempt in ``attempts`` of every task,
  a claim (capacity 1e6) and a zero-vector result; over its heads, or backdated (``backdate``);
- ``fork``: a sibling of this peer's newest event — the same seq, not descending from it,
  backdated to the workflow's submit — holding a ``peer.advertise`` (capacity 1) and, for
  every task, a claim on attempt 1 and a zero-vector result: a forking worker racing the
  honest claims;
- ``quit``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import structlog
import trio

from p2p.clock import Event
from p2p.clock.cids import cid_from_bytes
from p2p.clock.event import create_event
from p2p.node import Node
from p2p.scheduler.results import pack_result
from p2p.scheduler.state import TERMINAL_TASK, State, WorkflowState

log = structlog.get_logger("tests.hostile")

EMBEDDING_DIM = 384  # the default model's
CLAIM_BATCH = 250  # claims per event (under clock.max_ops_per_event = 256)
DONE_BATCH = 100  # zero results per event (1.5 KiB each: well under clock.max_block_bytes)


class HostileNode(Node):
    """A Node whose scheduler decides nothing, and whose heartbeat says what it is told."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.beat_models: list[str] = []  # before Node's own __init__, which reads it
        super().__init__(*args, **kwargs)
        self.scheduler.decide = lambda task_ids: None  # type: ignore[method-assign]

    def local_models(self) -> list[str]:
        return list(self.beat_models)


class Hostile:
    def __init__(self, node: HostileNode) -> None:
        self.node = node
        self.clock = node.clock
        self.me = node.peer_id
        self.last_own: Any = None  # CID of the newest event this peer wrote
        for ev in node.clock.events():
            if ev.author == self.me:
                self.last_own = ev.cid

    @property
    def state(self) -> State:
        return self.node.scheduler.state

    # ------------------------------------------------------------------ writing

    def _announce(self, ev: Event) -> Event:
        self.node.scheduler._after_local_append(ev)  # announced like any local event
        self.last_own = ev.cid
        return ev

    def over_heads(self, ops: list[dict[str, Any]]) -> Event:
        return self._announce(self.clock.append(ops, durable=False))

    def backdated(self, ops: list[dict[str, Any]], parents: list[Any]) -> Event:
        ev = create_event(self.clock.identity, parents, self.clock._seq + 1, ops)
        res = self.clock.add_blocks([(ev.cid, ev.data)])
        if not res.applied:
            raise RuntimeError(f"backdated event not applied: rejected={res.rejected} missing={len(res.missing)}")
        return self._announce(res.applied[0])

    async def write(self, batches: list[list[dict[str, Any]]], backdate_to: Any = None) -> dict[str, Any]:
        """Write each batch as one event: over the heads, or as a chain starting at
        ``backdate_to`` (plus this peer's own previous event)."""
        t0 = time.perf_counter()
        cids = []
        prev: list[Any] | None = None
        if backdate_to is not None:
            prev = [backdate_to] + ([self.last_own] if self.last_own is not None else [])
        for ops in batches:
            if not ops:
                continue
            if prev is None:
                ev = self.over_heads(ops)
            else:
                ev = self.backdated(ops, prev)
                prev = [ev.cid]
            cids.append(str(ev.cid))
            await trio.lowlevel.checkpoint()
        await self.clock.flush_async(durable=True)
        return {"events": cids, "ops": sum(len(b) for b in batches), "seconds": round(time.perf_counter() - t0, 4)}

    # ----------------------------------------------------------------- reading

    async def until(self, what: str, pred: Callable[[], bool], timeout: float = 120) -> None:
        """Wait (on the scheduler's change notifier) until ``pred()`` holds."""
        with trio.move_on_after(timeout):
            while not pred():
                with trio.move_on_after(0.5):  # liveness changes do not fire it; look again now and then
                    await self.node.scheduler.changed.wait()
            return
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")

    async def workflow(self, wid: str) -> WorkflowState:
        await self.until(f"workflow {wid}", lambda: wid in self.state.workflows)
        return self.state.workflows[wid]

    def owned_or_over(self, wf: WorkflowState) -> bool:
        st = self.state
        for tid in wf.task_ids:
            t = st.task(tid)
            if st.task_status(t) not in TERMINAL_TASK and t.owner() is None:
                return False
        return True

    def open_tasks(self, wf: WorkflowState) -> int:
        return sum(1 for tid in wf.task_ids if self.state.task_status(self.state.task(tid)) not in TERMINAL_TASK)

    def submit_event(self, wf: WorkflowState) -> Any:
        return cid_from_bytes(wf.submit_stamp[1])

    def advert(self, wf: WorkflowState, capacity: float) -> dict[str, Any]:
        """A ``peer.advertise`` of every model the workflow's tasks name, with the very content ids
        they pin (it has not got those files: it says so anyway)."""
        models = sorted({self.state.task(t).spec.model for t in wf.task_ids})
        cids = {s.model: s.model_cid for s in (self.state.task(t).spec for t in wf.task_ids) if s.model_cid}
        return {"op": "peer.advertise", "capacity": capacity, "models": models, "model_cids": cids}

    @staticmethod
    def zero_done(tid: str, attempt: int) -> dict[str, Any]:
        return {"op": "task.done", "task_id": tid, "attempt": attempt,
                "result": pack_result({"embedding": [0.0] * EMBEDDING_DIM}), "stats": {"ms": 0.1, "backend": "zeros"}}

    @staticmethod
    def chunks(ops: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
        return [ops[i:i + n] for i in range(0, len(ops), n)]

    # ---------------------------------------------------------------- commands

    async def info(self, cmd: dict[str, Any]) -> dict[str, Any]:
        recs = self.node.peers.records()
        return {"peer_id": self.me, "addrs": self.node.listen_addrs(),
                "peers": sorted(r.heartbeat.peer_id for r in recs if r.heartbeat.peer_id != self.me),
                "serving": sorted(r.heartbeat.peer_id for r in recs if r.heartbeat.peer_id != self.me and r.heartbeat.models)}

    async def beat(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.node.beat_models = list(cmd.get("models", []))
        self.node.capacity = float(cmd.get("capacity", self.node.capacity))
        self.node._caps = None
        return {"models": self.node.beat_models, "capacity": self.node.capacity}

    async def touch(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        out = await self.write([[self.advert(wf, float(cmd.get("capacity", 2.0)))]])
        return {**out, "open_tasks": self.open_tasks(wf)}

    async def steer(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        wid = wf.workflow_id
        out = await self.write([[{"op": "workflow.cancel", "workflow_id": wid},
                                 {"op": "workflow.reprioritize", "workflow_id": wid, "priority": int(cmd.get("priority", 10))}]])
        return {**out, "open_tasks": self.open_tasks(wf), "submitter": wf.submitter}

    async def flood(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        await self.until("every task owned", lambda: self.owned_or_over(wf))
        open_before = self.open_tasks(wf)
        judged = sum(1 for t in wf.task_ids if self.state.task(t).attempt and self.state.task(t).judge(1) == self.me)
        ops = [{"op": "task.fail", "task_id": tid, "attempt": a, "error": "owner silent (says the hostile peer)",
                "retryable": True, "expired": True}
               for tid in wf.task_ids for a in cmd.get("attempts", (1, 2, 3))]
        out = await self.write(self.chunks(ops, int(cmd.get("batch", 250))))
        return {**out, "open_tasks": open_before, "judged_here": judged}

    async def persist(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Expire each attempt of every open task as soon as someone else owns it (over its
        heads, so from round 2 on it is active in the workflow), until the workflow is over or
        ``timeout`` passes: a patient attacker, one attempt per round."""
        wf = await self.workflow(cmd["workflow_id"])
        sent: set[tuple[str, int]] = set()
        events: list[str] = []
        with trio.move_on_after(float(cmd.get("timeout", 90))):
            while self.open_tasks(wf):
                ops = []
                for tid in wf.task_ids:
                    t = self.state.task(tid)
                    k = t.attempt
                    if not k or (tid, k) in sent or self.state.task_status(t) in TERMINAL_TASK:
                        continue
                    own = t.owner(k)
                    if own is None or own.peer == self.me or t.fail_for(k) is not None:
                        continue
                    ops.append({"op": "task.fail", "task_id": tid, "attempt": k, "retryable": k < 3,
                                "error": "owner silent (says the hostile peer)", "expired": True})
                    sent.add((tid, k))
                if ops:
                    events += (await self.write(self.chunks(ops, 250)))["events"]
                else:
                    with trio.move_on_after(0.5):
                        await self.node.scheduler.changed.wait()
        by_attempt: dict[int, int] = {}
        for _, k in sent:
            by_attempt[k] = by_attempt.get(k, 0) + 1
        return {"events": events, "ops": len(sent), "by_attempt": by_attempt}

    async def race(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        open_before = self.open_tasks(wf)
        # a replicated workflow: slot 0 of each task (the default), or every slot ("slots": "all")
        targets = wf.physical_ids() if cmd.get("slots") == "all" else wf.task_ids
        claims = [{"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": float(cmd["claim_capacity"])}
                  for tid in targets]
        # "hoard": claim everything first and never work (no start, no result)
        dones = [] if cmd.get("hoard") else [self.zero_done(tid, 1) for tid in targets]
        batches = [[self.advert(wf, float(cmd["adv_capacity"]))]] + self.chunks(claims, CLAIM_BATCH) + self.chunks(dones, DONE_BATCH)
        out = await self.write(batches, backdate_to=self.submit_event(wf))
        return {**out, "open_tasks": open_before}

    async def late(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        await self.until("every task owned", lambda: self.owned_or_over(wf))
        targets = [tid for tid in wf.task_ids
                   if (own := self.state.task(tid).owner(1)) is None or own.peer != self.me]
        open_targets = [t for t in targets if self.state.task_status(self.state.task(t)) not in TERMINAL_TASK]
        cap = float(cmd.get("capacity", 1e6))
        claims = [{"op": "task.claim", "task_id": tid, "attempt": a, "capacity": cap} for a in (1, 2) for tid in targets]
        dones = [self.zero_done(tid, a) for a in (1, 2) for tid in targets]
        batches = [[self.advert(wf, cap)]] + self.chunks(claims, CLAIM_BATCH) + self.chunks(dones, DONE_BATCH)
        out = await self.write(batches)
        return {**out, "targets": targets, "open_targets": open_targets}

    async def rewrite(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        attempts = list(cmd.get("attempts", (1, 2, 3)))
        claims = [{"op": "task.claim", "task_id": tid, "attempt": a, "capacity": 1e6} for a in attempts for tid in wf.task_ids]
        dones = [self.zero_done(tid, a) for a in attempts for tid in wf.task_ids]
        batches = [[self.advert(wf, 1e6)]] + self.chunks(claims, CLAIM_BATCH) + self.chunks(dones, DONE_BATCH)
        out = await self.write(batches, backdate_to=self.submit_event(wf) if cmd.get("backdate") else None)
        return {**out, "open_tasks": self.open_tasks(wf)}


    async def fork(self, cmd: dict[str, Any]) -> dict[str, Any]:
        wf = await self.workflow(cmd["workflow_id"])
        if self.last_own is None:  # a sibling needs an event to be the sibling of
            self.over_heads([self.advert(wf, 1.0)])
        ops = [self.advert(wf, 1.0)]
        for tid in wf.task_ids:
            ops += [{"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": 1.0}, self.zero_done(tid, 1)]
        ev = create_event(self.clock.identity, [self.submit_event(wf)], self.clock._seq, ops)
        res = self.clock.add_blocks([(ev.cid, ev.data)])
        if not res.applied:
            raise RuntimeError(f"forked event not applied: rejected={res.rejected} missing={len(res.missing)}")
        self._announce(res.applied[0])
        await self.clock.flush_async(durable=True)
        return {"events": [str(ev.cid)], "seq": ev.seq, "open_tasks": self.open_tasks(wf)}


async def serve(args: argparse.Namespace) -> None:
    from p2p.settings import load_node_settings

    settings = load_node_settings(
        data_dir=str(args.data_dir), node_id=args.name,
        network={"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": list(args.bootstrap), "mdns": False},
    )
    async with HostileNode.open(settings.node_config()) as node:
        hostile = Hostile(node)
        handlers = {"info": hostile.info, "beat": hostile.beat, "touch": hostile.touch, "steer": hostile.steer,
                    "flood": hostile.flood, "persist": hostile.persist, "race": hostile.race, "late": hostile.late, "rewrite": hostile.rewrite,
                    "fork": hostile.fork}
        out = sys.stdout
        out.write(json.dumps({"ready": True, "peer_id": node.peer_id, "addrs": node.listen_addrs()}) + "\n")
        out.flush()
        stdin = trio.wrap_file(sys.stdin)
        while True:
            line = await stdin.readline()
            if not line:
                return
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                return
            try:
                reply = {"ok": True, **await handlers[cmd["cmd"]](cmd)}
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
                log.exception("command failed", cmd=cmd.get("cmd"))
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--name", default="hostile")
    args = parser.parse_args(argv)
    from mcp_server.log import configure_logging

    configure_logging("info")
    trio.run(serve, args)


if __name__ == "__main__":
    main()
