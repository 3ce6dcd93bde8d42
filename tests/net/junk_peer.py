"""A hostile peer built from raw py-libp2p and trio sockets: junk on every protocol and layer.

It is not a mock: it dials the victim over loopback TCP, completes (or deliberately breaks)
multistream-select, Noise and Yamux, and writes malformed bytes where a peer's input is parsed:

- on every protocol the victim announced through identify (meshsub, identify, identify-push,
  ping, our blocks protocol, anything added later): truncated varints, 0xff floods, oversize
  length prefixes, a valid prefix followed by garbage protobuf/CBOR, a short body, random bytes;
- below the streams: 0xff floods on the raw TCP port, multistream garbage, half a Noise
  handshake then junk, oversize Noise frames, and junk Yamux frames on an encrypted connection.
"""

from __future__ import annotations

import random
from typing import Any
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.varint import encode_uvarint
from multiaddr import Multiaddr

from p2p.net.host import _security_options

STREAM_JUNK: dict[str, bytes] = {
    "truncated-varint": b"\xff\xff\xff",
    "ff-flood": b"\xff" * 65536,
    "oversize-length": encode_uvarint(1 << 40) + b"\x00" * 16,
    "varint-over-64-bits": b"\xff" * 11 + b"\x01",
    "prefix+garbage-protobuf": encode_uvarint(40) + b"\xff" * 40,  # the 41 bytes of issue 7
    "prefix+short-body": encode_uvarint(5000) + b"\x0a" * 100,
    "prefix+random": encode_uvarint(2048) + random.Random(1).randbytes(2048),
    "zero-length-frames": b"\x00" * 64,
}


@dataclass
class JunkReport:
    """What was sent where (so a failing test says which input did it)."""

    sent: list[str]
    refused: list[str]


