"""A tampering peer cannot poison a pull (issue 10, bad input).

The tamperer is a real node built from the project's own modules (``p2p.node.Node`` with its
identity, clock, network key and heartbeats: it advertises the default model with its true
content id, as an honest seed would), with one change: its content server flips the last
byte of every block it sends. Run as a process:

    python -m tests.network.test_pull_tamper --data-dir DIR --bootstrap MULTIADDR

- with an honest seed too, the leech's pull completes with the right files, the tamperer's bad
  blocks are counted against it in the pull's stats and it is dropped from the pull;
- with only the tamperer, the pull fails with a clear error and nothing is installed.
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

import pytest
import structlog
import trio

from p2p.content.exchange import ContentServer
from p2p.protocols.content import Want

log = structlog.get_logger("tests.tamper")


class TamperingServer(ContentServer):
    """Serves every block with its last byte flipped (the right length, the wrong content)."""

    async def blocks(self, want: Want) -> list[bytes | None]:
        good = await super().blocks(want)
        return [None if b is None else (b[:-1] + bytes([b[-1] ^ 0xFF]) if b else b"\x00") for b in good]


async def _serve(args: argparse.Namespace) -> None:
    from p2p.node import Node
    from p2p.protocols.content import CONTENT_PROTOCOL
    from p2p.settings import load_node_settings

    settings = load_node_settings(
        data_dir=str(args.data_dir), node_id="tamperer",
        network={"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": list(args.bootstrap), "mdns": False},
    )
    async with Node.open(settings.node_config()) as node:
        good = node.content_server
        assert good is not None and node.net is not None
        bad = TamperingServer(good._models)
        node.net.set_stream_handler(CONTENT_PROTOCOL, bad.handle)
        sys.stdout.write(json.dumps({"ready": True, "peer_id": node.peer_id}) + "\n")
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


# --- the tests ------------------------------------------------------------------------------

if __name__ != "__main__":
    from tests.cluster import Cluster, Peer, call, eventually
    from tests.conftest import DEFAULT_MODEL
    from tests.network.test_pull import LEECH_ENV, _blocks, _pull, _sees
    from tests.procs import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _start_tamperer(cluster: Any, seed: Any) -> tuple[subprocess.Popen[bytes], str]:
    root = cluster.root
    fh = open(root / "tamperer.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tests.network.test_pull_tamper", "--data-dir", str(root / "tamperer"),
                             "--bootstrap", seed.addr], cwd=REPO, env=cluster.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=fh)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line:
                return proc, json.loads(line)["peer_id"]
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the tamperer did not start:\n{(root / 'tamperer.log').read_text()[-3000:]}")


async def _advertises(peer: Any, peer_id: str, cid: str) -> None:
    async def seen() -> bool:
        peers = (await call(peer, "list_peers"))["peers"]
        return any(p["peer_id"] == peer_id and p["model_cids"].get(DEFAULT_MODEL) == cid for p in peers)

    await eventually(seen, 60, f"{peer.name} to see {peer_id} advertise the model")


async def test_a_tampering_peer_cannot_poison_a_pull(cluster: Cluster) -> None:
    seed = cluster.start("seed")
    cid = (await call(seed, "list_peers"))["self"]["model_cids"][DEFAULT_MODEL]
    proc, tamperer = _start_tamperer(cluster, seed)
    try:
        leech = cluster.start("leech", bootstrap=[seed], env=LEECH_ENV)
        await _sees(leech, seed, serving=True)
        await _advertises(leech, tamperer, cid)
        res = await _pull(leech, DEFAULT_MODEL)
        assert not res.is_error, res.content
        stats = res.structured_content["stats"]
        assert res.structured_content["cid"] == cid
        assert stats["bad_blocks"].get(tamperer, 0) >= 1 and tamperer in stats["dropped_peers"], stats
        assert "verification" in stats["dropped_peers"][tamperer] or "root block" in stats["dropped_peers"][tamperer]
        assert stats["fetched_from"].get(seed.peer_id, 0) > 0 and stats["fetched_from"].get(tamperer, 0) == 0, stats
        # what is installed is the real model: its CID, and it runs
        mine = (await call(leech, "list_peers"))["self"]
        assert mine["model_cids"][DEFAULT_MODEL] == cid
        out = await call(leech, "run_inference", model=DEFAULT_MODEL, inputs=["a verified model"], format="floats")
        assert len(out["outputs"][0]["embedding"]) == 384
        text = leech.log_text()
        assert "fail verification" in text and tamperer in text
    finally:
        proc.kill()
        proc.wait()


async def test_with_only_a_tampering_peer_the_pull_fails_and_installs_nothing(cluster: Cluster) -> None:
    seed = cluster.start("seed")
    cid = (await call(seed, "list_peers"))["self"]["model_cids"][DEFAULT_MODEL]
    proc, tamperer = _start_tamperer(cluster, seed)
    try:
        leech = cluster.start("leech", bootstrap=[seed], env=LEECH_ENV)
        await _advertises(leech, tamperer, cid)
        cluster.kill(seed)  # only the tamperer is left to pull from (the dead seed fails and is dropped too)
        res = await _pull(leech, DEFAULT_MODEL)
        assert res.is_error, res.content
        msg = res.content[0].text
        assert "failed" in msg and tamperer in msg, msg
        assert not (leech.data_dir / "models" / DEFAULT_MODEL).exists()
        assert DEFAULT_MODEL not in (await call(leech, "list_peers"))["self"]["models"]
        assert not _blocks(leech) or all(p.stat().st_size > 0 for p in _blocks(leech))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
