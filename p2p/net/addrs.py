"""Multiaddr helpers: peer ids in addresses, and concrete addresses for wildcard listeners.

A listener on ``0.0.0.0`` reports ``/ip4/0.0.0.0/tcp/N``, which is useless to a remote peer
(and py-libp2p's mDNS advertises it as is). We expand wildcards to the machine's interface
addresses, loopback last, so what we print and advertise can actually be dialled.
"""

from __future__ import annotations

import ipaddress
import socket

import base58
import psutil
from libp2p.utils.varint import decode_varint_with_size
from multiaddr import Multiaddr

from p2p.net.errors import NetConfigError

_WILDCARDS = {"ip4": "0.0.0.0", "ip6": "::"}


def parse_multiaddr(addr: str) -> Multiaddr:
    """Parse ``addr`` or raise :class:`NetConfigError` naming it."""
    try:
        return Multiaddr(addr)
    except Exception as exc:  # multiaddr raises several unrelated types
        raise NetConfigError(f"invalid multiaddr {addr!r}: {exc}") from None


def is_valid_peer_id(peer_id: str) -> bool:
    """True for a base58 multihash peer id (``12D3KooW...``, ``Qm...``); py-libp2p's
    ``ID.from_base58`` accepts any base58 text, e.g. "nope"."""
    try:
        raw = base58.b58decode(peer_id)
        code, n1 = decode_varint_with_size(raw)
        length, n2 = decode_varint_with_size(raw[n1:])
    except Exception:  # noqa: BLE001
        return False
    return code in (0x00, 0x12) and 0 < length == len(raw) - n1 - n2


def peer_id_of(addr: str) -> str:
    """The peer ``addr`` reaches: its last ``/p2p/<id>`` component (a relayed address,
    ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``, names the relay first); dialling needs
    it to authenticate the peer."""
    parse_multiaddr(addr)
    head, sep, tail = addr.rstrip("/").rpartition("/p2p/")
    value = tail.split("/", 1)[0] if sep else None
    if not value:
        raise NetConfigError(f"multiaddr {addr!r} has no /p2p/<peer id> component")
    if not is_valid_peer_id(str(value)):
        raise NetConfigError(f"multiaddr {addr!r} has an invalid peer id")
    return str(value)


def strip_peer_id(addr: str) -> str:
    """``addr`` without a trailing ``/p2p/<id>``."""
    head, sep, _ = addr.rpartition("/p2p/")
    return head if sep else addr


def interface_ips(family: int) -> list[str]:
    """Usable addresses of this machine's interfaces, non-loopback first (no IPv6 link-local)."""
    ips: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family != family:
                continue
            ip = a.address.split("%", 1)[0]
            try:
                parsed = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if parsed.is_link_local or parsed.is_unspecified or parsed.is_multicast:
                continue
            if ip not in ips:
                ips.append(ip)
    ips.sort(key=lambda ip: ipaddress.ip_address(ip).is_loopback)
    loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
    if not ips and family == socket.AF_INET:
        ips.append(loopback)
    return ips


def expand_wildcard(addr: Multiaddr) -> list[Multiaddr]:
    """``addr`` itself, or one address per interface when it listens on 0.0.0.0 / ::."""
    text = str(addr)
    for proto, wildcard in _WILDCARDS.items():
        prefix = f"/{proto}/{wildcard}/"
        if text.startswith(prefix):
            family = socket.AF_INET if proto == "ip4" else socket.AF_INET6
            rest = text[len(prefix) :]
            return [Multiaddr(f"/{proto}/{ip}/{rest}") for ip in interface_ips(family)]
    return [addr]


def is_loopback(addr: str) -> bool:
    """True for /ip4/127.x and /ip6/::1 addresses."""
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
        try:
            return ipaddress.ip_address(parts[2]).is_loopback
        except ValueError:
            return False
    return False
