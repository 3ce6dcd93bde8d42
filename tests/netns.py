"""Private switched LANs made of network namespaces, for tests that must not touch the
machine's own interfaces (zeroconf multicasts on every interface it can see).

``bridged_lan`` makes one "switch" namespace holding a Linux bridge and N node namespaces,
each with ``veth0`` at ``<subnet>.(i+1)/24`` plugged into the bridge. The veth pairs are created
inside the switch namespace with their other ends placed straight into the node namespaces, so
no interface ever appears in the test's own namespace. Everything is torn down on exit, and any
process still running inside is killed. Skips, saying why, where namespaces can't be made.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _require_netns() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux-only")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")


def _add_namespaces(names: list[str], made: list[str]) -> None:
    """Create each namespace (recorded in ``made`` for :func:`_remove`); skip if it can't be done."""
    for ns in names:
        r = ip("netns", "add", ns)
        if r.returncode != 0:
            pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
        made.append(ns)


def _plug(switch: str, bridge: str, port: str, ns: str, cidr: str) -> list[tuple[str, ...]]:
    """Steps: a veth from ``bridge`` in ``switch`` (end ``port``) to ``veth0`` in ``ns`` at ``cidr``."""
    return [
        ("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "veth0", "netns", ns),
        ("-n", switch, "link", "set", port, "master", bridge),
        ("-n", switch, "link", "set", port, "up"),
        ("-n", ns, "addr", "add", cidr, "dev", "veth0"),
        ("-n", ns, "link", "set", "lo", "up"),
        ("-n", ns, "link", "set", "veth0", "up"),
    ]


def _run(steps: list[tuple[str, ...]], what: str) -> None:
    for step in steps:
        r = ip(*step)
        if r.returncode != 0:
            pytest.skip(f"cannot set up {what} ({' '.join(step)}): {r.stderr.strip()}")


def _remove(made: list[str]) -> None:
    """Kill whatever still runs inside and delete the namespaces (their veth ends and bridges go too)."""
    for ns in made:
        for pid in ip("netns", "pids", ns).stdout.split():  # anything that outlived its test
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        ip("netns", "del", ns)


@contextmanager
def bridged_lan(name: str, nodes: int, subnet: str) -> Iterator[list[str]]:
    """Yield ``nodes`` namespace names on one bridged LAN ``<subnet>.0/24`` (multicast routed)."""
    _require_netns()
    tag = f"ipfsacc-{name}-{os.getpid() % 100000}"
    switch = f"{tag}-sw"
    members = [f"{tag}-n{i + 1}" for i in range(nodes)]
    made: list[str] = []
    try:
        _add_namespaces([switch, *members], made)
        steps: list[tuple[str, ...]] = [
            ("-n", switch, "link", "set", "lo", "up"),
            ("-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0", "stp_state", "0"),
            ("-n", switch, "link", "set", "br0", "up"),
        ]
        for i, ns in enumerate(members):
            steps += _plug(switch, "br0", f"sw{i + 1}", ns, f"{subnet}.{i + 1}/24")
            steps.append(("-n", ns, "route", "add", "224.0.0.0/4", "dev", "veth0"))
        _run(steps, "a bridged LAN between namespaces")
        yield members
    finally:
        _remove(made)


class SplitLan:
    """Two switched LANs joined by one veth trunk that a test can cut and restore.

    The "switch" namespace holds bridges ``brl`` and ``brr`` and a veth pair ``trunkl``/``trunkr``
    between them; ``left`` node namespaces plug into ``brl`` and ``right`` ones into ``brr``, all
    on one /24 (so no routing changes when the trunk comes back). ``cut()`` takes the trunk down:
    each side still reaches its own members, and nothing crosses. ``heal()`` brings it up."""

    def __init__(self, switch: str, left: list[str], right: list[str]) -> None:
        self.switch, self.left, self.right = switch, left, right

    @property
    def members(self) -> list[str]:
        return [*self.left, *self.right]

    def _trunk(self, state: str) -> None:
        for end in ("trunkl", "trunkr"):
            r = ip("-n", self.switch, "link", "set", end, state)
            assert r.returncode == 0, f"ip link set {end} {state}: {r.stderr.strip()}"

    def cut(self) -> None:
        self._trunk("down")

    def heal(self) -> None:
        self._trunk("up")


@contextmanager
def split_lan(name: str, left: int, right: int, subnet: str) -> Iterator[SplitLan]:
    """Yield a SplitLan of ``left`` + ``right`` namespaces, ``veth0`` at ``<subnet>.(i+1)/24``
    (left first). Torn down on exit, processes inside killed; skips where namespaces can't be made."""
    _require_netns()
    tag = f"ipfsacc-{name}-{os.getpid() % 100000}"
    switch = f"{tag}-sw"
    members = [f"{tag}-n{i + 1}" for i in range(left + right)]
    made: list[str] = []
    try:
        _add_namespaces([switch, *members], made)
        steps: list[tuple[str, ...]] = [("-n", switch, "link", "set", "lo", "up")]
        for br in ("brl", "brr"):
            steps += [("-n", switch, "link", "add", br, "type", "bridge", "stp_state", "0"),
                      ("-n", switch, "link", "set", br, "up")]
        steps += [
            ("-n", switch, "link", "add", "trunkl", "type", "veth", "peer", "name", "trunkr"),
            ("-n", switch, "link", "set", "trunkl", "master", "brl"),
            ("-n", switch, "link", "set", "trunkr", "master", "brr"),
            ("-n", switch, "link", "set", "trunkl", "up"),
            ("-n", switch, "link", "set", "trunkr", "up"),
        ]
        for i, ns in enumerate(members):
            steps += _plug(switch, "brl" if i < left else "brr", f"sw{i + 1}", ns, f"{subnet}.{i + 1}/24")
        _run(steps, "split LANs between namespaces")
        yield SplitLan(switch, members[:left], members[left:])
    finally:
        _remove(made)


class NatLan:
    """A public LAN and one peer behind a NAT router.

    ``public`` namespaces sit on a bridge at ``<subnet>.(i+1)/24``. The router namespace ``gw``
    has a leg on that bridge (``<subnet>.254``) and one on a private link ``<private>.1/24`` to
    ``natted`` (``<private>.2``, default route via the router). The router forwards and
    masquerades (iptables MASQUERADE) what leaves the private side, so the natted peer can reach
    every public address. Nothing on the public side has a route to the private subnet, so nobody
    there can dial it, as with a home router."""

    def __init__(self, public: list[str], gw: str, natted: str, subnet: str, private: str) -> None:
        self.public, self.gw, self.natted, self.subnet, self.private = public, gw, natted, subnet, private

    @property
    def natted_ip(self) -> str:
        return f"{self.private}.2"


@contextmanager
def nat_lan(name: str, public: int, subnet: str, private: str, reach: list[int] | None = None) -> Iterator[NatLan]:
    """Yield a :class:`NatLan`; torn down on exit, processes inside killed. ``reach``: the only
    public members (1-based) the natted peer may open connections to (a firewall on the router;
    replies always pass); None: all. Skips, saying why, without namespaces or without iptables
    (``apt-get install iptables``)."""
    _require_netns()
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed (apt-get install -y iptables): the NAT test needs MASQUERADE")
    tag = f"ipfsacc-{name}-{os.getpid() % 100000}"
    switch, gw, natted = f"{tag}-sw", f"{tag}-gw", f"{tag}-nat"
    members = [f"{tag}-p{i + 1}" for i in range(public)]
    made: list[str] = []
    try:
        _add_namespaces([switch, gw, natted, *members], made)
        steps: list[tuple[str, ...]] = [
            ("-n", switch, "link", "set", "lo", "up"),
            ("-n", switch, "link", "add", "br0", "type", "bridge", "stp_state", "0"),
            ("-n", switch, "link", "set", "br0", "up"),
        ]
        legs = [(ns, f"{subnet}.{i + 1}") for i, ns in enumerate(members)] + [(gw, f"{subnet}.254")]
        for i, (ns, addr) in enumerate(legs):
            steps += _plug(switch, "br0", f"sw{i + 1}", ns, f"{addr}/24")
        steps += [
            ("-n", gw, "link", "add", "priv0", "type", "veth", "peer", "name", "veth0", "netns", natted),
            ("-n", gw, "addr", "add", f"{private}.1/24", "dev", "priv0"),
            ("-n", gw, "link", "set", "priv0", "up"),
            ("-n", natted, "addr", "add", f"{private}.2/24", "dev", "veth0"),
            ("-n", natted, "link", "set", "lo", "up"),
            ("-n", natted, "link", "set", "veth0", "up"),
            ("-n", natted, "route", "add", "default", "via", f"{private}.1"),
        ]
        _run(steps, "the NAT namespaces")
        rules = [["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
                 ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", f"{private}.0/24", "-o", "veth0", "-j", "MASQUERADE"]]
        if reach is not None:
            rules += [["iptables", "-A", "FORWARD", "-i", "priv0", "-d", f"{subnet}.{i}", "-j", "ACCEPT"] for i in reach]
            rules += [["iptables", "-A", "FORWARD", "-i", "priv0", "-j", "DROP"]]
        for cmd in rules:
            r = subprocess.run(["ip", "netns", "exec", gw, *cmd], capture_output=True, text=True, timeout=20)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the NAT router ({' '.join(cmd)}): {r.stderr.strip()}")
        yield NatLan(members, gw, natted, subnet, private)
    finally:
        _remove(made)