def _host() -> IHost:
    kp = create_new_key_pair()
    return new_host(
        key_pair=kp,
        sec_opt=_security_options(kp),
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


@asynccontextmanager
async def junk_host() -> AsyncIterator[IHost]:
    """A bare py-libp2p host (no pubsub, no handlers of ours) listening on loopback."""
    host = _host()
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        yield host


async def victim_protocols(host: IHost, victim_addr: str, timeout: float = 30) -> list[str]:
    """Connect and return the protocols the victim announced through identify."""
    info = info_from_p2p_addr(Multiaddr(victim_addr))
    with trio.fail_after(timeout):
        await host.connect(info)
        while True:
            try:
                protocols = host.get_peerstore().get_protocols(info.peer_id)
            except Exception:  # noqa: BLE001 - not identified yet
                protocols = []
            if protocols:
                return sorted(str(p) for p in protocols)
            await trio.sleep(0.05)


async def junk_on_streams(host: IHost, victim_addr: str, protocols: list[str], timeout: float = 10) -> JunkReport:
    """Every junk payload on a fresh stream of every protocol; streams the victim refuses or
    resets are fine (that is the point), a connection the victim drops is redialled."""
    info = info_from_p2p_addr(Multiaddr(victim_addr))
    report = JunkReport([], [])
    for protocol in protocols:
        for name, payload in STREAM_JUNK.items():
            label = f"{protocol} {name}"
            for tries_left in (2, 1, 0):  # the victim may be dropping our last connection right now
                try:
                    await _send_junk(host, info, protocol, payload, timeout)
                    report.sent.append(label)  # written: the victim's parser got it
                    break
                except Exception as exc:  # noqa: BLE001 - refused/reset by the victim: good
                    if not tries_left:
                        report.refused.append(f"{label}: {type(exc).__name__}")
                    else:
                        await trio.sleep(0.2)
    return report


async def _send_junk(host: IHost, info: Any, protocol: str, payload: bytes, timeout: float) -> None:
    """One junk payload on a fresh stream (dialling again if the victim dropped us); raises if
    the stream could not be opened or written."""
    with trio.fail_after(timeout):
        if not host.get_network().get_connections(info.peer_id):
            await host.connect(info)
        stream = await host.new_stream(info.peer_id, [TProtocol(protocol)])
        try:
            await stream.write(payload)
        except BaseException:
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001
                pass
            raise
        try:
            await stream.close_write()
            with trio.move_on_after(1):  # let the victim parse it; read what it says
                while await stream.read(65536):
                    pass
        except Exception:  # noqa: BLE001 - reset/closed by the victim after the junk: good
            pass
        finally:
            try:
                await stream.reset()
            except Exception:  # noqa: BLE001
                pass


async def junk_under_streams(host: IHost, victim_addr: str) -> JunkReport:
    """Junk Yamux frames on an authenticated, encrypted connection (the victim should drop it)."""
    info = info_from_p2p_addr(Multiaddr(victim_addr))
    report = JunkReport([], [])
    frames = {
        "yamux-bad-version": b"\xff" * 12 + b"\xff" * 100,
        "yamux-huge-data-frame": bytes([0, 0, 0, 0]) + (1).to_bytes(4, "big") + (0xFFFFFFFF).to_bytes(4, "big"),
        "yamux-unknown-type": bytes([0, 9, 0, 0]) + (3).to_bytes(4, "big") + (0).to_bytes(4, "big"),
    }
    for name, frame in frames.items():
        try:
            with trio.fail_after(10):
                if not host.get_network().get_connections(info.peer_id):
                    await host.connect(info)
                conn = host.get_network().get_connections(info.peer_id)[0]
                await conn.muxed_conn.secured_conn.write(frame)
                await trio.sleep(0.3)
            report.sent.append(name)
        except Exception as exc:  # noqa: BLE001
            report.refused.append(f"{name}: {type(exc).__name__}")
        try:
            await host.disconnect(info.peer_id)
        except Exception:  # noqa: BLE001
            pass
    return report


def _ms(line: str) -> bytes:
    """A multistream-select message: uvarint length, the line, a newline."""
    data = line.encode() + b"\n"
    return encode_uvarint(len(data)) + data


async def _raw(port: int, send: Callable[[trio.SocketStream], object], label: str, report: JunkReport) -> None:
    try:
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await send(stream)  # type: ignore[misc]
                with trio.move_on_after(1):
                    while await stream.receive_some(65536):
                        pass
        report.sent.append(label)
    except Exception as exc:  # noqa: BLE001 - the victim hung up on us: good
        report.refused.append(f"{label}: {type(exc).__name__}")


async def junk_on_raw_tcp(port: int) -> JunkReport:
    """Garbage before and during the Noise handshake, on raw TCP."""
    report = JunkReport([], [])

    async def ff_flood(s: trio.SocketStream) -> None:
        await s.send_all(b"\xff" * 65536)

    async def multistream_garbage(s: trio.SocketStream) -> None:
        await s.send_all(_ms("/multistream/1.0.0") + encode_uvarint(3000) + b"\x00" * 3000)

    async def half_noise(s: trio.SocketStream) -> None:
        await s.send_all(_ms("/multistream/1.0.0") + _ms("/noise"))
        await s.send_all((32).to_bytes(2, "big") + random.Random(2).randbytes(32))  # XX msg 1
        with trio.move_on_after(1):
            await s.receive_some(65536)  # msg 2 (and the multistream echoes)
        await s.send_all((500).to_bytes(2, "big") + b"\xff" * 500)  # msg 3: junk

    async def noise_truncated(s: trio.SocketStream) -> None:
        await s.send_all(_ms("/multistream/1.0.0") + _ms("/noise") + (32).to_bytes(2, "big") + b"\x01" * 7)

    async def noise_oversize(s: trio.SocketStream) -> None:
        await s.send_all(_ms("/multistream/1.0.0") + _ms("/noise") + b"\xff\xff" + b"\xee" * 65535)

    for label, fn in (("tcp ff-flood", ff_flood), ("multistream garbage", multistream_garbage),
                      ("half a noise handshake", half_noise), ("noise truncated msg1", noise_truncated),
                      ("noise oversize frame", noise_oversize)):
        await _raw(port, fn, label, report)
    return report


def peer_id_of(addr: str) -> ID:
    return info_from_p2p_addr(Multiaddr(addr)).peer_id
