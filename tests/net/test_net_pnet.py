"""The private-network protector (p2p.net.pnet): XSalsa20 as NaCl defines it, nonces read whole.

The cross-stack check (a js-libp2p peer with @libp2p/pnet and the same key file) is in
tests/interop/test_interop_js_gossip.py; here the cipher against NaCl's published vectors, and
the connection wrapper over a transport that hands out a few bytes per read.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from p2p.net.pnet import NONCE_BYTES, PnetConn, hsalsa20, new_protected_conn, xsalsa20

# NaCl's tests/core2.c and tests/stream3.c ("Cryptography in NaCl", Bernstein, 2009)
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
FIRSTKEY = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
STREAM3 = bytes.fromhex("eea6a7251c1e72916d11c2cb214d3c252539121d8e234e652d651fa4c8cff880")


def test_hsalsa20_and_xsalsa20_match_nacl() -> None:
    assert hsalsa20(SHARED, bytes(16)) == FIRSTKEY
    assert xsalsa20(FIRSTKEY, NONCE).encrypt(bytes(32)) == STREAM3
    # the stream continues across calls, as a connection's writes need
    c = xsalsa20(FIRSTKEY, NONCE)
    assert c.encrypt(bytes(10)) + c.encrypt(bytes(22)) == STREAM3


@pytest.mark.parametrize("key,nonce", [(bytes(31), bytes(24)), (bytes(32), bytes(8))])
def test_bad_sizes_are_refused(key: bytes, nonce: bytes) -> None:
    with pytest.raises(ValueError):
        xsalsa20(key, nonce)


def test_a_key_that_is_not_64_hex_digits_is_refused() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        new_protected_conn(object(), "ab" * 31)


class Trickle:
    """A raw connection over a trio stream that returns at most 3 bytes per read."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.wire = bytearray()  # what this side put on the wire

    async def write(self, data: bytes) -> None:
        self.wire += data
        await self.stream.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(min(n or 3, 3)))

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> None:
        return None


async def _read_exactly(conn: PnetConn, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += await conn.read(n - len(got))
    return got


async def test_two_ends_with_one_key_talk_through_short_reads_and_others_read_noise() -> None:
    key = os.urandom(32)
    left, right = trio.testing.memory_stream_pair()
    raw_a, raw_b = Trickle(left), Trickle(right)
    a, b = PnetConn(raw_a, key), PnetConn(raw_b, key)
    message = os.urandom(5000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.write, message)
        assert await _read_exactly(b, len(message)) == message
    # b never wrote, yet its nonce went out before its first read (a peer may wait for it)
    assert len(raw_b.wire) == NONCE_BYTES
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.write, b"reply")
        assert await _read_exactly(a, 5) == b"reply"
    # on the wire: a's nonce, then ciphertext (not the message)
    assert len(raw_a.wire) == NONCE_BYTES + len(message) and message not in bytes(raw_a.wire)

    left, right = trio.testing.memory_stream_pair()
    c, d = PnetConn(Trickle(left), key), PnetConn(Trickle(right), os.urandom(32))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.write, message)
        assert await _read_exactly(d, len(message)) != message


async def test_a_connection_that_ends_inside_the_nonce_is_an_error() -> None:
    from libp2p.network.connection.exceptions import RawConnError

    out_send, out_recv = trio.testing.memory_stream_one_way_pair()  # what the conn writes
    in_send, in_recv = trio.testing.memory_stream_one_way_pair()  # what it reads: 10 bytes, then EOF
    conn = PnetConn(Trickle(trio.StapledStream(out_send, in_recv)), os.urandom(32))
    await in_send.send_all(b"\x01" * 10)
    await in_send.aclose()
    with pytest.raises(RawConnError, match="nonce"):
        await conn.read(100)
    assert len(await out_recv.receive_some()) == NONCE_BYTES  # ours went out first


async def test_a_reflected_nonce_is_refused() -> None:
    """A peer that sends our own nonce back would make both directions share one key stream."""
    from libp2p.network.connection.exceptions import RawConnError

    out_send, out_recv = trio.testing.memory_stream_one_way_pair()
    in_send, in_recv = trio.testing.memory_stream_one_way_pair()
    conn = PnetConn(Trickle(trio.StapledStream(out_send, in_recv)), os.urandom(32))
    await in_send.send_all(conn._local_nonce)
    with pytest.raises(RawConnError, match="own private-network nonce"):
        await conn.read(10)
