"""An idle node stays lean (issue 9 item 5): ``mcp serve`` with networking on and no model to
serve, asked what an agent asks first, has not loaded numpy (10 MB of resident memory: the
modules that need it import it inside the functions that do) and started no worker process.
bench/bench_idle_rss.py measures the figure; this test keeps the cause from coming back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from mcp import Client, StdioServerParameters

from bench.bench_idle_rss import children, node_pid
from tests.procs import CLI, cli_env

pytestmark = [pytest.mark.timeout(300)]


async def test_an_idle_node_has_not_loaded_numpy(tmp_path: Path, shared_cache_dir: Path) -> None:
    data = tmp_path / "node"
    env = cli_env(shared_cache_dir, IPFS_ACCELERATE_INFERENCE__SERVE="[]", IPFS_ACCELERATE_INFERENCE__AUTO_PULL="false")
    params = StdioServerParameters(command=CLI, env=env, args=[
        "--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data)])
    async with Client(params, read_timeout_seconds=120) as client:
        for tool in ("get_node_info", "list_peers", "list_workflows", "list_models"):
            res = await client.call_tool(tool, {})
            assert not res.is_error, (tool, res.content)
        await trio.sleep(2)  # the node's background work after start (discovery, compactor, pool)
        pid = node_pid(data)
        with open(f"/proc/{pid}/maps") as f:
            mapped = [line.split()[-1] for line in f if "numpy" in line]
        assert not mapped, f"numpy is loaded in the idle node: {sorted(set(mapped))[:3]}"
        assert children(pid) == [], "an idle node with no model started worker processes"
