"""Gossipsub and the swarm key across stacks: our host and a js-libp2p 3 peer (issue 11, item 4).

``gossip_peer.mjs`` runs js-libp2p 3 with ``@libp2p/gossipsub`` 17 on Node 22 (installed into
tests/interop by ``make interop``). It dials our host, subscribes to a topic and publishes on it.

- **Gossip both ways.** An earlier try received no gossip at all. The cause was the package, not
  our node: ``@chainsafe/libp2p-gossipsub`` 14 is built against libp2p 2's interfaces
  (``@libp2p/interface`` ^2), and js-libp2p 3 moved gossipsub into its own monorepo as
  ``@libp2p/gossipsub``.
- **One key file, both stacks.** With a swarm key the js peer protects the connection with
  ``@libp2p/pnet``, which is XSalsa20 with a 24-byte nonce, as go-libp2p and kubo do it.
  py-libp2p's own variant (Salsa20, an 8-byte nonce) could not connect to it; ``p2p.net.pnet``
  replaces it. A js peer with another key is refused.
- **A real node.** A ``p2p start`` node with the harness's key: a js peer that holds the same key
  file gets the node's heartbeats on its peers topic.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2p.config import NetworkConfig
from p2p.net.host import open_host
from p2p.net.psk import format_swarm_key, generate_swarm_key, load_swarm_key
from p2p.protocols.wire import topic as node_topic
from tests.cluster import Cluster, call, eventually
from tests.procs import shared_swarm_key

HERE = Path(__file__).resolve().parent
NODE = HERE / "node_modules" / ".bin" / "node"
TOPIC = "interop-test"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (NODE.exists() and (HERE / "node_modules" / "@libp2p" / "gossipsub").is_dir()),
        reason="js-libp2p peer not installed: run `make interop` (needs npm and the npm registry)",
    ),
]


@dataclass
class JsRun:
    lines: list[dict] = field(default_factory=list)
    returncode: int | None = None
    stderr: str = ""

    def received(self) -> list[tuple[str, bytes]]:
        return [(x.get("from", ""), base64.b64decode(x["received"])) for x in self.lines if "received" in x]

    def first(self, key: str) -> dict | None:
        return next((x for x in self.lines if key in x), None)


async def run_js(target: str, topic: str, *, publish: int = 0, seconds: float = 10, swarm_key: Path | None = None,
                 on_line=None) -> JsRun:
    """Run gossip_peer.mjs to its end; ``on_line`` sees each JSON line as it arrives."""
    args = [str(NODE), str(HERE / "gossip_peer.mjs"), target, topic, "--publish", str(publish), "--seconds", str(seconds)]
    if swarm_key is not None:
        args += ["--swarm-key", str(swarm_key)]
    run = JsRun()
    proc = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, cwd=HERE)
    err = bytearray()

    async def read_err() -> None:
        async for chunk in proc.stderr:
            err.extend(chunk)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_err)
            buf = b""
            async for chunk in proc.stdout:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.startswith(b"{"):
                        obj = json.loads(line)
                        run.lines.append(obj)
                        if on_line is not None:
                            await on_line(obj)
            run.returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    run.stderr = err.decode(errors="replace")
    return run


def key_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    generate_swarm_key(path)
    return path


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "swarm-key"])
async def test_gossip_flows_both_ways_between_our_host_and_js_libp2p(tmp_path: Path, keyed: bool) -> None:
    key = key_file(tmp_path, "swarm.key") if keyed else None
    psk = load_swarm_key(key) if key is not None else None
    config = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False)
    from_js: list[bytes] = []
    async with open_host(create_new_key_pair(), config, psk=psk) as host, host.subscribe(TOPIC) as rx:
        js_peer: list[str] = []

        async def on_line(obj: dict) -> None:
            if "peer" in obj:
                js_peer.append(obj["peer"])

        async def collect() -> None:
            async for m in rx:
                from_js.append(m.data)

        async def publish() -> None:
            # ours: once the js peer is in the topic, a message every 300 ms
            with trio.fail_after(60):
                while not (js_peer and js_peer[0] in host.topic_peers(TOPIC)):
                    await trio.sleep(0.05)
            for i in range(20):
                await host.publish(TOPIC, f"py-{i}".encode())
                await trio.sleep(0.3)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)
                nursery.start_soon(publish)
                run = await run_js(str(host.listen_addrs()[0]), TOPIC, publish=20, seconds=12, swarm_key=key,
                                   on_line=on_line)
                nursery.cancel_scope.cancel()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.first("connected"), run.lines[:5]
    got_py = {data for origin, data in run.received() if origin == host.peer_id}
    got_js = set(from_js)
    # gossip is best effort, but on one quiet link nothing should go missing
    assert got_py >= {f"py-{i}".encode() for i in range(10)}, sorted(got_py)
    assert got_js >= {f"js-{i}".encode() for i in range(10)}, sorted(got_js)
    published = [x for x in run.lines if "published" in x]
    assert published and max(x["recipients"] for x in published) == 1, published[:3]


async def test_a_js_peer_with_another_swarm_key_is_refused(tmp_path: Path) -> None:
    ours, theirs = key_file(tmp_path, "ours.key"), key_file(tmp_path, "theirs.key")
    assert format_swarm_key(load_swarm_key(ours)) != format_swarm_key(load_swarm_key(theirs))
    config = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False)
    async with open_host(create_new_key_pair(), config, psk=load_swarm_key(ours)) as host:
        with trio.fail_after(90):
            run = await run_js(str(host.listen_addrs()[0]), TOPIC, publish=0, seconds=1, swarm_key=theirs)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.first("dial_error") and not run.first("connected"), run.lines
        assert host.connected_peers() == [], host.connected_peers()
        # and without any key at all
        with trio.fail_after(90):
            run = await run_js(str(host.listen_addrs()[0]), TOPIC, publish=0, seconds=1)
        assert run.first("dial_error") and not run.first("connected"), run.lines


async def test_a_js_peer_holding_the_networks_key_hears_a_real_nodes_heartbeats(cluster: Cluster) -> None:
    n1 = cluster.start("n1")  # private: the harness's one swarm key
    info = await call(n1, "get_node_info")
    network = info.get("network") or "default"
    with trio.fail_after(120):
        run = await run_js(n1.addr, node_topic(network, "peers"), publish=0, seconds=12, swarm_key=shared_swarm_key())
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.first("connected"), (run.lines, n1.log_text()[-3000:])
    beats = [data for origin, data in run.received() if origin == n1.peer_id]
    assert beats, (run.lines[-5:], n1.log_text()[-3000:])
    assert n1.proc is not None and n1.proc.poll() is None
    await call(n1, "get_node_info")  # still serving


async def test_a_js_member_hears_heads_fetches_a_block_and_announces(cluster: Cluster) -> None:
    """``member_peer.mjs`` speaks the node's protocols from docs/protocols.md alone: it hears a
    real node's heartbeats and heads announcements (JSON and CBOR on gossipsub), fetches a head
    block over ``/ipfs-accelerate/<network>/blocks/1.0.0`` (uvarint-framed CBOR) and checks it against its
    CID, then announces those heads itself; the node hears that announcement."""
    n1 = cluster.start("n1")
    await call(n1, "submit_workflow", name="for-the-js-member", tasks=[
        {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": f"an event for the js peer {i}"} for i in range(2)])
    info = await call(n1, "get_node_info")
    heard_before = info["replication"]["heard_gossip"]
    with trio.fail_after(120):
        done = await trio.run_process(
            [str(NODE), str(HERE / "member_peer.mjs"), n1.addr, info.get("network") or "default", str(shared_swarm_key()), "8"],
            capture_stdout=True, capture_stderr=True, check=False, cwd=HERE, stdin=subprocess.DEVNULL)
    lines = [json.loads(x) for x in done.stdout.decode().splitlines() if x.startswith("{")]
    assert done.returncode == 0 and lines and lines[-1].get("done"), (lines[-5:], done.stderr.decode()[-3000:])
    assert not [x for x in lines if "decode_error" in x or "fetch_error" in x or "dial_error" in x], lines
    assert any(x.get("heartbeat", {}).get("peer_id") == n1.peer_id for x in lines), lines[:10]
    heads = [x for x in lines if "heads" in x and x.get("from") == n1.peer_id]
    assert heads, lines[:10]
    fetched = [x for x in lines if "fetched" in x]
    assert len(fetched) == 1 and fetched[0]["verified"] and fetched[0]["bytes"] > 0, fetched
    after = await call(n1, "get_node_info")
    known = set(info["clock"]["heads"]) | set(after["clock"]["heads"])
    assert fetched[0]["fetched"] in known or fetched[0]["fetched"] in {c for h in heads for c in h["heads"]}, (fetched, known)
    assert any(x.get("published_heads") for x in lines), lines[-5:]

    async def heard() -> bool:
        return (await call(n1, "get_node_info"))["replication"]["heard_gossip"] > heard_before

    await eventually(heard, 30, "n1 to hear the js member's heads announcement")
    assert n1.proc is not None and n1.proc.poll() is None
