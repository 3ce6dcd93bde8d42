"""Consensus settings between real nodes (libp2p on loopback, in one process), and the
constraints between settings that stop start-up.

Two nodes whose max_attempts differ would count attempts differently, so the fold would no
longer give both the same answer: each logs the other as incompatible, names the key, lists it
as such, and neither takes the other's work. A third, compatible node takes it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.config import NodeConfig
from p2p.node import Node
from tests.conftest import DEFAULT_MODEL, VENV_BIN, make_node_config


def net_config(tmp: Path, cache: Path, name: str, **sched: Any) -> NodeConfig:
    cfg = make_node_config(tmp / name, cache, name=name, network=True)
    raw = cfg.model_dump()
    raw["network"]["heartbeat_s"] = 0.2
    raw["scheduler"].update(sched)
    return NodeConfig.model_validate(raw)


async def wait_for(pred: Any, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_a_peer_with_other_consensus_settings_is_listed_incompatible_and_gets_no_work(
    tmp_path: Path, shared_cache_dir: Path
) -> None:
    async with Node.open(net_config(tmp_path, shared_cache_dir, "a", lease_s=2.0)) as a, \
            Node.open(net_config(tmp_path, shared_cache_dir, "odd", lease_s=2.0, max_attempts=5)) as odd:
        await odd.connect(a.listen_addrs()[0])

        def odd_seen() -> bool:
            peers = a.list_peers()["peers"]
            return any(p["peer_id"] == odd.peer_id for p in peers)

        await wait_for(odd_seen)
        entry = next(p for p in a.list_peers()["peers"] if p["peer_id"] == odd.peer_id)
        assert entry["compatible"] is False and entry["incompatible_keys"] == ["scheduler.max_attempts"]
        assert odd.peer_id not in {p.peer_id for p in a.peers.live_peers()}
        summary = await a.submit_workflow("remote", [{"model": DEFAULT_MODEL, "input": "hello"}], tag="p2p-only")
        wid = summary["workflow_id"]
        await wait_for(lambda: wid in odd.scheduler.state.workflows)
        await trio.sleep(3 * 0.2 + 1.0)  # several heartbeats and decide ticks: time for a wrong claim
        status = a.workflow_status(wid)
        assert status["pending"] == 1 and status["tasks"][0]["state"] == "queued", status
        assert odd.scheduler.local_queue() == 0


def test_constraints_between_settings_name_the_key(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path, "node_name": "x"}
    with pytest.raises(ValueError, match="network.heartbeat_s"):
        NodeConfig.model_validate(base | {"network": {"heartbeat_s": 20.0}})
    with pytest.raises(ValueError, match="network.max_frame_bytes"):
        NodeConfig.model_validate(base | {"network": {"max_frame_bytes": 4096}})
    with pytest.raises(ValueError, match="scheduler.task_timeout_s"):
        NodeConfig.model_validate(base | {"scheduler": {"task_timeout_s": 5.0}})
    digest = NodeConfig.model_validate(base).settings_digest()
    assert digest == NodeConfig.model_validate(base | {"node_name": "y"}).settings_digest()
    assert digest != NodeConfig.model_validate(base | {"scheduler": {"lease_s": 11.0}}).settings_digest()


def test_start_up_stops_with_one_line_naming_the_key(tmp_path: Path) -> None:
    env = {"IPFS_ACCELERATE_NETWORK__HEARTBEAT_S": "30", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(VENV_BIN / "ipfs-accelerate"), "p2p", "start", "--node-id", "x"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "network.heartbeat_s" in lines[0], proc.stderr
