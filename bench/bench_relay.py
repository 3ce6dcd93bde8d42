"""Relayed against direct connections (issue 11): dial time and request round trip.

Four real hosts in one process on loopback: ``R`` runs the relay service, ``C`` holds a
reservation on it, ``D`` is an ordinary peer. ``A`` dials ``D`` directly (the baseline) and ``C``
through ``R``, both fresh each round (the connection is closed between rounds), then times 32-byte
request/reply round trips on each connection. Printed as medians and as ratios to the direct
figure of the same run. Loopback hides the relay's extra network hop, so this is the
protocol's own cost (a second Noise handshake over the relay stream, one more stream hop); the
namespace NAT test (tests/network/test_nat.py) proves the path works across a NAT, without
timing it. Hole punching cannot be measured here: on loopback DCUtR dials the address it
learned directly, which is a direct dial.

Run alone: ``.venv/bin/python -m bench.bench_relay``.
"""

from __future__ import annotations

import statistics
import time

import trio

from bench.check import require, require_count

ROUNDS = 15
ECHOES = 60
ECHO = "/ipfs-accelerate/bench/echo/1.0.0"


async def _run() -> dict[str, list[float]]:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from p2p.config import NetworkConfig
    from p2p.net.host import open_host

    def cfg(**kw: object) -> NetworkConfig:
        return NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False, hole_punching=False, dht="off", **kw)

    psk = bytes(range(32))  # the default: a private network, so pnet runs on both hops
    out: dict[str, list[float]] = {"direct_dial": [], "relayed_dial": [], "direct_rtt": [], "relayed_rtt": []}
    async with (
        open_host(create_new_key_pair(), cfg(relay_service=True), psk=psk) as r,
        open_host(create_new_key_pair(), cfg(), psk=psk) as c,
        open_host(create_new_key_pair(), cfg(), psk=psk) as d,
        open_host(create_new_key_pair(), cfg(), psk=psk) as a,
    ):
        async def echo(peer: str, payload: bytes) -> bytes:
            return payload

        for host in (c, d):
            host.set_request_handler(ECHO, echo)
        await c.connect(r.listen_addrs()[0])
        await a.connect(r.listen_addrs()[0])
        with trio.fail_after(10):
            while not c.relays.is_relay(r.peer_id):
                await trio.sleep(0.02)
        require(await c.relays.reserve(r.peer_id, r.listen_addrs(), c.peer_id), "the reservation on the relay failed")
        circuit = c.relays.circuit_addrs()[0]
        direct = d.listen_addrs()[0]
        for _ in range(ROUNDS):
            for key, addr, peer in (("direct", direct, d.peer_id), ("relayed", circuit, c.peer_id)):
                t = time.perf_counter()
                got = await a.connect(addr)
                out[f"{key}_dial"].append(time.perf_counter() - t)
                require(got == peer, f"{key} dial reached {got}, not {peer}")
                require(a.connection_kind(peer) == key, f"the {key} dial made a {a.connection_kind(peer)} connection")
                for _ in range(ECHOES // ROUNDS):
                    t = time.perf_counter()
                    reply = await a.request(peer, ECHO, b"x" * 32)
                    out[f"{key}_rtt"].append(time.perf_counter() - t)
                    require(reply == b"x" * 32, f"{key} echo returned {reply!r}")
                await a.disconnect(peer)
                with trio.fail_after(10):
                    await a.wait_disconnected(peer)
    return out


def main() -> None:
    out = trio.run(_run)
    for key in ("direct_dial", "relayed_dial"):
        require_count(len(out[key]), ROUNDS, key)
    med = {k: statistics.median(v) * 1e3 for k, v in out.items()}
    print(f"  {ROUNDS} fresh dials each and {len(out['direct_rtt'])} 32-byte request round trips each, loopback, network key on")
    print(f"  {'':<24} {'direct ms':>10} {'relayed ms':>11} {'relayed / direct':>17}")
    for name, d, r in (("dial (median)", med["direct_dial"], med["relayed_dial"]),
                       ("request RTT (median)", med["direct_rtt"], med["relayed_rtt"])):
        print(f"  {name:<24} {d:>10.2f} {r:>11.2f} {r / d:>16.2f}x")


if __name__ == "__main__":
    main()
