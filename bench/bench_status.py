"""Status at the cost of what is asked (issue 9 item 2), over MCP stdio.

A node (``mcp serve --transport stdio --no-network``, serving no model, so nothing runs and the
state holds still) is opened on a clock written beforehand by another peer: one 10,000-task
workflow (6,000 done with 384-d embeddings, 4,000 queued), one 100-task workflow of the same mix,
and 1,000 one-task workflows. Interleaved, one call of each per round:

- ``get_node_info``: the baseline, the cheapest tool (a fixed-size answer);
- ``get_workflow_status(limit=0)`` on the 10,000-task workflow: counts and state only;
  goal <= 1.5x get_node_info (O(1): nothing grows with the workflow);
- a page of 100 tasks at a random offset of the 10,000-task workflow, and the same page of the
  100-task workflow: goal 10,000-task page <= 1.25x the 100-task page (O(page): the page costs
  what it holds, not the workflow's size); also shown against get_node_info, and with results;
- ``list_workflows(limit=50)`` over the 1,002 workflows, and filtered by state.

Medians and p99 of ``ROUNDS`` rounds; each goal printed beside its figure, MET or NOT MET.
Fails loudly (BenchError) when a call returns the wrong counts or page, so a figure never
measures an error. Run alone: ``.venv/bin/python -m bench.bench_status``.
"""

from __future__ import annotations

import os
import random
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.check import require, require_count

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "ipfs-accelerate")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BIG, SMALL, TINY_WORKFLOWS = 10_000, 100, 1_000
DONE_FRACTION = 0.6
PAGE = 100
ROUNDS = 200
GOAL_COUNTS_VS_INFO = 1.5
GOAL_PAGE_BIG_VS_SMALL = 1.25


def _text(i: int) -> str:
    return f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank today."


def write_clock(data_dir: Path) -> dict[str, Any]:
    """The clock the node opens: every event authored by another peer (a ghost that never comes
    online), so the node only holds them. Returns the workflow ids and expected counts."""
    from p2p.clock import MerkleClock
    from p2p.identity import Identity
    from p2p.scheduler.ops import new_workflow_id

    ghost = Identity.generate()
    Identity.load_or_create(data_dir)  # the node's own key, apart from the ghost's
    clock = MerkleClock.open(data_dir / "clock.sqlite", ghost)
    rng = random.Random(0)
    vec = [rng.gauss(0.0, 1.0) for _ in range(384)]
    norm = sum(x * x for x in vec) ** 0.5
    emb = struct.pack("<384f", *(x / norm for x in vec))  # a unit float32 vector, as the engine writes
    now = time.time()
    out: dict[str, Any] = {"done": {}}
    try:
        clock.append([{"op": "peer.advertise", "capacity": 2.0, "models": [MODEL]}])
        for key, n in (("big", BIG), ("small", SMALL)):
            wid = new_workflow_id(ghost.peer_id_str)
            out[key] = wid
            clock.append([{"op": "workflow.submit", "workflow_id": wid, "name": f"status-{n}", "priority": 5,
                           "tag": "p2p-eligible", "tasks": [{"model": MODEL, "input": _text(i)} for i in range(n)],
                           "created_at": now - n}])
            done = [i for i in range(n) if (i * 7919) % 100 < DONE_FRACTION * 100]  # spread over the workflow
            out["done"][key] = len(done)
            ops: list[dict[str, Any]] = []
            for i in done:
                tid = f"{wid}/{i}"
                ops += [{"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": 2.0},
                        {"op": "task.start", "task_id": tid, "attempt": 1},
                        {"op": "task.done", "task_id": tid, "attempt": 1,
                         "result": {"embedding_f32": emb, "truncated": False},
                         "stats": {"ms": 5.0, "backend": "onnx", "device": "cpu", "task": "embedding"}}]
            for at in range(0, len(ops), 255):
                clock.append(ops[at:at + 255])
        subs = [{"op": "workflow.submit", "workflow_id": new_workflow_id(ghost.peer_id_str), "name": f"tiny-{w}",
                 "priority": 5, "tag": "p2p-eligible", "tasks": [{"model": MODEL, "input": _text(w)}],
                 "created_at": now + w} for w in range(TINY_WORKFLOWS)]
        for at in range(0, len(subs), 255):
            clock.append(subs[at:at + 255])
    finally:
        clock.close()
    return out


