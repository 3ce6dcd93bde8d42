"""Search and run_inference from a node that does not serve the model (issue 13 item 2, issue 11
item 5): a connected peer that does runs it, over ``/ipfs-accelerate/infer/1.0.0``, between real
`p2p start` processes on loopback.

``agent`` serves no model (like a laptop that hands the work to the network); ``gpu`` serves the
default model. A p2p-only workflow submitted on ``agent`` runs on ``gpu``; ``search_workflow``,
``compare_texts`` and ``run_inference`` on ``agent`` must then give what ``gpu`` gives itself,
and say who computed it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mcp import Client

from tests.cluster import Cluster, Peer, call, call_error, eventually, wait_done
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AGENT_ENV = {"IPFS_ACCELERATE_INFERENCE__SERVE": "[]"}
DOCS = ["The cat slept on the warm windowsill.", "Stock markets fell sharply on Monday.",
        "A kitten curled up in the sun by the window.", "The recipe needs two cups of flour.",
        "Investors sold shares as prices dropped.", "Bake the bread for forty minutes."]


async def _sees_model(peer: Peer, other: Peer) -> None:
    async def seen() -> bool:
        listed = await call(peer, "list_peers")
        return any(p["peer_id"] == other.peer_id and DEFAULT_MODEL in p["models"] for p in listed["peers"])

    await eventually(seen, 60, f"{peer.name} to see {other.name} serving the model")


def _same_hits(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert [h["task_id"] for h in a["results"]] == [h["task_id"] for h in b["results"]], (a, b)
    assert np.allclose([h["score"] for h in a["results"]], [h["score"] for h in b["results"]], atol=1e-5)


async def test_a_node_without_the_model_searches_through_a_peer(cluster: Cluster) -> None:
    gpu = cluster.start("gpu")
    agent = cluster.start("agent", bootstrap=[gpu], env=AGENT_ENV)
    await _sees_model(agent, gpu)

    sub = await call(agent, "submit_workflow", name="docs", tag="p2p-only",
                     tasks=[{"model": DEFAULT_MODEL, "input": d} for d in DOCS])
    wid = sub["workflow_id"]
    assert (await wait_done(agent, wid))["state"] == "completed"
    await wait_done(gpu, wid)

    for query, best in [("a cat sleeping in the sunshine", {0, 2}), ("share prices went down", {1, 4})]:
        here = await call(agent, "search_workflow", workflow_id=wid, query=query, k=3)
        there = await call(gpu, "search_workflow", workflow_id=wid, query=query, k=3)
        assert here["embedded_by"] == gpu.peer_id and there["embedded_by"] == gpu.peer_id, (here, there)
        _same_hits(here, there)
        assert {int(h["task_id"].rsplit("/", 1)[1]) for h in here["results"][:2]} == best, here

    # run_inference of a model only gpu serves: gpu runs it, and the answer says so
    direct = await call(agent, "run_inference", model=DEFAULT_MODEL, inputs=DOCS[:2], format="floats")
    own = await call(gpu, "run_inference", model=DEFAULT_MODEL, inputs=DOCS[:2], format="floats")
    assert direct["peer"] == gpu.peer_id and own["peer"] == gpu.peer_id, (direct["peer"], own["peer"])
    assert np.allclose([o["embedding"] for o in direct["outputs"]], [o["embedding"] for o in own["outputs"]], atol=1e-5)
    compact = await call(agent, "run_inference", model=DEFAULT_MODEL, inputs=DOCS[:1])
    assert compact["peer"] == gpu.peer_id and compact["outputs"][0]["dim"] == 384

    texts = ["a cat", "a kitten", "a stock market crash"]
    here = await call(agent, "compare_texts", texts=texts, model=DEFAULT_MODEL)
    there = await call(gpu, "compare_texts", texts=texts, model=DEFAULT_MODEL)
    assert here["embedded_by"] == gpu.peer_id and np.allclose(here["matrix"], there["matrix"], atol=1e-5)
    assert here["matrix"][0][1] > here["matrix"][0][2]

    # bad input: a model no peer serves
    err = await call_error(agent, "compare_texts", texts=["a", "b"], model="no/such-model")
    assert "does not serve model 'no/such-model'" in err and "no connected peer does" in err, err

    # the serving peer gone: a clear error, not a hang
    cluster.kill(gpu)
    seen: list[str] = []

    async def refused() -> bool:
        async with Client(agent.url) as client:
            res = await client.call_tool("search_workflow", {"workflow_id": wid, "query": "a cat"})
        seen[:] = [" ".join(getattr(c, "text", "") for c in res.content)] if res.is_error else []
        return bool(seen)

    await eventually(refused, 120, "search on agent to fail once gpu is gone")
    # (before the connection is known to be gone, the failed request is named instead)
    assert f"cannot embed the query with '{DEFAULT_MODEL}'" in seen[0], seen
    assert "no connected peer does" in seen[0] or f"no peer that does could run it: {gpu.peer_id}" in seen[0], seen


async def test_a_frozen_peer_does_not_hold_up_run_inference(cluster: Cluster) -> None:
    """Two peers serve the model; the one ``agent`` asks first freezes (SIGSTOP, a closed laptop
    lid). Once its heartbeats have lapsed, ``run_inference`` on ``agent`` goes to the live one at
    once instead of waiting out the frozen one's 60 s request timeout; resumed, it answers again."""
    import signal

    import trio

    gpu1, gpu2 = cluster.start_many({"name": "gpu1"}, {"name": "gpu2"})
    agent = cluster.start("agent", bootstrap=[gpu1, gpu2], env=AGENT_ENV)
    await _sees_model(agent, gpu1)
    await _sees_model(agent, gpu2)
    first = await call(agent, "run_inference", model=DEFAULT_MODEL, inputs=DOCS[:1])
    frozen, live = (gpu1, gpu2) if first["peer"] == gpu1.peer_id else (gpu2, gpu1)
    assert first["peer"] == frozen.peer_id
    assert frozen.proc is not None
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        async def lapsed() -> bool:  # lease_s is 3 s in the harness
            listed = await call(agent, "list_peers")
            row = next((p for p in listed["peers"] if p["peer_id"] == frozen.peer_id), None)
            return row is None or row["last_seen_s"] > 4.0

        await eventually(lapsed, 30, "agent to stop hearing the frozen peer")
        with trio.fail_after(40):  # the frozen peer's request timeout is 60 s: it must not be asked first
            got = await call(agent, "run_inference", model=DEFAULT_MODEL, inputs=DOCS[:2])
        assert got["peer"] == live.peer_id, got["peer"]
    finally:
        frozen.proc.send_signal(signal.SIGCONT)

    async def heard_again() -> bool:
        listed = await call(agent, "list_peers")
        return any(p["peer_id"] == frozen.peer_id and p["last_seen_s"] < 2.0 for p in listed["peers"])

    await eventually(heard_again, 60, "agent to hear the resumed peer again")
    again = await call(agent, "run_inference", model=DEFAULT_MODEL, inputs=DOCS[2:3])
    assert again["peer"] in (gpu1.peer_id, gpu2.peer_id)
