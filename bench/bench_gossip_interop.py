"""Gossip delivery to a js-libp2p 3 peer against a Python peer (issue 11, interop).

One of our hosts publishes ``N`` messages, one every 50 ms, each carrying its send time, on a
topic that a second Python host (another process's worth of code, in this process) and a
js-libp2p 3 peer (``tests/interop/gossip_peer.mjs``, ``@libp2p/gossipsub`` 17 on Node 22) both
subscribe to, each connected to the publisher alone, network key on (pnet on both links).
Delivery latency is the receive time minus the send time, on one machine's clock. The js peer
stamps receipt in its own process; the Python peer in ours, which also runs the publisher,
so the two share the publisher's CPU differently: read the ratio as "same order or not".

Needs ``make interop`` (Node 22 and the js packages under tests/interop).
Run alone: ``.venv/bin/python -m bench.bench_gossip_interop``.
"""

from __future__ import annotations

import json
import statistics
import struct
import subprocess
import time
from pathlib import Path

import trio

from bench.check import require

N = 60
TOPIC = "bench-interop"
INTEROP = Path(__file__).resolve().parent.parent / "tests" / "interop"
NODE = INTEROP / "node_modules" / ".bin" / "node"


async def _run(key_file: Path) -> tuple[list[float], list[float]]:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from p2p.config import NetworkConfig
    from p2p.net.host import open_host
    from p2p.net.psk import load_swarm_key

    psk = load_swarm_key(key_file)
    cfg = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False, dht="off", hole_punching=False)
    py_lat: list[float] = []
    js_lat: list[float] = []
    async with (
        open_host(create_new_key_pair(), cfg, psk=psk) as pub,
        open_host(create_new_key_pair(), cfg, psk=psk) as sub,
        pub.subscribe(TOPIC),
        sub.subscribe(TOPIC) as rx,
    ):
        await sub.connect(pub.listen_addrs()[0])
        proc = await trio.lowlevel.open_process(
            [str(NODE), str(INTEROP / "gossip_peer.mjs"), pub.listen_addrs()[0], TOPIC, "--seconds", str(N * 0.05 + 12),
             "--swarm-key", str(key_file)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            cwd=INTEROP)
        js_peer: list[str] = []

        async def read_js() -> None:
            buf = b""
            async for chunk in proc.stdout:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.startswith(b"{"):
                        continue
                    obj = json.loads(line)
                    if "peer" in obj:
                        js_peer.append(obj["peer"])
                    if "received" in obj:
                        import base64

                        (sent,) = struct.unpack(">d", base64.b64decode(obj["received"])[:8])
                        js_lat.append(obj["at_ms"] / 1e3 - sent)

        async def read_py() -> None:
            async for m in rx:
                now = time.time()
                (sent,) = struct.unpack(">d", m.data[:8])
                py_lat.append(now - sent)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_js)
            nursery.start_soon(read_py)
            with trio.fail_after(60):
                while not (js_peer and js_peer[0] in pub.mesh_peers(TOPIC) and sub.peer_id in pub.mesh_peers(TOPIC)):
                    await trio.sleep(0.05)
            for i in range(N):
                await pub.publish(TOPIC, struct.pack(">d", time.time()) + i.to_bytes(4, "big"))
                await trio.sleep(0.05)
            with trio.move_on_after(10):
                while len(js_lat) < N or len(py_lat) < N:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        if proc.returncode is None:
            proc.kill()
    return py_lat, js_lat


def main() -> None:
    import tempfile

    from p2p.net.psk import generate_swarm_key

    require(NODE.exists() and (INTEROP / "node_modules" / "@libp2p" / "gossipsub").is_dir(),
            "the js peer is not installed: run `make interop` (Node 22 and js-libp2p under tests/interop)")
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "swarm.key"
        generate_swarm_key(key)
        py_lat, js_lat = trio.run(_run, key)
    require(len(py_lat) >= N * 0.9 and len(js_lat) >= N * 0.9,
            f"too few deliveries to measure: python {len(py_lat)}/{N}, js {len(js_lat)}/{N}")
    py_ms, js_ms = statistics.median(py_lat) * 1e3, statistics.median(js_lat) * 1e3
    print(f"  {N} messages, one every 50 ms, one publisher, network key on; delivered: python {len(py_lat)}, js {len(js_lat)}")
    print(f"  delivery latency median: python peer {py_ms:.2f} ms, js-libp2p peer {js_ms:.2f} ms "
          f"(js / python {js_ms / py_ms:.2f}x); p90 python {sorted(py_lat)[int(len(py_lat) * 0.9)] * 1e3:.2f} ms, "
          f"js {sorted(js_lat)[int(len(js_lat) * 0.9)] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
