"""Big gossip messages (100-900 KiB) arrive intact between real hosts, with peers joining mid-stream.

Before ``p2p.net.libp2p_patches`` made yamux writes whole, this exact run (60 publishes, a
joiner cycling in and out) gave the joiner only corrupted RPCs: 11 pubsub streams dropped on
``DecodeError`` and 0 intact messages at the joiner (each of those errors used to end the node).
"""

from __future__ import annotations

from big_gossip import run_big_gossip


async def test_big_gossip_arrives_intact_while_peers_join() -> None:
    tally, expected = await run_big_gossip(per_publisher=30, settle_timeout_s=150)
    assert tally.corrupted == 0
    assert tally.bad_rpcs == 0, "an RPC arrived malformed: frames of two writes interleaved"
    assert tally.total_intact() == expected
    assert tally.joins >= 1 and tally.joiner_intact > 0
