"""One host of bench_nat, run inside a network namespace (``ip netns exec NS python -m bench.nat_peer``).

Roles:

- ``relay ADDR``: listen on ADDR with the relay service; print ``{"addr"}``; run until killed.
- ``natted ADDR RELAY``: listen on ADDR, connect to RELAY, reserve a slot; print ``{"circuit"}``.
- ``plain ADDR``: listen on ADDR; print ``{"addr"}``.
- ``dialer ADDR ROUNDS DIRECT CIRCUIT``: listen on ADDR; ROUNDS times, dial DIRECT and then
  CIRCUIT on fresh connections, closing each, and wait up to 10 s for DCUtR to upgrade the
  relayed one; print ``{"direct": [s], "relayed": [s], "upgraded": [s or null]}``.

Every host uses the network key in ``$BENCH_PSK`` (hex) and hole punching on. Logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio


def _out(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(role: str, args: list[str]) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from p2p.config import NetworkConfig
    from p2p.net.host import open_host

    psk = bytes.fromhex(os.environ["BENCH_PSK"])
    cfg = NetworkConfig(listen=[args[0]], mdns=False, dht="off", relay_service=(role == "relay"))
    async with open_host(create_new_key_pair(), cfg, psk=psk) as net:
        if role in ("relay", "plain"):
            _out({"addr": net.listen_addrs()[0]})
            await trio.sleep_forever()
        if role == "natted":
            relay = await net.connect(args[1])
            with trio.fail_after(20):
                while not net.relays.is_relay(relay):
                    await trio.sleep(0.02)
            if not await net.relays.reserve(relay, net.remote_addrs(relay) or [args[1]], net.peer_id):
                raise SystemExit(f"reservation refused: {net.relays.state.last_error}")
            _out({"circuit": net.relays.circuit_addrs()[0]})
            await trio.sleep_forever()
        rounds, direct, circuit = int(args[1]), args[2], args[3]
        result: dict[str, list[float | None]] = {"direct": [], "relayed": [], "upgraded": []}
        for _ in range(rounds):
            for key, addr in (("direct", direct), ("relayed", circuit)):
                t = time.perf_counter()
                peer = await net.connect(addr)
                result[key].append(time.perf_counter() - t)
                if key == "relayed":
                    upgraded = None
                    with trio.move_on_after(10):
                        while net.connection_kind(peer) != "hole-punched":
                            await trio.sleep(0.05)
                        upgraded = time.perf_counter() - t
                    result["upgraded"].append(upgraded)
                await net.disconnect(peer)
                with trio.fail_after(15):
                    await net.wait_disconnected(peer)
        _out(result)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2:])
