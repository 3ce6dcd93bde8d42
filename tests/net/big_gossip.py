"""Big gossip messages between real hosts, each checked end to end (shared by the test and by
``python tests/net/big_gossip.py``, which measures with and without the yamux write patch).

Three hosts on loopback in a line, A - B - C, all subscribed to one topic; A and C publish
messages of 100-900 KiB. B relays both ways, so on each of its outbound pubsub streams several
``push_msg`` tasks write at once, next to gossipsub's heartbeat RPCs: the situation in which
py-libp2p 0.8.1 interleaved yamux frames of different RPCs (see ``p2p.net.libp2p_patches``).
Every message carries its index and a SHA-256 of its body, so a receiver classifies each as
intact or corrupted, and counts the ones that never arrive.
"""

from __future__ import annotations

import hashlib
import random
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2p.config import NetworkConfig  # noqa: E402
from p2p.net import NetHost, open_host  # noqa: E402

TOPIC = "/ipfs-accelerate/test/big-gossip"
HEADER = struct.Struct(">I32s")  # sender-local index, sha256(body)
MIN_BYTES = 100 * 1024
MAX_BYTES = 900 * 1024


def make_message(index: int, rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randint(MIN_BYTES, MAX_BYTES) - HEADER.size)
    return HEADER.pack(index, hashlib.sha256(body).digest()) + body


def check_message(data: bytes) -> int | None:
    """The message's index when intact, else None."""
    if len(data) < HEADER.size:
        return None
    index, digest = HEADER.unpack_from(data)
    return index if hashlib.sha256(data[HEADER.size :]).digest() == digest else None


@dataclass
class Tally:
    intact: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # receiver -> {(origin, i)}
    corrupted: int = 0
    joiner_intact: int = 0
    joins: int = 0
    bad_rpcs: int = 0  # pubsub streams dropped because an RPC did not parse (patch 2 caught it)

    def total_intact(self) -> int:
        return sum(len(v) for v in self.intact.values())


async def _wait_mesh(hosts: list[NetHost], links: list[tuple[int, int]], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not all(
            hosts[j].peer_id in hosts[i].mesh_peers(TOPIC) and hosts[i].peer_id in hosts[j].mesh_peers(TOPIC)
            for i, j in links
        ):
            await trio.sleep(0.05)


async def run_big_gossip(
    per_publisher: int, seed: int = 7, interval_s: float = 0.05, settle_timeout_s: float = 120.0
) -> tuple[Tally, int]:
    """Publish ``per_publisher`` big messages from each end of A - B - C while a joiner D
    connects to B, takes a few messages and leaves, over and over (each join makes B replay its
    recent messages to D directly, next to its normal sending loop). Return (tally, deliveries
    expected at A, B and C); returns once all arrived intact, or after ``settle_timeout_s``."""
    from p2p.net import libp2p_patches

    config = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False)
    rng = random.Random(seed)
    tally = Tally()
    dropped_before = libp2p_patches.stats["pubsub_stream_dropped"]
    async with (
        open_host(create_new_key_pair(), config) as a,
        open_host(create_new_key_pair(), config) as b,
        open_host(create_new_key_pair(), config) as c,
        open_host(create_new_key_pair(), config) as d,
    ):
        hosts = [a, b, c]
        await a.connect(b.listen_addrs()[0])
        await c.connect(b.listen_addrs()[0])
        publishers = [a, c]
        expected_total = sum(
            1 for h in hosts for p in publishers if p is not h for _ in range(per_publisher)
        )
        done = trio.Event()
        publishing = trio.Event()

        def classify(host: NetHost, origin: str, data: bytes) -> None:
            index = check_message(data)
            if index is None:
                tally.corrupted += 1
            elif host is d:
                tally.joiner_intact += 1
            else:
                tally.intact.setdefault(host.peer_id, set()).add((origin, index))
                if tally.total_intact() >= expected_total:
                    done.set()

        async def receive(host: NetHost, messages: trio.MemoryReceiveChannel, started: trio.Event) -> None:
            started.set()
            async for origin, data in messages:
                classify(host, origin, data)

        async def publish(host: NetHost) -> None:
            await publishing.wait()
            for i in range(per_publisher):
                await host.publish(TOPIC, make_message(i, rng))
                await trio.sleep(interval_s)  # pacing, as the node's Debouncer does

        async def churn() -> None:
            await publishing.wait()
            while not done.is_set():
                await d.connect(b.listen_addrs()[0])
                tally.joins += 1
                with trio.move_on_after(10):  # until B knows D subscribes (replay happens then)
                    while d.peer_id not in b.topic_peers(TOPIC):
                        await trio.sleep(0.02)
                with trio.move_on_after(0.5 + rng.random()):
                    await done.wait()
                await d.disconnect(b.peer_id)
                with trio.move_on_after(10):
                    await d.wait_disconnected(b.peer_id) if hasattr(d, "wait_disconnected") else None

        async with trio.open_nursery() as nursery:
            async with a.subscribe(TOPIC) as ma, b.subscribe(TOPIC) as mb, c.subscribe(TOPIC) as mc, \
                    d.subscribe(TOPIC) as md:
                for host, messages in ((a, ma), (b, mb), (c, mc), (d, md)):
                    started = trio.Event()
                    nursery.start_soon(receive, host, messages, started)
                    await started.wait()
                await _wait_mesh(hosts, [(0, 1), (1, 2)], timeout=60)
                nursery.start_soon(churn)
                async with trio.open_nursery() as pubs:
                    pubs.start_soon(publish, a)
                    pubs.start_soon(publish, c)
                    publishing.set()
                with trio.move_on_after(settle_timeout_s):
                    await done.wait()
                done.set()
                nursery.cancel_scope.cancel()
    tally.bad_rpcs = libp2p_patches.stats["pubsub_stream_dropped"] - dropped_before
    return tally, expected_total


def main() -> None:
    import argparse
    import logging

    import structlog

    p = argparse.ArgumentParser(description="measure big-gossip corruption")
    p.add_argument("--per-publisher", type=int, default=60)
    p.add_argument("--without-yamux-patch", action="store_true",
                   help="leave py-libp2p's frame-interleaving YamuxStream.write in place")
    p.add_argument("--settle-timeout-s", type=float, default=60.0)
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    if args.without_yamux_patch:
        from p2p.net import libp2p_patches

        libp2p_patches._patch_yamux_whole_writes = lambda: None  # type: ignore[assignment]
    tally, expected = trio.run(run_big_gossip, args.per_publisher, 7, 0.05, args.settle_timeout_s)
    intact = tally.total_intact()
    print(
        f"expected={expected} intact={intact} corrupted={tally.corrupted} missing={expected - intact} "
        f"joins={tally.joins} joiner_intact={tally.joiner_intact} bad_rpcs={tally.bad_rpcs}"
    )


if __name__ == "__main__":
    main()
