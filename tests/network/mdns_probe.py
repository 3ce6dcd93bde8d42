"""One mDNS participant for test_mdns_redelivery: a libp2p identity that advertises itself with
``p2p.net.mdns.mdns_discovery`` and prints one JSON line per delivery it receives.

Run inside a network namespace (zeroconf multicasts on every interface it sees). Arguments:
``ADVERTISE_ADDR SECONDS [LATE_S [STOP_AFTER]]``. LATE_S > 0 makes the thread that builds MDNSDiscovery
return LATE_S seconds late, after zeroconf's browser is already running: what a loaded machine
does to the hop back to the event loop. Prints ``{"started": peer_id}`` once advertised, then
``{"found": peer_id, "t": seconds}`` per delivery, for SECONDS or until STOP_AFTER deliveries."""

from __future__ import annotations

import json
import sys
import time

import structlog
import trio
from libp2p import new_host

import p2p.net.mdns as mdns


def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: JSON lines
    advertise, seconds = sys.argv[1], float(sys.argv[2])
    late_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if late_s > 0:
        base = mdns.MDNSDiscovery

        class LateDiscovery(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                time.sleep(late_s)  # in the worker thread: the browser runs meanwhile

        mdns.MDNSDiscovery = LateDiscovery  # type: ignore[misc]

    async def run() -> None:
        nonlocal stop_after
        host = new_host()
        network = host.get_network()
        t0 = time.monotonic()
        async with mdns.mdns_discovery(network, [advertise], 4001) as found:
            print(json.dumps({"started": str(host.get_id())}), flush=True)
            with trio.move_on_after(seconds):
                async for info in found:
                    print(json.dumps({"found": str(info.peer_id), "t": round(time.monotonic() - t0, 2)}),
                          flush=True)
                    stop_after -= 1
                    if stop_after == 0:
                        break

    trio.run(run)


if __name__ == "__main__":
    main()
