"""The seed's Python API as the README shows it (trio: ``async with`` only).

The README's example is read from README.md and run as written, under a temporary HOME, so the
test and the documentation cannot drift apart. Networking is on (the default), restricted to
loopback and without mDNS through the environment layer the README names.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from mcp_server.settings import SettingsError, named_node_data_dir
from p2p.errors import NodeError
from p2p.workflow_scheduler import MerkleClock, P2PWorkflowScheduler, SchedulerClock, WorkflowTag
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "ipfs-accelerate")


def readme_example() -> str:
    """The python block of README.md's seed API section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("The seed's Python API"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README.md lost the seed API example"
    return m.group(1)


@pytest.fixture
def home(shared_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throwaway HOME (the default data dir is ~/.local/share/ipfs-accelerate), loopback only.
    Short (under /tmp), so the node's control socket path fits AF_UNIX's 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="ia-home-", dir="/tmp") as d:
        yield from _home(Path(d), shared_cache_dir, monkeypatch)


def _home(home: Path, shared_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    env = {
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "IPFS_ACCELERATE_INFERENCE__CACHE_DIR": str(shared_cache_dir),
        "IPFS_ACCELERATE_NETWORK__LISTEN": '["/ip4/127.0.0.1/tcp/0"]',
        "IPFS_ACCELERATE_NETWORK__MDNS": "false",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in list(os.environ):
        if k.startswith("IPFS_ACCELERATE_") and k not in env:
            monkeypatch.delenv(k)
    yield home


async def test_the_readme_example_runs_as_written(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {}
    body = readme_example()
    exec(compile("async def example():\n" + textwrap.indent(body, "    "), "README.md", "exec"), namespace)
    await namespace["example"]()
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "Progress: 1/1", printed
    assert re.fullmatch(r"Progress: [01]/1", printed[0]), printed

    # the node it ran is the one `p2p start --node-id worker-01` runs: same data dir, same key
    expected_dir = home / ".local" / "share" / "ipfs-accelerate" / "nodes" / "worker-01"
    assert (expected_dir / "clock.sqlite").is_file()
    assert named_node_data_dir("~/.local/share/ipfs-accelerate", "worker-01") == expected_dir
    async with P2PWorkflowScheduler(node_id="worker-01") as scheduler:
        assert scheduler.data_dir == expected_dir
        assert scheduler.node_id == "worker-01"
        assert len(scheduler.node.scheduler.state.workflows) == 1  # the README's workflow, kept
        # networking on, as the CLI: a libp2p host listening (loopback here, from the env layer)
        assert scheduler.node.network is not None
        addrs = scheduler.node.listen_addrs()
        assert addrs and all(a.startswith("/ip4/127.0.0.1/") for a in addrs), addrs
        # the CLI finds this very node by its name (through the control socket in its data dir)
        proc = await trio.run_process([CLI, "p2p", "info", "--node-id", "worker-01"], capture_stdout=True,
                                      capture_stderr=True, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        info = json.loads(proc.stdout)
        assert info["peer_id"] == scheduler.node.peer_id
        assert Path(info["data_dir"]) == expected_dir


async def test_clock_update_folds_into_the_workflow_state(tmp_path: Path, shared_cache_dir: Path) -> None:
    """Two schedulers in one process, no network: B pulls A's events with clock.update and at
    once reports A's workflow, completed, with A's results; the hashes agree both ways."""
    cfg_a = make_node_config(tmp_path / "a", shared_cache_dir, name="a")
    cfg_b = make_node_config(tmp_path / "b", shared_cache_dir, name="b")
    async with P2PWorkflowScheduler(config=cfg_a) as a, P2PWorkflowScheduler(config=cfg_b) as b:
        assert isinstance(a.clock, SchedulerClock) and isinstance(a.clock.clock, MerkleClock)
        wid = await a.submit_workflow({"name": "on-a", "tag": WorkflowTag.LOCAL_ONLY, "priority": 2,
                                       "tasks": [{"model": DEFAULT_MODEL, "input": f"text {i}"} for i in range(3)]})
        done_a = await a.wait_for_workflow(wid, timeout_s=120)
        assert done_a["state"] == "completed"
        with pytest.raises(NodeError, match="unknown workflow"):
            await b.get_workflow_status(wid)
        before = b.clock.get_hash()

        applied = b.clock.update(a.clock)
        assert applied and len(b.clock) == len(a.clock)
        assert b.clock.get_hash() == a.clock.get_hash() != before
        status_b = await b.get_workflow_status(wid, include_results=True)
        assert (status_b["state"], status_b["completed"], status_b["total"], status_b["priority"]) == ("completed", 3, 3, 2)
        assert [t["result"] for t in status_b["tasks"]] == [t["result"] for t in done_a["tasks"]]
        b.clock.update(a.clock)  # A may have sealed its results meanwhile (workflow.accept)
        assert b.clock.update(a.clock) == []  # nothing new: no refold

        # and back: a plain MerkleClock can read from the view, and B's own work reaches A
        wid_b = await b.submit_workflow({"name": "on-b", "tag": "local-only",
                                         "tasks": [{"model": DEFAULT_MODEL, "input": "from b"}]})
        await b.wait_for_workflow(wid_b, timeout_s=120)
        a.clock.update(b.clock)
        assert (await a.get_workflow_status(wid_b))["state"] == "completed"
        b.clock.update(a.clock)  # both ways: each may have written a seal the other lacks
        a.clock.update(b.clock)
        assert a.clock.get_hash() == b.clock.get_hash()
        assert len(a.node.scheduler.state.workflows) == len(b.node.scheduler.state.workflows) == 2


async def test_async_with_only(tmp_path: Path, shared_cache_dir: Path) -> None:
    scheduler = P2PWorkflowScheduler(config=make_node_config(tmp_path / "w", shared_cache_dir))
    with pytest.raises(RuntimeError, match="async with"):
        await scheduler.submit_workflow({"name": "x", "tasks": []})
    with pytest.raises(RuntimeError, match="async with"):
        await scheduler.start()
    with pytest.raises(RuntimeError, match="async with"):
        await scheduler.stop()
    with pytest.raises(RuntimeError, match="async with"):
        scheduler.clock  # noqa: B018
    async with scheduler:
        with pytest.raises(ValueError, match="no tasks"):
            await scheduler.submit_workflow({"name": "x", "tasks": []})
        wid = await scheduler.submit_workflow({"name": "y", "tag": "local-only", "tasks": [{"model": DEFAULT_MODEL, "input": "t"}]})
        for bad in (math.nan, math.inf, -1.0):
            with pytest.raises(ValueError, match="finite number"):
                await scheduler.wait_for_workflow(wid, bad)
        assert (await scheduler.wait_for_workflow(wid, 120))["state"] == "completed"
    with pytest.raises(RuntimeError, match="async with"):
        scheduler.node  # noqa: B018


def test_node_id_is_one_path_component(home: Path) -> None:
    for bad in ("../escape", "a/b", ".", ".."):
        with pytest.raises(SettingsError, match="plain name"):
            P2PWorkflowScheduler(node_id=bad)
    with pytest.raises(ValueError, match="not both"):
        P2PWorkflowScheduler(node_id="x", config=make_node_config(home / "x", home))


def test_settings_layers_as_the_cli(home: Path) -> None:
    """Environment < settings=, and data_dir= is --data-dir (no nodes/<id> below it)."""
    s = P2PWorkflowScheduler(node_id="n1")
    assert s.config.network.enabled and not s.config.network.mdns  # networking on; mdns off from the env
    assert s.data_dir == home / ".local" / "share" / "ipfs-accelerate" / "nodes" / "n1"
    s = P2PWorkflowScheduler(node_id="n1", settings={"network": {"mdns": True}, "scheduler": {"lease_s": 20}})
    assert s.config.network.mdns and s.config.scheduler.lease_s == 20
    assert P2PWorkflowScheduler(node_id="n1", data_dir=home / "explicit").data_dir == home / "explicit"
    with pytest.raises(SettingsError, match="network.nope"):
        P2PWorkflowScheduler(node_id="n1", settings={"network": {"nope": 1}})


def test_merkle_clock_update_and_get_hash(tmp_path: Path) -> None:
    """MerkleClock.update(other) merges, get_hash() converges (the seed's consensus hash)."""
    from p2p.identity import Identity

    a = MerkleClock.open(tmp_path / "a.sqlite", Identity.generate())
    b = MerkleClock.open(tmp_path / "b.sqlite", Identity.generate())
    a.append([{"op": "x", "n": 1}])
    b.append([{"op": "x", "n": 2}])
    assert a.get_hash() != b.get_hash()
    a.update(b)
    b.update(a)
    assert a.get_hash() == b.get_hash() and len(a) == len(b) == 2
