"""Two hosts in one process over real loopback TCP: paced gossip, self-filtering, peer events."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2p.config import NetworkConfig
from p2p.net import Debouncer, PeerEventKind, ProtocolRefused, RequestError, open_host
from p2p.protocols.wire import blocks_protocol

Cfg = Callable[..., NetworkConfig]
TOPIC = "/ipfs-accelerate/test/heads"


async def test_debounced_announcements_all_arrive_and_own_messages_are_filtered(net_config: Cfg) -> None:
    async with open_host(create_new_key_pair(), net_config()) as a, open_host(create_new_key_pair(), net_config()) as b:
        async with b.peer_events() as events:
            await a.connect(b.listen_addrs()[0])
            with trio.fail_after(30):
                ev = await events.receive()
            assert ev.kind is PeerEventKind.CONNECTED and ev.peer_id == a.peer_id
        async with a.subscribe(TOPIC) as own, b.subscribe(TOPIC) as inbox:
            with trio.fail_after(30):  # both meshes formed (gossipsub heartbeat is 1 s)
                while a.peer_id not in b.mesh_peers(TOPIC) or b.peer_id not in a.mesh_peers(TOPIC):
                    await trio.sleep(0.05)

            async def announce(items: list[int]) -> None:
                await a.publish(TOPIC, json.dumps(items).encode())

            deb: Debouncer[int] = Debouncer(announce, delay_s=0.02, min_interval_s=0.2)
            seen: set[int] = set()
            messages = 0
            async with trio.open_nursery() as nursery:
                await nursery.start(deb.run)
                for i in range(300):  # 300 "heads" in ~0.6 s: far over gossipsub's per-topic rate
                    deb.submit(i)
                    if i % 10 == 0:
                        await trio.sleep(0.02)
                with trio.fail_after(30):
                    async for from_peer, data in inbox:
                        assert from_peer == a.peer_id
                        messages += 1
                        seen.update(json.loads(data))
                        if len(seen) == 300:
                            break
                nursery.cancel_scope.cancel()
            assert seen == set(range(300))
            assert messages == deb.flushes < 20
            # a never hears its own announcements
            assert own.statistics().current_buffer_used == 0
        async with a.peer_events() as events:
            await b.disconnect(a.peer_id)
            with trio.fail_after(30):
                ev = await events.receive()
            assert ev == (PeerEventKind.DISCONNECTED, b.peer_id)
            assert a.connected_peers() == []


async def test_a_protocol_the_peer_does_not_speak_is_refused_as_such(net_config: Cfg) -> None:
    """A node of another network (the clock's protocol ids carry the name) answers "na" at
    negotiation: ProtocolRefused, which replication treats as "not one of ours", distinct from
    a request that failed on a protocol the peer does speak."""
    async with open_host(create_new_key_pair(), net_config()) as a, open_host(create_new_key_pair(), net_config()) as b:
        async def broken(peer: str, request: bytes) -> bytes:
            raise RuntimeError("a handler that fails")

        b.set_request_handler(blocks_protocol("blue"), broken)
        await a.connect(b.listen_addrs()[0])
        with pytest.raises(ProtocolRefused, match="red/blocks"):
            await a.request(b.peer_id, blocks_protocol("red"), b"x", timeout=20)
        with pytest.raises(RequestError) as err:
            await a.request(b.peer_id, blocks_protocol("blue"), b"x", timeout=20)
        assert not isinstance(err.value, ProtocolRefused), err.value
        assert a.is_connected(b.peer_id)  # a refusal is one stream's business


async def test_startup_errors_are_clear_and_unwrapped(net_config: Cfg) -> None:
    import socket

    import pytest

    from p2p.net import NetConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(NetConfigError, match="cannot listen"):
            async with open_host(create_new_key_pair(), net_config(listen=[f"/ip4/127.0.0.1/tcp/{port}"])):
                pass
    with pytest.raises(NetConfigError, match="no /p2p/"):
        async with open_host(create_new_key_pair(), net_config(bootstrap=["/ip4/127.0.0.1/tcp/1"])):
            pass
    with pytest.raises(NetConfigError, match="QUIC"):
        async with open_host(create_new_key_pair(), net_config(quic=True), psk=bytes(range(32))):
            pass
    with pytest.raises(NetConfigError, match="allow_peers"):
        async with open_host(create_new_key_pair(), net_config(allow_peers=["nope"])):
            pass
    # the caller's own exception comes out as itself, not wrapped in ExceptionGroups
    with pytest.raises(KeyError):
        async with open_host(create_new_key_pair(), net_config()):
            raise KeyError("mine")


async def test_quic_when_enabled(net_config: Cfg) -> None:
    cfg = net_config(quic=True)
    async with open_host(create_new_key_pair(), cfg) as a, open_host(create_new_key_pair(), cfg) as b:

        async def echo(peer: str, payload: bytes) -> bytes:
            return payload

        b.set_request_handler("/ipfs-accelerate/test/echo/1.0.0", echo)
        quic = [addr for addr in b.listen_addrs() if "/quic-v1/" in addr]
        assert quic and any("/tcp/" in addr for addr in b.listen_addrs())
        assert await a.connect(quic[0]) == b.peer_id
        assert await a.request(b.peer_id, "/ipfs-accelerate/test/echo/1.0.0", b"q" * 1000) == b"q" * 1000


@pytest.mark.xfail(strict=False, reason="py-libp2p 0.8.1 QUIC truncates 10 MiB transfers: 6 of 15 runs of 3 "
                                        "lost bytes (10,485,171 of 10,485,760 arrived in one)")
async def test_quic_carries_10_mib_transfers_intact(net_config: Cfg) -> None:
    """Issue 11 item 6: QUIC may become an option once 10 MiB transfers arrive whole. Three of
    them, each written in 1 MiB writes and hashed at the far end. Measured: they do not always
    arrive whole (6 of 15 runs lost the last few hundred bytes of one transfer; no error on
    either side), and when they do they take ~2 s against ~0.08 s over TCP on loopback. So
    ``network.quic`` stays off by default; our framed protocols turn a truncation into a
    ``TruncatedFrame`` error on that stream, never into wrong data. This test flips to passing
    when a py-libp2p release fixes it."""
    import hashlib
    import os

    cfg = net_config(quic=True, dht="off", hole_punching=False)
    proto = "/ipfs-accelerate/test/bulk/1.0.0"
    async with open_host(create_new_key_pair(), cfg) as a, open_host(create_new_key_pair(), cfg) as b:
        received: list[tuple[int, str]] = []
        done = trio.Event()

        async def sink(peer: str, stream: object) -> None:
            h, n = hashlib.sha256(), 0
            while True:
                try:
                    chunk = await stream.raw.read(1 << 16)
                except EOFError:  # py-libp2p ends a stream with StreamEOF, not b""
                    break
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            received.append((n, h.hexdigest()))
            done.set()

        b.set_stream_handler(proto, sink)
        quic = [addr for addr in b.listen_addrs() if "/quic-v1/" in addr]
        assert await a.connect(quic[0]) == b.peer_id
        assert any("/quic" in addr for addr in a.remote_addrs(b.peer_id)), a.remote_addrs(b.peer_id)
        for _ in range(3):
            data = os.urandom(10 << 20)
            done = trio.Event()
            with trio.fail_after(120):
                async with a.open_stream(b.peer_id, proto) as stream:
                    for off in range(0, len(data), 1 << 20):
                        await stream.raw.write(data[off:off + (1 << 20)])
                    await stream.close_write()
                await done.wait()
            assert received[-1] == (len(data), hashlib.sha256(data).hexdigest())


async def test_diagnose_reports_the_loop_and_each_connection(net_config: Cfg) -> None:
    """What an unanswered re-check ping logs (``NetHost.diagnose``): read from the live muxer."""
    async with open_host(create_new_key_pair(), net_config()) as a, open_host(create_new_key_pair(), net_config()) as b:
        await a.connect(b.listen_addrs()[0])
        report = a.diagnose(b.peer_id)
        assert report["runnable_tasks"] >= 0 and len(report["connections"]) == 1, report
        conn = report["connections"][0]
        assert conn["streams"] >= 0 and 0 < conn["outbound_slots_free"] <= 256, report
        assert conn["accept_backlog"] == conn["reader_waiting_on_accept"] == 0 and conn["closed"] is False, report
        assert a.diagnose("not-a-peer-id").keys() >= {"error"}  # never raises
