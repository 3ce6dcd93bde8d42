"""The seed's Python API, as its examples use it (adapted to trio: an async context manager)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.workflow_scheduler import MerkleClock, P2PWorkflowScheduler, WorkflowTag
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)


async def test_the_seed_example_runs(tmp_path: Path, shared_cache_dir: Path) -> None:
    config = make_node_config(tmp_path / "worker-01", shared_cache_dir, name="worker-01")
    async with P2PWorkflowScheduler(config=config) as scheduler:
        assert scheduler.node_id == "worker-01"
        workflow_id = await scheduler.submit_workflow({
            "name": "batch-inference",
            "tag": WorkflowTag.P2P_ELIGIBLE,
            "priority": 1,  # lower = higher priority
            "tasks": [{"model": DEFAULT_MODEL, "input": "text1"}, {"model": DEFAULT_MODEL, "input": "text2"}],
        })
        status = await scheduler.get_workflow_status(workflow_id)
        assert status["total"] == 2 and 0 <= status["completed"] <= 2 and status["priority"] == 1
        done = await scheduler.wait_for_workflow(workflow_id, timeout_s=120)
        assert f"Progress: {done['completed']}/{done['total']}" == "Progress: 2/2"
        assert isinstance(scheduler.clock, MerkleClock)
        first_hash = scheduler.clock.get_hash()
        assert len(first_hash) == 64


async def test_start_and_stop_from_one_task(tmp_path: Path, shared_cache_dir: Path) -> None:
    scheduler = P2PWorkflowScheduler(config=make_node_config(tmp_path / "w", shared_cache_dir))
    with pytest.raises(RuntimeError, match="not started"):
        await scheduler.submit_workflow({"name": "x", "tasks": []})
    await scheduler.start()
    try:
        with pytest.raises(ValueError, match="no tasks"):
            await scheduler.submit_workflow({"name": "x", "tasks": []})
        wid = await scheduler.submit_workflow({"name": "y", "tag": "local-only", "tasks": [{"model": DEFAULT_MODEL, "input": "t"}]})
        assert (await scheduler.wait_for_workflow(wid, 120))["state"] == "completed"
    finally:
        await scheduler.stop()


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
