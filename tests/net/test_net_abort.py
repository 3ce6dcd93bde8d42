"""Closing the connection of a peer that stopped answering is bounded (issue 7 item 9).

A cut link or a frozen peer leaves TCP retransmitting for minutes. Once the socket's send buffer
is full, a task writing to the connection blocks in ``send_all`` holding yamux's connection write
lock (shielded: see ``libp2p_patches`` patch 5), and py-libp2p's ``host.disconnect`` blocks behind it (its yamux GO_AWAY waits for that lock)
for as long as the link stays dead: the partition test saw one disconnect hang 54 s. Liveness
closes the connections of silent peers so that redial opens fresh ones; a close that hangs keeps
the dead connection registered (``is_connected`` stays true, nothing redials).

Here the remote peer is a real process frozen with SIGSTOP: its kernel still holds the connection
but nobody reads, so the buffers fill exactly as over a cut link. ``NetHost.disconnect`` must
return within its grace period plus the abort wait, leave no connection in the swarm, and leave
the host able to dial the peer again once it runs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from netproc import spawn_peer
from peer_proc import ECHO_PROTOCOL

from p2p.config import NetworkConfig
from p2p.net import PeerEventKind, open_host
from p2p.net.host import ABORT_WAIT_S, CLOSE_GRACE_S
from p2p.net.libp2p_patches import queued

pytestmark = pytest.mark.slow

Cfg = Callable[..., NetworkConfig]

STREAMS = 48  # x 256 KiB yamux window each: far more than loopback's socket buffers hold
CHUNK = 256 * 1024


async def _wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not pred():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not reached in {timeout} s: {what}")


async def test_disconnect_of_a_frozen_peer_with_a_full_send_buffer_is_bounded(tmp_path: Path, net_config: Cfg) -> None:
    async with spawn_peer(tmp_path, name="b") as b:
        try:
            async with open_host(create_new_key_pair(), net_config()) as a, a.peer_events() as events:
                await a.connect(b.addr)
                pid = ID.from_base58(b.peer_id)
                swarm = a.libp2p_host.get_network()
                # opening a stream needs b's answer: open them all while b still runs
                raw = [await a.libp2p_host.new_stream(pid, [TProtocol(ECHO_PROTOCOL)]) for _ in range(STREAMS)]
                muxed = swarm.get_connections(pid)[0].muxed_conn
                b.kill(signal.SIGSTOP)
                failed_writes = 0

                async def flood(stream: object) -> None:
                    nonlocal failed_writes
                    try:
                        await stream.write(b"\0" * CHUNK)  # type: ignore[attr-defined]
                    except Exception:  # noqa: BLE001 - the abort ends it; that is the point
                        failed_writes += 1

                with trio.CancelScope() as writers_scope:
                    async with trio.open_nursery() as writers:
                        for s in raw:
                            writers.start_soon(flood, s)
                        # the premise: a writer is stuck in send_all holding the connection's write
                        # lock, and others queue behind it (a graceful close would queue too)
                        await _wait_for(lambda: queued(muxed)["writers_waiting"] > 0, 60,
                                        "writers blocked behind a full socket")
                        bound = CLOSE_GRACE_S + ABORT_WAIT_S + 10.0  # generous: two shared cores
                        t = time.perf_counter()
                        with trio.fail_after(bound):
                            await a.disconnect(b.peer_id)
                        took = time.perf_counter() - t
                        assert not swarm.get_connections(pid), "the aborted connection is still in the swarm"
                        assert not a.is_connected(b.peer_id)
                        writers_scope.deadline = trio.current_time() + bound
                assert not writers_scope.cancelled_caught, "writers still stuck on the aborted connection"
                assert failed_writes > 0
                with trio.fail_after(30):  # the swarm reported it, so redial logic sees it too
                    async for ev in events:
                        if ev.kind is PeerEventKind.DISCONNECTED and ev.peer_id == b.peer_id:
                            break
                b.kill(signal.SIGCONT)
                await a.connect(b.addr)  # the host dials the same peer again
                assert await a.request(b.peer_id, ECHO_PROTOCOL, b"back", timeout=30) == b"back"
        finally:
            b.kill(signal.SIGCONT)
    print(f"\n[net] disconnect of a frozen peer with a full send buffer: {took:.2f} s "
          f"(grace {CLOSE_GRACE_S:g} s, abort wait {ABORT_WAIT_S:g} s)")
