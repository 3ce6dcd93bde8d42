"""Dial time direct against relayed against hole-punched, across a NAT in network namespaces
(issue 11).

The namespace setup of tests/network/test_nat.py (:func:`tests.netns.nat_lan`): on a public LAN,
a dialer, a relay and a plain peer; behind an iptables MASQUERADE router, a peer that may open
connections to the relay alone and holds a reservation there. Each a separate process
(``bench/nat_peer.py``), network key on, hole punching on. The dialer makes ``ROUNDS`` fresh
dials to the plain peer (direct: the baseline) and to the natted one through the relay, and
after each relayed dial waits up to 10 s for DCUtR to replace it with a hole-punched
connection. Needs root, iproute2 and iptables; says so and prints no figure otherwise.

Run alone: ``.venv/bin/python -m bench.bench_nat``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.check import require, require_count

ROUNDS = 10
SUBNET, PRIVATE, PORT = "10.83.0", "10.84.0", 4013
REPO = Path(__file__).resolve().parent.parent


def _start(ns: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.nat_peer", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)


def _first_line(proc: subprocess.Popen[str], what: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        if line.startswith("{"):
            return json.loads(line)
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"{what} printed nothing (exit {proc.poll()})")


def main() -> None:
    try:
        from _pytest.outcomes import Skipped

        from tests.netns import nat_lan
    except ImportError as exc:
        print(f"  not run: {exc}")
        return
    env = dict(os.environ, BENCH_PSK=os.urandom(32).hex(), HF_HUB_OFFLINE="1")
    procs: list[subprocess.Popen[str]] = []
    try:
        with nat_lan("bnat", 3, SUBNET, PRIVATE, reach=[2]) as lan:
            try:
                relay = _start(lan.public[1], "relay", f"/ip4/{SUBNET}.2/tcp/{PORT}", env=env)
                plain = _start(lan.public[2], "plain", f"/ip4/{SUBNET}.3/tcp/{PORT}", env=env)
                procs += [relay, plain]
                relay_addr = _first_line(relay, "the relay")["addr"]
                plain_addr = _first_line(plain, "the plain peer")["addr"]
                natted = _start(lan.natted, "natted", f"/ip4/{lan.natted_ip}/tcp/{PORT}", relay_addr, env=env)
                procs.append(natted)
                circuit = _first_line(natted, "the natted peer")["circuit"]
                dialer = subprocess.run(
                    ["ip", "netns", "exec", lan.public[0], sys.executable, "-m", "bench.nat_peer", "dialer",
                     f"/ip4/{SUBNET}.1/tcp/{PORT}", str(ROUNDS), plain_addr, circuit],
                    cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
                lines = [json.loads(x) for x in dialer.stdout.splitlines() if x.startswith("{")]
                require(dialer.returncode == 0 and lines, f"the dialer failed: {dialer.stderr[-2000:]}")
                result = lines[-1]
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    except Skipped as exc:
        print(f"  not run: {exc}")
        return
    require_count(len(result["direct"]), ROUNDS, "direct dials")
    require_count(len(result["relayed"]), ROUNDS, "relayed dials")
    direct, relayed = statistics.median(result["direct"]) * 1e3, statistics.median(result["relayed"]) * 1e3
    upgraded = [u for u in result["upgraded"] if u is not None]
    print(f"  {ROUNDS} fresh dials each across namespaces, network key on, hole punching on")
    print(f"  direct dial (public LAN)          median {direct:8.2f} ms   1.00x")
    print(f"  relayed dial (to the natted peer) median {relayed:8.2f} ms   {relayed / direct:.2f}x")
    if upgraded:
        print(f"  hole-punched (relayed dial + DCUtR) median {statistics.median(upgraded) * 1e3:8.2f} ms "
              f"in {len(upgraded)}/{ROUNDS} rounds")
    else:
        print(f"  hole-punched: DCUtR upgraded none of {ROUNDS} relayed connections within 10 s "
              "(its router lets the natted peer open connections to the relay alone, and MASQUERADE maps "
              "no inbound flow)")


if __name__ == "__main__":
    main()
