"""The result cache between real peers (issue 10 item 3): real `p2p start` processes on loopback.

- A peer that never ran a workflow, once it holds the other's key index, gets every result from
  that peer's cache: ``cached: true``, the original results and stats, counted as remote hits;
  ``cache: false`` runs them all.
- A tampering peer cannot poison the cache: a real node built from the project's own modules
  (``p2p.node.Node``, same network key, heartbeats advertising its cache) whose cache server
  flips one byte of every sealed entry it sends. The asker counts the authentication failure,
  notes the peer, stores nothing, and runs the tasks for real. Run as a process:

      python -m tests.network.test_result_cache --data-dir DIR --bootstrap MULTIADDR

- On an open network (no key) entries stay local: nothing is advertised, asked or served.
- Cache files on disk hold no plaintext input or result.
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

TEXTS = [f"Cached across the network, sentence {i} about kingfishers." for i in range(8)]

# --- the tampering peer (a process) ------------------------------------------------------------


async def _seed(config: Any) -> int:
    """The tamperer's real entries, made before it ever joins: the model runs on every text and
    each result is stored under its true key (the network key's), as a member's own runs would
    be. Offline first, so every heartbeat it ever publishes advertises the full cache (gossip
    can deliver an older heartbeat after a newer one, and one from before the cache filled
    would say 0 entries)."""
    from p2p.cache import ResultCache
    from p2p.config import CacheConfig
    from p2p.net.psk import load_swarm_key
    from p2p.node import Node
    from p2p.scheduler.ops import TaskSpec
    from p2p.scheduler.results import pack_result
    from tests.conftest import DEFAULT_MODEL

    offline = config.model_copy(update={"network": config.network.model_copy(update={"enabled": False}),
                                        "cache": CacheConfig(enabled=False)})
    async with Node.open(offline) as node:
        cache = ResultCache.open(Path(config.data_dir), load_swarm_key(config.network.psk_file), max_bytes=1 << 24)
        try:
            for text in TEXTS:
                spec = TaskSpec(model=DEFAULT_MODEL, model_cid=node.model_cids[DEFAULT_MODEL], input=text)
                res = await node.engine.infer(DEFAULT_MODEL, [text], None)
                out = res.outputs[0]
                stats = {"ms": 1.0, "backend": res.backend, "device": res.device, "task": res.task}
                await cache.put(await cache.key_for(spec), pack_result(out.to_json() if hasattr(out, "to_json") else out), stats)
            return cache.info()["entries"]
        finally:
            cache.close()


async def _serve(args: argparse.Namespace) -> None:
    from p2p.node import Node
    from p2p.protocols.cache import CACHE_PROTOCOL, decode_get, decode_got, encode_got, request_kind
    from p2p.settings import load_node_settings

    settings = load_node_settings(
        data_dir=str(args.data_dir), node_id="tamperer",
        network={"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": list(args.bootstrap), "mdns": False},
        cache={"enabled": True},
    )
    seeded = await _seed(settings.node_config())
    async with Node.open(settings.node_config()) as node:
        assert node.cache is not None and node.cache.server is not None and node.net is not None
        honest = node.cache.server

        async def flipping(peer: str, payload: bytes) -> bytes:
            if request_kind(payload) == "since":  # its key index is honest: it holds every key asked
                return await honest.handle(peer, payload)
            entries = decode_got(await honest.handle(peer, payload), len(decode_get(payload)))
            return encode_got([None if e is None else e[:-20] + bytes([e[-20] ^ 0x01]) + e[-19:] for e in entries])

        node.net.set_request_handler(CACHE_PROTOCOL, flipping)  # before the first peer can ask
        sys.stdout.write(json.dumps({"ready": True, "peer_id": node.peer_id, "seeded": seeded,
                                     "info": node.node_info()["cache"]}) + "\n")
        sys.stdout.flush()
        await trio.wrap_file(sys.stdin).readline()  # until the test closes our stdin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--bootstrap", action="append", default=[])
    args = parser.parse_args(argv)
    from mcp_server.log import configure_logging

    configure_logging("info")
    trio.run(_serve, args)


# --- the tests ----------------------------------------------------------------------------------

if __name__ != "__main__":
    from p2p.cache.cache import STORE_FILE
    from p2p.control import call as control_call
    from tests.cluster import Cluster, Peer, call, full_status, wait_peers
    from tests.conftest import DEFAULT_MODEL
    from tests.procs import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"IPFS_ACCELERATE_CACHE__ENABLED": "true"}  # off by default (p2p.config.CacheConfig)


async def _info(data_dir: Path) -> dict[str, Any]:
    reply = await trio.to_thread.run_sync(control_call, data_dir, {"cmd": "info"})
    assert reply.get("ok"), reply
    return reply["info"]["cache"]


async def _wait_index(peer: Peer, peers: int) -> None:
    """Until ``peer`` holds the key index of ``peers`` peers' caches (it asks only peers whose
    index holds a key: a node that just joined answers from its own runs until then)."""
    from tests.cluster import eventually

    async def indexed() -> bool:
        return (await _info(peer.data_dir))["index_peers"] >= peers

    await eventually(indexed, 60, f"{peer.name} to hold {peers} peer(s)' cache index")


async def _run(peer: Peer, *, cache: bool = True) -> list[dict[str, Any]]:
    sub = await call(peer, "submit_workflow", name="cached", tag="local-only", cache=cache,
                     tasks=[{"model": DEFAULT_MODEL, "input": t} for t in TEXTS])
    st = await call(peer, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=240)
    assert st["state"] == "completed", st
    tasks = (await full_status(peer, sub["workflow_id"]))["tasks"]
    assert all(t["peer"] == peer.peer_id for t in tasks)  # local-only: this peer answered every one
    return tasks


def _no_plaintext(data_dir: Path, tasks: list[dict[str, Any]]) -> None:
    disk = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith(STORE_FILE))
    assert len(disk) > 1000, "no cache file"
    for text in TEXTS:
        assert text.encode() not in disk
    for t in tasks:
        raw = np.asarray(t["result"]["embedding"], dtype="<f4").tobytes()
        assert raw[:32] not in disk and raw[-32:] not in disk


async def test_a_new_peer_is_answered_from_a_peers_cache(cluster: Cluster) -> None:
    a = cluster.start("a")
    first = await _run(a)
    assert not any(t.get("cached") for t in first)
    assert (await _info(a.data_dir))["entries"] == len(TEXTS)

    b = cluster.start("b", bootstrap=[a])
    await wait_peers(b, [a])
    await _wait_index(b, 1)
    got = await _run(b)
    assert all(t.get("cached") for t in got), got
    for x, y in zip(first, got):  # the original results and stats, bit for bit
        assert x["result"] == y["result"] and x["stats"] == y["stats"]
    info_b, info_a = await _info(b.data_dir), await _info(a.data_dir)
    assert info_b["remote_hits"] == len(TEXTS) and info_b["auth_failures"] == 0 and info_b["entries"] == len(TEXTS), info_b
    assert info_a["served"] == len(TEXTS), info_a

    fresh = await _run(b, cache=False)  # cache: false runs everything, and the counters stay put
    assert not any(t.get("cached") for t in fresh)
    assert (await _info(b.data_dir))["hits"] == info_b["hits"]
    for x, y in zip(first, fresh):
        assert np.allclose(x["result"]["embedding"], y["result"]["embedding"], atol=1e-5)
    _no_plaintext(a.data_dir, first)
    _no_plaintext(b.data_dir, first)


def _start_tamperer(cluster: Cluster, seed: Peer) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    root = cluster.root
    fh = open(root / "tamperer.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tests.network.test_result_cache", "--data-dir", str(root / "tamperer"),
                             "--bootstrap", seed.addr], cwd=REPO, env=cluster.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=fh)
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line:
                return proc, json.loads(line)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the tamperer did not start:\n{(root / 'tamperer.log').read_text()[-3000:]}")


async def test_a_tampering_peer_cannot_poison_the_cache(cluster: Cluster) -> None:
    victim = cluster.start("victim")
    proc, hello = _start_tamperer(cluster, victim)
    tamperer = hello["peer_id"]
    assert hello["info"]["entries"] == len(TEXTS)  # it holds a real entry for every key asked
    try:
        async def sees_its_cache() -> bool:
            # every heartbeat it publishes advertises its full cache, as any member's does; only
            # peers that advertise entries are asked
            listed = await call(victim, "list_peers")
            return any(p["peer_id"] == tamperer and p["models"] for p in listed["peers"])

        from tests.cluster import eventually

        await eventually(sees_its_cache, 60, "the victim to see the tamperer")
        await _wait_index(victim, 1)
        got = await _run(victim)
        assert not any(t.get("cached") for t in got), "a forged entry was accepted"
        for t in got:  # run for real: a genuine embedding
            vec = np.asarray(t["result"]["embedding"])
            assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1.0) < 1e-3
        info = await _info(victim.data_dir)
        assert info["auth_failures"] >= 1 and info["remote_hits"] == 0, (info, victim.log_text()[-3000:])
        assert tamperer in info["bad_peers"], info
        # every forged entry counted against it (the tasks asked at once, before it was noted)
        assert info["bad_peers"][tamperer] == info["auth_failures"] <= len(TEXTS), info
        assert info["entries"] == len(TEXTS)  # its own real results, nothing of the tamperer's
        assert "failed authentication" in victim.log_text() and tamperer in victim.log_text()
        again = await _run(victim)  # and its own cache now answers, with its own results
        assert all(t.get("cached") for t in again)
        for x, y in zip(got, again):
            assert x["result"] == y["result"]
    finally:
        proc.kill()
        proc.wait()


async def test_on_an_open_network_entries_stay_local(cluster: Cluster) -> None:
    a = cluster.start("a", open=True)
    first = await _run(a)
    b = cluster.start("b", bootstrap=[a], open=True)
    await wait_peers(b, [a])
    info_a = await _info(a.data_dir)
    assert info_a["entries"] == len(TEXTS) and not info_a["shared"], info_a
    got = await _run(b)
    assert not any(t.get("cached") for t in got)  # b ran them all: a's entries never travel
    info_a, info_b = await _info(a.data_dir), await _info(b.data_dir)
    assert info_a["served"] == 0 and info_b["remote_hits"] == 0 and info_b["misses"] == len(TEXTS), (info_a, info_b)
    again = await _run(a)  # a's own cache still answers a
    assert all(t.get("cached") for t in again)
    for x, y in zip(first, again):
        assert x["result"] == y["result"] and x["stats"] == y["stats"]


if __name__ == "__main__":
    main()
