"""Idle memory of a started node with no model loaded (issue 9 item 5: goal <= 150 MB, decimal).

``ipfs-accelerate mcp serve`` (stdio, networking on, ``inference.serve = []`` so no model is
found or loaded) is started as an agent starts it, asked ``get_node_info`` until it answers,
then left idle for ``SETTLE_S`` seconds while its resident set is sampled from /proc. The figure
is the node's process plus any children it started (inference workers count: they are the
node's memory too), the median of the last samples; the peak is shown beside it. The same run
measures a bare interpreter of the same venv as the baseline, so the node's own share is visible.
Fails loudly (BenchError) when the node loaded a model, was not up, or no sample was taken.
Run alone: ``.venv/bin/python -m bench.bench_idle_rss``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.check import require

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "ipfs-accelerate")
GOAL_MB = 150.0
SETTLE_S = 10.0
SAMPLE_S = 0.5


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc's parent links)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def node_pid(data_dir: Path) -> int:
    """The ``mcp serve`` process on ``data_dir`` among this process's descendants."""
    for pid in children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if str(data_dir).encode() in argv and b"serve" in argv:
            return pid
    raise RuntimeError(f"no mcp serve process on {data_dir} among this process's children")


def bare_interpreter_rss() -> int:
    """The baseline: this venv's interpreter with nothing imported, idle."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(1.0)
        return rss_bytes(proc.pid)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=10)


def measure_node(data_dir: Path) -> dict[str, Any]:
    import trio
    from mcp import Client, StdioServerParameters

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               IPFS_ACCELERATE_INFERENCE__SERVE="[]", IPFS_ACCELERATE_INFERENCE__AUTO_PULL="false")
    params = StdioServerParameters(command=CLI, env=env, args=[
        "--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data_dir)])
    out: dict[str, Any] = {"samples": [], "main": []}

    async def run() -> None:
        t = time.perf_counter()
        async with Client(params, read_timeout_seconds=120) as client:
            res = await client.call_tool("get_node_info", {})
            require(not res.is_error, f"get_node_info failed: {res.content}")
            info = res.structured_content
            out["up_s"] = time.perf_counter() - t
            out["info"] = info
            pid = node_pid(data_dir)
            end = trio.current_time() + SETTLE_S
            while trio.current_time() < end:
                await trio.sleep(SAMPLE_S)
                tree = [pid, *children(pid)]
                out["samples"].append(sum(rss_bytes(p) for p in tree))
                out["main"].append(rss_bytes(pid))
                out["procs"] = len(tree)
            res = await client.call_tool("get_node_info", {})
            require(not res.is_error, "the node stopped answering while idle")
            out["info_after"] = res.structured_content

    trio.run(run)
    return out


def main() -> None:
    base = bare_interpreter_rss()
    require(base > 0, "the baseline interpreter's RSS could not be read")
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as d:
        got = measure_node(Path(d) / "node")
    info = got["info"]
    require(len(got["samples"]) >= 5, f"only {len(got['samples'])} RSS samples were taken")
    require(not info.get("models") and not got["info_after"].get("models"),
            f"the node serves models {info.get('models')}: the figure would not be of a node with none loaded")
    require(bool(info.get("addrs")), "the node has no listen address: networking is off")
    tail = got["samples"][-5:]
    node_mb, peak_mb = statistics.median(tail) / 1e6, max(got["samples"]) / 1e6
    main_mb = statistics.median(got["main"][-5:]) / 1e6
    print(f"  node up (get_node_info answered) {got['up_s']:.2f} s after start; idle {SETTLE_S:.0f} s, "
          f"{len(got['samples'])} samples, {got['procs']} process(es)")
    print(f"  bare interpreter (baseline)         {base / 1e6:7.1f} MB")
    print(f"  idle node, no model, networking on  {node_mb:7.1f} MB  (node process {main_mb:.1f} MB; peak {peak_mb:.1f} MB; "
          f"{node_mb - base / 1e6:.1f} MB over the bare interpreter, {node_mb / (base / 1e6):.1f}x)")
    print(f"  goal <= {GOAL_MB:.0f} MB: {'MET' if node_mb <= GOAL_MB else 'NOT MET'}")


if __name__ == "__main__":
    main()
