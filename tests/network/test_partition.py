"""A real partition (issue 7 item 9): four nodes in network namespaces on two switched LANs joined
by one veth trunk. With a workflow running across both halves, the trunk goes down for 30 s
while each half submits and runs work of its own; then it comes back. Both halves keep working;
soon after healing every node holds every clock event that any node held when the link came
back (read from the nodes' SQLite files, read-only); nothing is lost; and once the work is done
every peer holds one clock hash and ``get_workflow_status`` agrees on every peer, every field of
every page, results included.

Why not "one clock hash soon after healing": the work keeps running after healing, every
finished task is a new event, so four hashes sampled one after another match only once the
work is over; that measured "the work finished", not "the halves healed" (it failed once in CI
at 31.8 s with the exchange itself done in a few seconds).

MCP servers bind 127.0.0.1 inside their namespaces; ``ns_forward.py`` relays each one to a port
in the test's namespace through a unix socket, so the usual ``tests.cluster`` helpers drive them.
Skips, saying why, where namespaces cannot be made (not Linux, not root, no iproute2)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster import call, eventually, settled, wait_done, wait_peers
from tests.conftest import DEFAULT_MODEL
from tests.netns import SplitLan, split_lan
from tests.network.nsnodes import NsNodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUBNET = "10.78.0"  # only ever configured inside the namespaces below
CUT_S = 30.0
# "Converge within seconds of healing": every node holds every event any node held at healing
# this soon after the link is back.
HEAL_BOUND_S = 15.0


@pytest.fixture
def lan() -> Iterator[SplitLan]:
    with split_lan("part", 2, 2, SUBNET) as l:
        yield l


def _read_cids(db: Path, table: str, cids: list[bytes] | None = None) -> set[bytes]:
    """CIDs in ``table`` of a node's clock file, opened read-only (the node keeps writing)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        if cids is None:
            return {bytes(r[0]) for r in con.execute(f"SELECT cid FROM {table}")}  # noqa: S608 - fixed names
        found: set[bytes] = set()
        for i in range(0, len(cids), 500):
            chunk = cids[i:i + 500]
            q = f"SELECT cid FROM {table} WHERE cid IN ({','.join('?' * len(chunk))})"  # noqa: S608
            found |= {bytes(r[0]) for r in con.execute(q, chunk)}
        return found
    finally:
        con.close()


def _tasks(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"{tag} partition sentence {i} about a bridge."} for i in range(n)]


async def test_a_30_s_partition_heals_with_nothing_lost_and_one_answer(
    tmp_path: Path, shared_cache_dir: Path, lan: SplitLan
) -> None:
    nodes = NsNodes(tmp_path, shared_cache_dir)
    try:
        n1 = nodes.start("n1", lan.left[0], f"{SUBNET}.1", [])  # one at a time: the first may export the model
        n2 = nodes.start("n2", lan.left[1], f"{SUBNET}.2", [n1])
        n3 = nodes.start("n3", lan.right[0], f"{SUBNET}.3", [n1])
        n4 = nodes.start("n4", lan.right[1], f"{SUBNET}.4", [n1, n3])
        peers = [n1, n2, n3, n4]
        for p in peers:
            await wait_peers(p, [o for o in peers if o is not p], timeout=120)

        across = (await call(n1, "submit_workflow", name="across", tasks=_tasks(400, "x")))["workflow_id"]

        async def right_side_working() -> bool:
            st = await call(n1, "get_workflow_status", workflow_id=across, limit=400)
            return any(t.get("peer") in (n3.peer_id, n4.peer_id) for t in st["tasks"])

        await eventually(right_side_working, 120, "the right half to hold tasks of the shared workflow")
        lan.cut()
        cut_at = trio.current_time()
        # Priority 1: each half's own work runs ahead of what is left of the shared workflow.
        left = (await call(n2, "submit_workflow", name="left", tasks=_tasks(150, "l"), priority=1))["workflow_id"]
        right = (await call(n4, "submit_workflow", name="right", tasks=_tasks(150, "r"), priority=1))["workflow_id"]
        # Each half works on its own workflow while cut off from the other.
        async def both_halves_work() -> bool:
            done_l = (await call(n2, "get_workflow_status", workflow_id=left, limit=1))["completed"]
            done_r = (await call(n4, "get_workflow_status", workflow_id=right, limit=1))["completed"]
            return done_l >= 10 and done_r >= 10

        await eventually(both_halves_work, CUT_S, "each half to run its own work during the cut")
        worked_while_cut = trio.current_time() - cut_at
        with pytest.raises(AssertionError):  # and the other half's work never crossed the cut
            await call(n1, "get_workflow_status", workflow_id=right, limit=1)
        await trio.sleep(max(0.0, CUT_S - (trio.current_time() - cut_at)))  # the stimulus: the link stays down >= 30 s

        lan.heal()
        healed_at = trio.current_time()
        dbs = {p.name: p.data_dir / "clock.sqlite" for p in peers}
        # Every event any node held at healing: the union of the heads (each head stands for its
        # whole past; a node stores an event only once it holds the event's parents).
        at_heal: set[bytes] = set()
        for db in dbs.values():
            at_heal |= await trio.to_thread.run_sync(_read_cids, db, "heads")
        want = sorted(at_heal)
        missing: dict[str, int] = {}

        async def everyone_holds_the_heal_time_events() -> bool:
            for name, db in dbs.items():
                held = await trio.to_thread.run_sync(_read_cids, db, "events", want)
                missing[name] = len(want) - len(held)
            return not any(missing.values())

        try:
            await eventually(everyone_holds_the_heal_time_events, 120,
                             "every node to hold every event any node held at healing")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; heads missing per node: {missing}") from None
        converged_s = trio.current_time() - healed_at
        print(f"\nFIGURE partition: heal_time_events_everywhere_after={converged_s:.1f}s")
        for wid in (across, left, right):
            await wait_done(n4, wid, 300)
        statuses = await settled(peers, [across, left, right], timeout=120)  # one clock hash, too
        agreed_s = trio.current_time() - healed_at
        print(f"\nFIGURE partition: cut={CUT_S:g}s both_halves_10_done_in={worked_while_cut:.1f}s "
              f"heal_time_events_everywhere_after={converged_s:.1f}s one_hash_and_field_agreement_after_heal={agreed_s:.1f}s")
        for wid, n in ((across, 400), (left, 150), (right, 150)):
            st = statuses[wid]
            assert st["state"] == "completed" and st["completed"] == n, {k: v for k, v in st.items() if k != "tasks"}
            assert all("result" in t for t in st["tasks"]), "every result reached every peer"
        assert converged_s <= HEAL_BOUND_S, (
            f"the halves took {converged_s:.1f} s after healing to hold each other's events (bound {HEAL_BOUND_S:g} s)")
    finally:
        nodes.stop_all()
    for p in nodes.peers:
        assert "Traceback" not in p.log_text(), p.log_text()[-3000:]
