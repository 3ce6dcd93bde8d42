"""Peers' inference workers in heartbeats (issue 9 item 1: "list_peers shows workers and
queue"): two real libp2p nodes in this process; each lists the other's workers as the other
reports them itself, and a malformed workers field is dropped, the heartbeat kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import trio

from p2p.config import NodeConfig
from p2p.node import Node
from p2p.protocols.heartbeat import Heartbeat, WorkersSummary
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)


def _config(tmp: Path, cache: Path, name: str) -> NodeConfig:
    raw = make_node_config(tmp / name, cache, name=name, network=True).model_dump()
    raw["network"]["heartbeat_s"] = 0.2
    return NodeConfig.model_validate(raw)


@pytest.mark.slow
async def test_list_peers_shows_each_peers_workers(tmp_path: Path, shared_cache_dir: Path) -> None:
    async with Node.open(_config(tmp_path, shared_cache_dir, "a")) as a, Node.open(_config(tmp_path, shared_cache_dir, "b")) as b:
        await b.connect(a.listen_addrs()[0])
        await b.run_inference(DEFAULT_MODEL, ["load the model"])  # b's worker is live now
        want = b.workers_summary()
        assert want is not None and want.live >= 1 and want.mode in {"pool", "in-process"}

        def listed() -> dict[str, Any] | None:
            return next((p.get("workers") for p in a.list_peers()["peers"] if p["peer_id"] == b.peer_id), None)

        # a heartbeat is up to heartbeat_s old (and may have left mid-batch, busy): wait for one
        # sent after b settled
        with trio.fail_after(60):
            while listed() != b.workers_summary().model_dump():
                await trio.sleep(0.05)
        assert listed()["live"] >= 1
        assert a.list_peers()["self"]["workers"] == a.workers_summary().model_dump()


def test_a_malformed_workers_field_is_dropped_and_the_heartbeat_kept() -> None:
    base = {"peer_id": "12D3KooWtest", "name": "x"}
    assert Heartbeat.model_validate({**base, "workers": {"mode": "pool", "live": 2, "extra": "ignored"}}).workers == \
        WorkersSummary(mode="pool", live=2)
    for bad in ({"live": -1}, {"busy": 10**9}, {"mode": "m" * 17}, {"live": "many"}, [1, 2], "x"):
        hb = Heartbeat.model_validate({**base, "workers": bad})
        assert hb.workers is None and hb.peer_id == base["peer_id"], bad
    with pytest.raises(pydantic.ValidationError):  # the other fields stay strict
        Heartbeat.model_validate({**base, "queue": -1})
    assert Heartbeat.model_validate(base).workers is None  # a peer that does not say
    assert WorkersSummary.of({"mode": "pool", "live": 3.0, "busy": True, "target": 10**12, "x": 1}) == \
        WorkersSummary(mode="pool", live=3, busy=0, target=1_000_000)
