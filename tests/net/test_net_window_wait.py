"""A stream write waits for a slow reader's window for as long as its caller allows (patch 6).

py-libp2p 0.8.1 resets a yamux stream whose peer has not opened its receive window within a
fixed 5 s. A receiver whose event loop is busy (three nodes on two cores running a 10,000-task
workflow) often takes longer, and every 1.3 MB block transfer then died at the ~1 MiB granted so
far. Here the receiver reads nothing for 7 s, then everything: a 24 MiB write (more than the
largest window yamux grants) must complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2p.config import NetworkConfig
from p2p.net import open_host
from p2p.net.libp2p_patches import WINDOW_WAIT_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PROTO = TProtocol("/ipfs-accelerate/test/slow-reader/1.0.0")
SIZE = 24 << 20  # more than any window yamux grants (auto-tuned up to 16 MiB)
STALL_S = 7.0  # longer than the library's 5 s


async def test_a_write_outlasts_a_reader_that_stalls_longer_than_five_seconds(
    net_config: Callable[..., NetworkConfig],
) -> None:
    assert WINDOW_WAIT_S > STALL_S
    got = trio.Event()
    received = bytearray()

    async def slow_reader(stream: object) -> None:
        await trio.sleep(STALL_S)  # a busy loop: nothing read, no window update
        while len(received) < SIZE:
            chunk = await stream.read(SIZE - len(received))  # type: ignore[attr-defined]
            if not chunk:
                break
            received.extend(chunk)
        got.set()
        await stream.close()  # type: ignore[attr-defined]

    async with open_host(create_new_key_pair(), net_config()) as a, open_host(create_new_key_pair(), net_config()) as b:
        b.libp2p_host.set_stream_handler(PROTO, slow_reader)
        await a.connect(f"{b.listen_addrs()[0]}")
        stream = await a.libp2p_host.new_stream(ID.from_base58(b.peer_id), [PROTO])
        payload = bytes(range(256)) * (SIZE // 256)
        started = time.perf_counter()
        with trio.fail_after(60):
            await stream.write(payload)
            await got.wait()
        took = time.perf_counter() - started
        await stream.close()
    assert bytes(received) == payload
    assert took >= STALL_S - 0.5, f"the write finished in {took:.1f} s: the reader never stalled it"
