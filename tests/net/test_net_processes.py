"""Two or more real processes on 127.0.0.1: connect, request/response, gossip, PSK, Noise-only,
bad frames, redial. Timeouts are generous (two shared cores); nothing asserts speed, but the
measured figures are printed (run with ``-s`` to see them)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.varint import encode_uvarint
from multiaddr import Multiaddr
from netproc import free_tcp_port, median, spawn_peer
from peer_proc import ECHO_PROTOCOL, PING_TOPIC, PONG_TOPIC

from p2p.config import NetworkConfig
from p2p.net import (
    DialError,
    FrameError,
    PeerEventKind,
    PeerNotAllowedError,
    RequestError,
    generate_swarm_key,
    load_swarm_key,
    open_host,
)

pytestmark = pytest.mark.slow

Cfg = Callable[..., NetworkConfig]


async def test_bootstrap_request_and_gossip(tmp_path: Path, net_config: Cfg) -> None:
    async with spawn_peer(tmp_path, name="b") as b:
        t0 = time.perf_counter()
        async with open_host(create_new_key_pair(), net_config(bootstrap=[b.addr])) as a:
            await a.wait_connected(b.peer_id, timeout=30)
            bootstrap_ms = (time.perf_counter() - t0) * 1000
            await b.wait_for(lambda e: e["event"] == "connected" and e["peer"] == a.peer_id, 30)
            assert b.peer_id in a.connected_peers()
            assert any(addr.endswith(f"/p2p/{b.peer_id}") for addr in a.peer_addrs(b.peer_id))
            assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.listen_addrs())

            # a second, explicit dial (fresh host) for a clean connect time
            async with open_host(create_new_key_pair(), net_config()) as c:
                t = time.perf_counter()
                assert await c.connect(b.addr) == b.peer_id
                connect_ms = (time.perf_counter() - t) * 1000

            payload = secrets.token_bytes(100)
            assert await a.request(b.peer_id, ECHO_PROTOCOL, payload, timeout=30) == payload
            rtts = []
            for _ in range(30):
                t = time.perf_counter()
                await a.request(b.peer_id, ECHO_PROTOCOL, payload, timeout=30)
                rtts.append((time.perf_counter() - t) * 1000)
            big = secrets.token_bytes(4000)
            assert await a.request(b.peer_id, ECHO_PROTOCOL, big, timeout=30) == big
            ping_ms = median([await a.ping(b.peer_id) for _ in range(10)])

            # gossip: a publishes on PING, b republishes on PONG, a receives it
            async with a.subscribe(PONG_TOPIC) as pongs:
                with trio.fail_after(30):
                    while b.peer_id not in a.topic_peers(PING_TOPIC):
                        await trio.sleep(0.05)
                first = None
                t_sub = time.perf_counter()
                with trio.fail_after(60):  # until b's mesh/fanout knows our subscription
                    while first is None:
                        data = secrets.token_bytes(8)
                        await a.publish(PING_TOPIC, data)
                        with trio.move_on_after(0.5):
                            async for from_peer, got in pongs:
                                if got == data:
                                    first = (from_peer, got)
                                    break
                first_ms = (time.perf_counter() - t_sub) * 1000
                assert first[0] == b.peer_id
                ev = await b.wait_for(lambda e: e["event"] == "gossip" and e["data"] == first[1].hex(), 10)
                assert ev["from"] == a.peer_id
                round_trips = []
                for _ in range(20):
                    data = secrets.token_bytes(8)
                    t = time.perf_counter()
                    await a.publish(PING_TOPIC, data)
                    with trio.fail_after(30):
                        async for _, got in pongs:
                            if got == data:
                                break
                    round_trips.append((time.perf_counter() - t) * 1000)
                    await trio.sleep(0.12)  # stay under gossipsub's per-topic rate limit
    print(
        f"\n[net] bootstrap connect {bootstrap_ms:.1f} ms (incl. host start), connect {connect_ms:.1f} ms, "
        f"request/response median {median(rtts):.2f} ms (min {min(rtts):.2f}), ping {ping_ms:.2f} ms, "
        f"first gossip echo after subscribe {first_ms:.0f} ms, gossip ping->pong median "
        f"{median(round_trips):.2f} ms (two hops, one-way ~{median(round_trips) / 2:.2f} ms)"
    )


async def test_psk_mismatch_cannot_connect(tmp_path: Path, net_config: Cfg) -> None:
    right, wrong = tmp_path / "right.key", tmp_path / "wrong.key"
    generate_swarm_key(right)
    generate_swarm_key(wrong)
    async with spawn_peer(tmp_path, "--psk-file", str(right), name="b") as b:
        async with open_host(create_new_key_pair(), net_config(), psk=load_swarm_key(wrong)) as a:
            with pytest.raises(DialError):
                await a.connect(b.addr, timeout=5)
            assert b.peer_id not in a.connected_peers()
        async with open_host(create_new_key_pair(), net_config()) as a:  # no key at all
            with pytest.raises(DialError):
                await a.connect(b.addr, timeout=5)
        async with open_host(create_new_key_pair(), net_config(), psk=load_swarm_key(right)) as a:
            assert await a.connect(b.addr, timeout=30) == b.peer_id
            assert await a.request(b.peer_id, ECHO_PROTOCOL, b"private", timeout=30) == b"private"
        assert not any(e["event"] == "connected" and e["peer"] != a.peer_id for e in b.events)


async def test_plaintext_dialer_is_turned_away(tmp_path: Path) -> None:
    async def dial_with(sec_name: str) -> None:
        kp = create_new_key_pair()
        if sec_name == "plaintext":
            sec = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)}
        else:
            sec = {TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(kp, noise_privkey=create_x25519_key_pair().private_key)}
        listen = [Multiaddr("/ip4/127.0.0.1/tcp/0")]
        host = new_host(
            key_pair=kp,
            sec_opt=sec,
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=listen,
            connection_config=ConnectionConfig(max_connections_per_peer=1),
        )
        async with host.run(listen_addrs=listen):
            with trio.fail_after(20):
                await host.connect(info_from_p2p_addr(Multiaddr(b.addr)))

    async with spawn_peer(tmp_path, name="b") as b:
        with pytest.raises(Exception) as info:  # noqa: PT011 - py-libp2p raises SwarmException and kin
            await dial_with("plaintext")
        assert not isinstance(info.value, trio.TooSlowError), "refusal should be a negotiation failure"
        await dial_with("noise")  # control: the same raw host with Noise gets in
        await trio.sleep(0.5)
        connected = [e["peer"] for e in b.events if e["event"] == "connected"]
        assert len(connected) == 1  # only the Noise dialer ever counted as a peer


async def test_bad_frames_reset_the_stream_and_the_peer_keeps_serving(tmp_path: Path, net_config: Cfg) -> None:
    async with spawn_peer(tmp_path, "--max-frame-bytes", "4096", name="b") as b:
        async with open_host(create_new_key_pair(), net_config()) as a:
            await a.connect(b.addr, timeout=30)
            bad_inputs = {
                "oversize announced": encode_uvarint(10_000_000) + b"x" * 64,
                "varint too long": b"\xff" * 11,
                "non-minimal varint": b"\x85\x00" + b"x" * 5,
                "truncated": encode_uvarint(100) + b"x" * 10,
            }
            for label, raw in bad_inputs.items():
                async with a.open_stream(b.peer_id, ECHO_PROTOCOL) as stream:
                    await stream.raw.write(raw)
                    await stream.close_write()
                    with pytest.raises(Exception) as info:  # noqa: PT011
                        with trio.fail_after(30):
                            await stream.read_frame()
                    assert not isinstance(info.value, trio.TooSlowError), label
                # the next request on a new stream is served
                assert await a.request(b.peer_id, ECHO_PROTOCOL, label.encode(), timeout=30) == label.encode()
            # a well-formed request over b's cap: a RequestError here, b still up
            with pytest.raises(RequestError):
                await a.request(b.peer_id, ECHO_PROTOCOL, b"y" * 5000, timeout=30)
            assert await a.request(b.peer_id, ECHO_PROTOCOL, b"still here", timeout=30) == b"still here"
            # our own cap refuses to send an oversize frame at all
            async with open_host(create_new_key_pair(), net_config(max_frame_bytes=1024)) as small:
                await small.connect(b.addr, timeout=30)
                with pytest.raises(RequestError, match="over the 1024-byte limit"):
                    await small.request(b.peer_id, ECHO_PROTOCOL, b"z" * 2000, timeout=30)
            assert b.proc.returncode is None
    log = b.log_text()
    assert "bad frame from peer" in log
    assert "Traceback" not in log


async def test_bootstrap_peer_restart_is_redialled(tmp_path: Path, net_config: Cfg) -> None:
    port = free_tcp_port()
    seed = secrets.token_hex(32)
    args = ("--listen", f"/ip4/127.0.0.1/tcp/{port}", "--key-seed", seed)
    async with spawn_peer(tmp_path, *args, name="b1") as b1:
        cfg = net_config(bootstrap=[b1.addr], reconnect_max_backoff_s=1.0)
        async with open_host(create_new_key_pair(), cfg) as a, a.peer_events() as events:
            await a.wait_connected(b1.peer_id, timeout=30)
            b_id, b_addr = b1.peer_id, b1.addr
            t_kill = time.perf_counter()
            b1.kill()  # SIGKILL: no goodbye, the socket just dies
            with trio.fail_after(30):
                async for ev in events:
                    if ev.kind is PeerEventKind.DISCONNECTED and ev.peer_id == b_id:
                        break
            await b1.proc.wait()
            async with spawn_peer(tmp_path, *args, name="b2") as b2:
                assert (b2.peer_id, b2.addr) == (b_id, b_addr)
                t = time.perf_counter()
                await a.wait_connected(b_id, timeout=30)
                redial_s = time.perf_counter() - t
                outage_s = time.perf_counter() - t_kill
                assert await a.request(b_id, ECHO_PROTOCOL, b"back", timeout=30) == b"back"
    print(
        f"\n[net] redial: reconnected {redial_s:.2f} s after the restarted process was ready, "
        f"{outage_s:.2f} s after kill -9 (includes the restart)"
    )


async def test_allowlist_refuses_other_peers(tmp_path: Path, net_config: Cfg) -> None:
    async with spawn_peer(tmp_path, name="b") as b:
        friend = create_new_key_pair()
        async with open_host(friend, net_config()) as f:
            async with open_host(create_new_key_pair(), net_config(allow_peers=[f.peer_id])) as a:
                a.set_request_handler(ECHO_PROTOCOL, _echo)
                with pytest.raises(PeerNotAllowedError):
                    await a.connect(b.addr)
                # b dials a: the connection is closed and never reported as a peer
                await b.send({"cmd": "connect", "addr": a.listen_addrs()[0]})
                await b.wait_for(lambda e: e["event"] == "dialed", 30)
                await b.send({"cmd": "request", "id": 1, "peer": a.peer_id, "data": b"hi".hex()})
                reply = await b.wait_for(lambda e: e["event"] == "reply" and e["id"] == 1, 30)
                assert not reply["ok"]
                with trio.fail_after(30):
                    while b.peer_id in a.connected_peers():
                        await trio.sleep(0.05)
                assert b.peer_id not in a.connected_peers()
                # the allowed peer is served
                await f.connect(a.listen_addrs()[0])
                assert await f.request(a.peer_id, ECHO_PROTOCOL, b"ok", timeout=30) == b"ok"


async def _echo(peer: str, payload: bytes) -> bytes:
    return payload


def test_frame_error_is_a_net_error() -> None:
    from p2p.net import NetError

    assert issubclass(FrameError, NetError)
