"""The libp2p private-network protector (pnet, "PSK v1") as go-libp2p, kubo and js-libp2p speak it.

A swarm key (:mod:`p2p.net.psk`) admits only the peers that hold it. Under Noise, every raw TCP
connection is wrapped like this, as go-libp2p's ``p2p/net/pnet`` and js-libp2p's ``@libp2p/pnet``
do it:

- each side sends a fresh random 24-byte nonce, once, before anything else;
- everything it writes after that is XORed with the XSalsa20 key stream of (key, its own nonce);
- everything it reads after the peer's nonce is XORed with XSalsa20 of (key, the peer's nonce).

A peer with another key reads garbage, and the Noise handshake that follows fails.

Why this module: py-libp2p 0.8.1 ships a variant that no other stack speaks (an 8-byte nonce and
plain Salsa20), so a Python node and a Go or JS node holding the same key file could not connect.
:mod:`p2p.net.libp2p_patches` (patch 7) puts :func:`new_protected_conn` in the swarm's place.
py-libp2p's version also sent its nonce only with its first write, and read it with a single
``read(8)`` that a short TCP read breaks; here the nonce goes out before the first read or
write, and is read whole.

XSalsa20 is HSalsa20 (which turns the key and the first 16 bytes of the nonce into a subkey)
followed by Salsa20 under that subkey with the last 8 bytes of the nonce. pycryptodome provides
Salsa20 (in C); HSalsa20 runs once per connection, here in Python.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import trio
from Crypto.Cipher import Salsa20
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.connection.raw_connection import RawConnection

NONCE_BYTES = 24
KEY_BYTES = 32
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_MASK = 0xFFFFFFFF


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK) | (v >> (32 - c))


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20 (Bernstein, "Extending the Salsa20 nonce", 2008): 20 Salsa20 rounds over the
    constants, the key and a 16-byte input, without the final addition; returns words 0, 5,
    10, 15, 6, 7, 8, 9 (32 bytes). The subkey of XSalsa20."""
    if len(key) != KEY_BYTES or len(nonce16) != 16:
        raise ValueError("HSalsa20 takes a 32-byte key and a 16-byte input")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce16)
    x = [_SIGMA[0], *k[:4], _SIGMA[1], *n, _SIGMA[2], *k[4:], _SIGMA[3]]

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
        x[c] ^= _rotl((x[b] + x[a]) & _MASK, 9)
        x[d] ^= _rotl((x[c] + x[b]) & _MASK, 13)
        x[a] ^= _rotl((x[d] + x[c]) & _MASK, 18)

    for _ in range(10):
        quarter(0, 4, 8, 12)  # columns
        quarter(5, 9, 13, 1)
        quarter(10, 14, 2, 6)
        quarter(15, 3, 7, 11)
        quarter(0, 1, 2, 3)  # rows
        quarter(5, 6, 7, 4)
        quarter(10, 11, 8, 9)
        quarter(15, 12, 13, 14)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def xsalsa20(key: bytes, nonce: bytes) -> Any:
    """A Salsa20 cipher object (pycryptodome) producing the XSalsa20 key stream of (key, nonce)
    from its start; ``encrypt``/``decrypt`` continue the stream from call to call."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"an XSalsa20 nonce is {NONCE_BYTES} bytes, got {len(nonce)}")
    return Salsa20.new(key=hsalsa20(key, nonce[:16]), nonce=nonce[16:])


class PnetConn(RawConnection):
    """A raw connection seen through the private-network protector (see the module docstring).

    Keeps py-libp2p's ``RawConnection`` interface (and ``_conn``, which
    ``p2p.net.host._tcp_sockets`` follows down to the socket)."""

    def __init__(self, conn: Any, psk: bytes) -> None:  # noqa: D107 - RawConnection.__init__ is not wanted
        if len(psk) != KEY_BYTES:
            raise ValueError(f"a swarm key is {KEY_BYTES} bytes, got {len(psk)}")
        self._conn = conn
        self._psk = psk
        self._local_nonce = os.urandom(NONCE_BYTES)
        self._write_cipher = xsalsa20(psk, self._local_nonce)
        self._read_cipher: Any = None
        self._nonce_sent = False
        self._nonce_lock = trio.Lock()
        self._read_lock = trio.Lock()
        self._write_lock = trio.Lock()
        self.is_initiator = getattr(conn, "is_initiator", False)

    async def _send_nonce(self) -> None:
        if self._nonce_sent:
            return
        async with self._nonce_lock:
            if not self._nonce_sent:
                await self._conn.write(self._local_nonce)
                self._nonce_sent = True

    async def _receive_nonce(self) -> None:
        got = b""
        while len(got) < NONCE_BYTES:
            chunk = await self._conn.read(NONCE_BYTES - len(got))
            if not chunk:
                raise RawConnError("connection closed before the private-network nonce arrived")
            got += chunk
        if got == self._local_nonce:  # reflected: both directions would share one key stream
            raise RawConnError("the peer sent our own private-network nonce back")
        self._read_cipher = xsalsa20(self._psk, got)

    async def write(self, data: bytes) -> None:
        await self._send_nonce()
        # encrypt and write in one critical section: two writers must not take key stream in
        # one order and put bytes on the wire in the other
        async with self._write_lock:
            await self._conn.write(self._write_cipher.encrypt(data))

    async def read(self, n: int | None = None) -> bytes:
        if self._read_cipher is None:
            await self._send_nonce()  # the peer may wait for ours before it writes
            async with self._read_lock:
                if self._read_cipher is None:
                    await self._receive_nonce()
        data = await self._conn.read(n)
        if not data:
            return b""
        return bytes(self._read_cipher.decrypt(data))

    async def close(self) -> None:
        await self._conn.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._conn.get_remote_address()

    def get_transport_addresses(self) -> Any:
        getter = getattr(self._conn, "get_transport_addresses", None)
        return getter() if getter is not None else []

    def get_connection_type(self) -> Any:
        return self._conn.get_connection_type()


def new_protected_conn(conn: Any, psk: str) -> PnetConn:
    """py-libp2p's ``new_protected_conn`` signature (the key as 64 hex digits), our protector."""
    if len(psk) != 2 * KEY_BYTES:
        raise ValueError("Expected 32-byte pre shared key (PSK)")
    return PnetConn(conn, bytes.fromhex(psk))
