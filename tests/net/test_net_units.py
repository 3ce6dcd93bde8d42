"""In-memory tests of framing, swarm keys, pacing and addresses (no sockets)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from libp2p.utils.varint import encode_uvarint
from multiaddr import Multiaddr

from p2p.net import (
    Debouncer,
    FrameTooLarge,
    MalformedFrame,
    NetConfigError,
    Pacer,
    PskError,
    StreamEnded,
    TruncatedFrame,
    encode_frame,
    format_swarm_key,
    generate_swarm_key,
    iter_frames,
    load_swarm_key,
    parse_swarm_key,
    read_frame,
)
from p2p.net.addrs import expand_wildcard, peer_id_of, strip_peer_id
from p2p.net.events import Fanout


class BytesReader:
    """Returns at most ``chunk`` bytes per read, like a network stream."""

    def __init__(self, data: bytes, chunk: int = 3) -> None:
        self.data = data
        self.chunk = chunk

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        take = min(self.chunk, len(self.data) if n is None else n)
        out, self.data = self.data[:take], self.data[take:]
        return out


# --- framing ---------------------------------------------------------------------------------


async def test_frames_round_trip_in_small_chunks() -> None:
    frames = [b"", b"a", b"x" * 300, os.urandom(5000)]
    data = b"".join(encode_frame(f, 10_000) for f in frames)
    assert [f async for f in iter_frames(BytesReader(data), 10_000)] == frames


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (encode_uvarint(10_001) + b"x", FrameTooLarge),
        (b"\xff" * 11, MalformedFrame),
        (b"\x80\x00", MalformedFrame),  # non-minimal zero
        (b"\xff" * 9 + b"\x7f", MalformedFrame),  # > 64 bits
        (b"\x85", TruncatedFrame),
        (encode_uvarint(50) + b"y" * 10, TruncatedFrame),
        (b"", StreamEnded),
    ],
)
async def test_bad_input_raises_a_frame_error(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        await read_frame(BytesReader(data), 10_000)


def test_oversize_frame_is_not_encoded() -> None:
    with pytest.raises(FrameTooLarge, match="over the 4-byte limit"):
        encode_frame(b"12345", 4)


# --- swarm keys ------------------------------------------------------------------------------


def test_swarm_key_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    key = generate_swarm_key(path)
    assert len(key) == 32 and load_swarm_key(path) == key
    assert path.read_text().splitlines() == ["/key/swarm/psk/1.0.0/", "/base16/", key.hex()]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(PskError, match="already exists"):
        generate_swarm_key(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 3 lines"),
        ("/key/swarm/psk/2.0.0/\n/base16/\n" + "ab" * 32, "first line"),
        ("/key/swarm/psk/1.0.0/\n/base64/\n" + "ab" * 32, "not supported"),
        ("/key/swarm/psk/1.0.0/\n/base32/\n" + "ab" * 32, "second line"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n" + "ab" * 31, "64 hex digits"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n" + "zz" * 32, "not valid hexadecimal"),
        ("/key/swarm/psk/1.0.0/\n/base16/\n" + "00" * 32, "all zeros"),
    ],
)
def test_malformed_swarm_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(PskError, match=message):
        parse_swarm_key(text)


def test_swarm_key_tolerates_crlf_and_blank_lines() -> None:
    key = os.urandom(32)
    text = format_swarm_key(key).replace("\n", "\r\n") + "\r\n\r\n"
    assert parse_swarm_key(text) == key


def test_missing_swarm_key_file(tmp_path: Path) -> None:
    with pytest.raises(PskError, match="not found"):
        load_swarm_key(tmp_path / "nope.key")


# --- pacing ----------------------------------------------------------------------------------


async def test_debouncer_coalesces_bursts_and_spaces_flushes(autojump_clock: trio.abc.Clock) -> None:
    flushed: list[tuple[float, list[int]]] = []

    async def flush(items: list[int]) -> None:
        flushed.append((trio.current_time(), items))

    deb: Debouncer[int] = Debouncer(flush, delay_s=0.02, min_interval_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(deb.run)
        for i in range(100):  # a burst: one flush
            deb.submit(i)
        await trio.sleep(0.1)
        for i in range(100, 150):  # 2 ms apart for 1 s: paced to one flush per 0.2 s
            deb.submit(i)
            await trio.sleep(0.02)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert flushed[0][1] == list(range(100))
    assert [i for _, items in flushed for i in items] == list(range(150))
    gaps = [b[0] - a[0] for a, b in zip(flushed, flushed[1:], strict=False)]
    assert all(g >= 0.2 - 1e-9 for g in gaps)
    assert len(flushed) <= 1 + 1.0 / 0.2 + 1


async def test_debouncer_survives_a_failing_flush(autojump_clock: trio.abc.Clock) -> None:
    calls: list[list[str]] = []

    async def flush(items: list[str]) -> None:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("publish failed")

    deb: Debouncer[str] = Debouncer(flush, delay_s=0, min_interval_s=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(deb.run)
        deb.submit("a")
        await trio.sleep(0.5)
        deb.submit("b")
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert calls == [["a"], ["b"]]


async def test_pacer_limits_the_rate(autojump_clock: trio.abc.Clock) -> None:
    pacer = Pacer(rate_per_s=5, burst=2)
    start = trio.current_time()
    for _ in range(12):
        await pacer.acquire()
    # 2 at once, then 10 more at 5/s
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)


# --- fan-out and addresses -------------------------------------------------------------------


async def test_fanout_copies_to_every_subscriber_and_drops_for_slow_ones() -> None:
    fan: Fanout[int] = Fanout("t", buffer=2)
    async with fan.subscribe() as a, fan.subscribe() as b:
        for i in range(3):
            fan.publish(i)
        assert [a.receive_nowait(), a.receive_nowait()] == [0, 1]
        assert b.receive_nowait() == 0
        assert fan.dropped == 2
    assert len(fan) == 0


def test_addresses() -> None:
    pid = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    assert peer_id_of(f"/ip4/127.0.0.1/tcp/1/p2p/{pid}") == pid
    assert strip_peer_id(f"/ip4/127.0.0.1/tcp/1/p2p/{pid}") == "/ip4/127.0.0.1/tcp/1"
    with pytest.raises(NetConfigError, match="no /p2p/"):
        peer_id_of("/ip4/127.0.0.1/tcp/1")
    with pytest.raises(NetConfigError, match="invalid multiaddr"):
        peer_id_of("not-an-addr")
    expanded = [str(a) for a in expand_wildcard(Multiaddr("/ip4/0.0.0.0/tcp/9"))]
    assert "/ip4/127.0.0.1/tcp/9" in expanded and expanded[-1] == "/ip4/127.0.0.1/tcp/9"
    assert expand_wildcard(Multiaddr("/ip4/127.0.0.1/tcp/9")) == [Multiaddr("/ip4/127.0.0.1/tcp/9")]


def test_a_shutdown_race_is_not_counted_as_a_bad_rpc() -> None:
    """A peer leaving while its RPC is handled ("Nursery is closed to new arrivals") is this
    host's shutdown race, not a malformed RPC: it is neither counted nor warned about, while a
    decode error still is (CI once failed big_gossip on the former)."""
    from google.protobuf.message import DecodeError

    from p2p.net import libp2p_patches

    before = libp2p_patches.stats["pubsub_stream_dropped"]
    libp2p_patches._report("pubsub_stream_dropped", "peer-a", "dropped", "pubsub",
                           RuntimeError("Nursery is closed to new arrivals"))
    assert libp2p_patches.stats["pubsub_stream_dropped"] == before
    libp2p_patches._report("pubsub_stream_dropped", "peer-a", "dropped", "pubsub", DecodeError("Error parsing message"))
    assert libp2p_patches.stats["pubsub_stream_dropped"] == before + 1
    libp2p_patches._report("pubsub_stream_dropped", "peer-a", "dropped", "pubsub", RuntimeError("something else"))
    assert libp2p_patches.stats["pubsub_stream_dropped"] == before + 2


def test_the_peer_of_a_relayed_address_is_the_last_one() -> None:
    """``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>`` reaches <peer>: kept peers, invites and
    dials must file it under the peer, not the relay."""
    from p2p.net.addrs import peer_id_of
    from p2p.net.psk import decode_invite, encode_invite

    relay, peer = "12D3KooWAvoqAhABomc7GbbTexFhEndkT3g14TBC1u6qnXrxr1fz", "12D3KooWPwNBFFMU8pSM6Fdi9c1o2zzMUF94Vq8shw7y96AQUfJ5"
    circuit = f"/ip4/10.0.0.2/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{peer}"
    assert peer_id_of(circuit) == peer
    assert peer_id_of(f"/ip4/10.0.0.2/tcp/4001/p2p/{relay}") == relay
    # an invite from a node behind NAT names its own address and its address through a relay
    addrs = [f"/ip4/192.168.1.5/tcp/4001/p2p/{peer}", circuit]
    invite = decode_invite(encode_invite(bytes(range(1, 33)), "default", addrs))
    assert invite.peer_id == peer and invite.addrs == tuple(addrs)
