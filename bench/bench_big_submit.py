"""A 1,000,000-task workflow submitted from a JSONL file (issue 12 item 1), the way an agent does it.

``mcp serve --transport stdio`` starts a full node with networking on and the default model
served; the agent calls ``submit_workflow_file`` on a 1,000,000-row JSONL file of few-word
inputs and then polls the workflow's status while the node starts working through it. Measured:

- the tool call, from request to reply (read, check, chunk, fsync, one clock event);
- the node process's RSS before, at its peak during the call (sampled every 20 ms), and after;
- the database growth and the submit event's size (the inputs go into content-addressed
  chunks: the event only names them, so no peer receives the inputs it does not run);
- ``get_workflow_status(limit=0)`` and a page of 100 tasks at the end of the workflow, as the
  agent polls while tasks run.

Baseline, in the same run with nothing else competing: this process reading the same file with
``json.loads`` line by line into a list (the least any submit must do). Fails loudly when the
workflow does not hold 1,000,000 tasks, the event carries inputs, or the node keeps a record per
task up front. Run alone: ``.venv/bin/python -m bench.bench_big_submit`` (``N=...`` to resize).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.check import require

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "ipfs-accelerate")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
N = int(os.environ.get("N", 1_000_000))
POLLS = 40


def _write(path: Path) -> int:
    with open(path, "w") as fh:
        for i in range(N):
            fh.write(json.dumps({"input": f"doc {i} about cats"}) + "\n")
    return path.stat().st_size


def _baseline(path: Path) -> float:
    t = time.perf_counter()
    with open(path) as fh:
        rows = [json.loads(line)["input"] for line in fh]
    s = time.perf_counter() - t
    require(len(rows) == N, f"the baseline read {len(rows)} rows, not {N}")
    return s


def _rss(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def _server_pid(data_dir: Path) -> int:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(p.info["cmdline"] or []) and "serve" in (p.info["cmdline"] or []):
            return p.pid
    raise RuntimeError("the stdio server process was not found")


def main() -> None:
    import trio
    from mcp import Client, StdioServerParameters

    from mcp_server.log import configure_logging

    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-big-submit-") as d:
        root = Path(d)
        src = root / "inputs.jsonl"
        size = _write(src)
        data_dir = root / "node"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        params = StdioServerParameters(command=CLI, env=env, args=[
            "--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data_dir)])
        out: dict[str, Any] = {}

        async def run() -> None:
            async with Client(params, read_timeout_seconds=600) as client:
                info = (await client.call_tool("get_node_info", {})).structured_content
                pid = _server_pid(data_dir)
                await trio.sleep(3)  # the model's warm-up, off the measurement
                out["baseline_s"] = _baseline(src)  # nothing else running: the node is idle
                before = _rss(pid)
                db0 = (await client.call_tool("get_node_info", {})).structured_content["clock"]["db_bytes"]
                peak = [before]
                done = trio.Event()

                async def sample() -> None:
                    while not done.is_set():
                        peak[0] = max(peak[0], _rss(pid))
                        await trio.sleep(0.02)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sample)
                    t = time.perf_counter()
                    res = await client.call_tool("submit_workflow_file", {"path": str(src), "model": MODEL, "name": "million"})
                    out["submit_s"] = time.perf_counter() - t
                    done.set()
                require(not res.is_error, f"submit_workflow_file failed: {res.content}")
                summary = res.structured_content
                require(summary["total"] == N and summary["rows"] == N, f"the workflow holds {summary['total']} tasks, not {N}")
                wid = summary["workflow_id"]
                out["rss"] = (before, peak[0], _rss(pid))
                node = (await client.call_tool("get_node_info", {})).structured_content
                out["db"] = node["clock"]["db_bytes"] - db0
                lat0, latp = [], []
                for i in range(POLLS):  # the agent polls while the node works through it
                    t = time.perf_counter()
                    st = (await client.call_tool("get_workflow_status", {"workflow_id": wid, "limit": 0})).structured_content
                    lat0.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    page = (await client.call_tool("get_workflow_status", {"workflow_id": wid, "offset": N - 100, "limit": 100})).structured_content
                    latp.append(time.perf_counter() - t)
                    require(len(page["tasks"]) == 100 and page["tasks"][-1]["task_id"] == f"{wid}/{N - 1}", "a wrong page")
                    await trio.sleep(0.25)
                out["lat"] = (statistics.median(lat0), statistics.median(latp))
                out["done"] = st["completed"]
                out["info"] = info
                await client.call_tool("cancel_workflow", {"workflow_id": wid})
        trio.run(run)

        # what the submit wrote: one event naming the chunks (read from the node's clock, closed now)
        from p2p.clock import MerkleClock
        from p2p.identity import Identity

        clock = MerkleClock.open(data_dir / "clock.sqlite", Identity.load_or_create(data_dir))
        try:
            found = [(len(ev.data), op) for ev in clock.events() for op in ev.ops
                     if isinstance(op, dict) and op.get("op") == "workflow.submit"]
        finally:
            clock.close()
        require(len(found) == 1, f"{len(found)} submit events")
        event_bytes, op = found[0]
        require("inputs" not in op and "tasks" not in op and sum(c["count"] for c in op["chunks"]) == N,
                "the submit event carries the inputs")
        before, peak, after = out["rss"]
        print(f"  {N:,}-row JSONL ({size / 1e6:.1f} MB) over MCP stdio, networking on:")
        print(f"  submit_workflow_file: {out['submit_s']:.2f} s; baseline json.loads of the file: {out['baseline_s']:.2f} s "
              f"-> {out['submit_s'] / out['baseline_s']:.2f}x (no goal stated)")
        print(f"  node RSS: {before:.0f} MB before, {peak:.0f} MB peak during the call (+{peak - before:.0f}), "
              f"{after:.0f} MB after")
        print(f"  database: +{out['db'] / 1e6:.1f} MB ({len(op['chunks'])} input chunks); the submit event: {event_bytes:,} bytes")
        print(f"  while it runs ({out['done']:,} done after {POLLS} polls): status limit=0 median {1000 * out['lat'][0]:.2f} ms, "
              f"page of 100 at the end {1000 * out['lat'][1]:.2f} ms")


if __name__ == "__main__":
    main()