async def _call(client: Any, name: str, /, **args: Any) -> dict[str, Any]:
    res = await client.call_tool(name, args)
    if res.is_error:
        raise RuntimeError(f"{name} failed: {' '.join(getattr(c, 'text', '') for c in res.content)}")
    return res.structured_content


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def measure(client: Any, wf: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """``rounds`` interleaved rounds of every call; checks each answer before timing counts."""
    rng = random.Random(1)
    lat: dict[str, list[float]] = {k: [] for k in (
        "info", "counts", "page_big", "page_small", "page_big_results", "list", "list_pending")}

    async def timed(key: str, name: str, **args: Any) -> dict[str, Any]:
        t = time.perf_counter()
        out = await _call(client, name, **args)
        lat[key].append(time.perf_counter() - t)
        return out

    for r in range(rounds):
        await timed("info", "get_node_info")
        st = await timed("counts", "get_workflow_status", workflow_id=wf["big"], limit=0)
        require(st["tasks"] == [] and st["total"] == BIG, f"limit=0 returned {len(st['tasks'])} tasks of {st.get('total')}")
        require_count(st["completed"], wf["done"]["big"], "limit=0: completed count")
        require_count(st["pending"], BIG - wf["done"]["big"], "limit=0: pending count")
        offset = rng.randrange(0, BIG - PAGE)
        st = await timed("page_big", "get_workflow_status", workflow_id=wf["big"], offset=offset, limit=PAGE)
        require_count(len(st["tasks"]), PAGE, f"page of the {BIG}-task workflow at {offset}")
        require(st["tasks"][0]["task_id"] == f"{wf['big']}/{offset}", f"page at {offset} starts at {st['tasks'][0]['task_id']}")
        st = await timed("page_small", "get_workflow_status", workflow_id=wf["small"], offset=0, limit=PAGE)
        require_count(len(st["tasks"]), PAGE, f"page of the {SMALL}-task workflow")
        if r % 4 == 0:
            st = await timed("page_big_results", "get_workflow_status", workflow_id=wf["big"], offset=offset,
                             limit=PAGE, include_results=True, format="floats")
            got = sum(1 for t in st["tasks"] if len((t.get("result") or {}).get("embedding") or ()) == 384)
            require(got == sum(1 for t in st["tasks"] if t["state"] == "done") and got > 0,
                    f"page with results: {got} embeddings for the done tasks")
        ls = await timed("list", "list_workflows", limit=50)
        require_count(len(ls["workflows"]), 50, "list_workflows(limit=50)")
        ls = await timed("list_pending", "list_workflows", state="pending", limit=50)
        require(len(ls["workflows"]) == 50 and all(w["state"] == "pending" for w in ls["workflows"]),
                "list_workflows(state=pending) did not return 50 pending workflows")
    return lat


def report(lat: dict[str, list[float]]) -> None:
    base = statistics.median(lat["info"])
    med = {k: statistics.median(v) for k, v in lat.items() if v}
    rows = (("info", "get_node_info (baseline)"),
            ("counts", f"status limit=0, {BIG:,}-task workflow"),
            ("page_big", f"status page of {PAGE}, {BIG:,}-task workflow"),
            ("page_small", f"status page of {PAGE}, {SMALL}-task workflow"),
            ("page_big_results", f"  ... {BIG:,}-task page with results"),
            ("list", "list_workflows limit=50 (1,002 known)"),
            ("list_pending", "list_workflows state=pending limit=50"))
    print(f"  {'call':<46} {'n':>4} {'median ms':>10} {'p99 ms':>9} {'/ node_info':>12}")
    for key, label in rows:
        xs = lat[key]
        print(f"  {label:<46} {len(xs):>4} {med[key] * 1e3:>10.2f} {_pct(xs, 99) * 1e3:>9.2f} {med[key] / base:>11.2f}x")
    counts = med["counts"] / base
    page = med["page_big"] / med["page_small"]
    print(f"  limit=0 / get_node_info = {counts:.2f}x (goal <= {GOAL_COUNTS_VS_INFO}x: O(1)) "
          f"{'MET' if counts <= GOAL_COUNTS_VS_INFO else 'NOT MET'}")
    print(f"  page of {PAGE}: {BIG:,}-task / {SMALL}-task workflow = {page:.2f}x (goal <= {GOAL_PAGE_BIG_VS_SMALL}x: O(page)) "
          f"{'MET' if page <= GOAL_PAGE_BIG_VS_SMALL else 'NOT MET'}")


def main(rounds: int = ROUNDS) -> None:
    import trio
    from mcp import Client, StdioServerParameters

    from mcp_server.log import configure_logging

    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-status-") as d:
        data_dir = Path(d) / "node"
        t = time.perf_counter()
        wf = write_clock(data_dir)
        print(f"  clock written in {time.perf_counter() - t:.1f} s: {BIG:,}-task workflow ({wf['done']['big']:,} done), "
              f"{SMALL}-task ({wf['done']['small']} done), {TINY_WORKFLOWS:,} one-task workflows", flush=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
                   IPFS_ACCELERATE_INFERENCE__SERVE="[]")
        params = StdioServerParameters(command=CLI, env=env, args=[
            "--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data_dir), "--no-network"])
        out: dict[str, Any] = {}

        async def run() -> None:
            t = time.perf_counter()
            async with Client(params, read_timeout_seconds=120) as client:
                await _call(client, "get_node_info")
                print(f"  stdio server up in {time.perf_counter() - t:.2f} s", flush=True)
                await measure(client, wf, 10)  # warm-up, untimed
                out["lat"] = await measure(client, wf, rounds)

        trio.run(run)
        require(bool(out.get("lat") and out["lat"]["counts"]), "nothing was measured")
        report(out["lat"])
        print(f"  server side only (the same data dir opened in this process; MCPServer.call_tool: "
              f"no transport, no client-side schema check), median of {rounds}:", flush=True)
        server_side(data_dir, wf, rounds)


def server_side(data_dir: Path, wf: dict[str, Any], rounds: int) -> None:
    """What the node itself spends per call: the tool's work and the SDK's shaping of its reply."""
    import trio

    from inference.config import InferenceConfig
    from mcp_server.server import build_server
    from p2p.config import NetworkConfig, NodeConfig
    from p2p.node import Node

    cfg = NodeConfig(data_dir=data_dir, node_name="bench", inference=InferenceConfig(serve=[]),
                     network=NetworkConfig(enabled=False, mdns=False))
    calls = (("get_node_info (baseline)", "get_node_info", {}),
             (f"status limit=0, {BIG:,}-task workflow", "get_workflow_status", {"workflow_id": wf["big"], "limit": 0}),
             (f"status page of {PAGE}, {BIG:,}-task workflow", "get_workflow_status",
              {"workflow_id": wf["big"], "offset": BIG // 2, "limit": PAGE}),
             (f"status page of {PAGE}, {SMALL}-task workflow", "get_workflow_status", {"workflow_id": wf["small"], "limit": PAGE}),
             ("list_workflows limit=50", "list_workflows", {"limit": 50}))
    med: dict[str, float] = {}

    async def run() -> None:
        async with Node.open(cfg) as node:
            server = build_server(node)
            for label, name, args in calls:
                await server.call_tool(name, args)  # warm
                xs = []
                for _ in range(rounds):
                    t = time.perf_counter()
                    await server.call_tool(name, args)
                    xs.append(time.perf_counter() - t)
                med[label] = statistics.median(xs)

    trio.run(run)
    require(len(med) == len(calls), "the server-side calls were not all measured")
    base = med[calls[0][0]]
    for label, _, _ in calls:
        print(f"    {label:<44} {med[label] * 1e3:>8.3f} ms {med[label] / base:>8.2f}x")


if __name__ == "__main__":
    main()
