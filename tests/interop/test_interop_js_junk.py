"""A peer from another stack writes junk on every protocol a real node offers (issue 7, item 1).

``junk_peer.mjs`` runs js-libp2p 3 on Node 22 (installed into tests/interop by ``make interop``):
it dials the node over TCP with Noise and Yamux, learns the node's protocols through identify,
and writes truncated varints, 0xff floods, oversize length prefixes and "41 bytes of junk"
(a length prefix, then 0xff) on a fresh stream of each. Before ``p2p.net.libp2p_patches`` the
meshsub payload ended the node (exit 1). The node must keep serving MCP, log the js peer's
pubsub faults once, and still let a well-behaved peer join and gossip.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from p2p.config import NetworkConfig
from p2p.protocols.wire import blocks_protocol
from tests.cluster import Cluster, call, wait_peers
from tests.procs import shared_swarm_key

BLOCKS_PROTOCOL = blocks_protocol(NetworkConfig().network)  # the network the node runs (the default name)

HERE = Path(__file__).resolve().parent
NODE = HERE / "node_modules" / ".bin" / "node"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (NODE.exists() and (HERE / "node_modules" / "libp2p").is_dir()),
        reason="js-libp2p peer not installed: run `make interop` (needs npm and the npm registry)",
    ),
]




async def test_js_libp2p_junk_on_every_protocol_leaves_the_node_serving(cluster: Cluster) -> None:
    n1 = cluster.start("n1")  # private: the js peer is a member (it holds the key; p2p.net.pnet)
    with trio.fail_after(180):
        done = await trio.run_process(
            [str(NODE), str(HERE / "junk_peer.mjs"), n1.addr, str(shared_swarm_key())], capture_stdout=True, capture_stderr=True,
            check=False, cwd=HERE, stdin=subprocess.DEVNULL,
        )
    lines = [json.loads(x) for x in done.stdout.decode().splitlines() if x.startswith("{")]
    assert done.returncode == 0 and lines and lines[-1].get("done"), done.stderr.decode()[-3000:]
    summary, attempts = lines[-1], lines[:-1]
    for expected in ("/meshsub/1.1.0", "/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0", BLOCKS_PROTOCOL):
        assert expected in summary["protocols"], summary
    assert {"protocol": "/meshsub/1.1.0", "junk": "prefix+garbage-protobuf", "sent": True} in attempts, attempts

    await call(n1, "get_node_info")  # a round trip after the junk: still serving MCP
    assert n1.proc is not None and n1.proc.poll() is None, n1.log_text()[-4000:]

    n2 = cluster.start("n2", bootstrap=[n1])
    await wait_peers(n1, [n2])
    await wait_peers(n2, [n1])
    assert n1.proc.poll() is None

    log = n1.log_text()
    faults = [ln for ln in log.splitlines() if "pubsub stream dropped" in ln and summary["peer"] in ln]
    assert len(faults) == 1, faults  # several bad RPCs, one line (once per peer per minute)
    assert "Traceback" not in log, log[-4000:]
