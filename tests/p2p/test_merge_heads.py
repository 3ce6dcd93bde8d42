"""``merge_heads``: folding a queued push announcement with a newer one loses nothing.

Pure (no network): any two announcements of one peer merge into one with the newer heads and
both block lists in order without repeats, or into None when that would pass the receiver's
limits; announcements of two peers, or malformed bytes, never merge. A chain of merges carries
every block of every announcement folded into it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2p.clock.cids import block_cid, cid_raw
from p2p.protocols.wire import (
    INLINE_ANNOUNCE_BYTES,
    MAX_INLINE_BLOCKS,
    HeadsAnnouncement,
    decode_heads,
    encode,
    merge_heads,
)

PEERS = ["12D3KooWA", "12D3KooWB"]


def _block(payload: bytes) -> tuple[bytes, bytes]:
    return cid_raw(block_cid(payload)), payload


# blocks drawn from a small pool so two announcements often share some; sizes reach the byte cap
_blocks = st.lists(
    st.builds(lambda i, n: _block(bytes([i]) * n), st.integers(0, 40), st.sampled_from([1, 100, 3000, 20_000])),
    max_size=MAX_INLINE_BLOCKS,
).filter(lambda bs: len({c for c, _ in bs}) == len(bs))
_ann = st.builds(
    HeadsAnnouncement,
    peer=st.sampled_from(PEERS),
    heads=st.lists(st.builds(lambda i: cid_raw(block_cid(bytes([i]))), st.integers(0, 255)), max_size=4),
    events=st.integers(0, 10_000),
    blocks=_blocks,
)


@given(_ann, _ann)
def test_two_announcements_merge_into_what_both_said_or_not_at_all(older: HeadsAnnouncement, newer: HeadsAnnouncement) -> None:
    out = merge_heads(encode(older), encode(newer))
    held = {c for c, _ in older.blocks}
    blocks = list(older.blocks) + [b for b in newer.blocks if b[0] not in held]
    fits = len(blocks) <= MAX_INLINE_BLOCKS and sum(len(d) for _, d in blocks) <= INLINE_ANNOUNCE_BYTES
    if older.peer != newer.peer or not fits:
        assert out is None
        return
    assert out is not None
    got = decode_heads(out)  # the receiver's own check passes
    assert got.peer == newer.peer and got.heads == newer.heads
    assert got.events == max(older.events, newer.events)
    assert got.blocks == blocks


@given(st.lists(_ann.filter(lambda a: a.peer == PEERS[0]), min_size=1, max_size=12))
def test_a_chain_of_merges_carries_every_block_once_in_order(anns: list[HeadsAnnouncement]) -> None:
    """What a sender's queue does: fold each new announcement into the last frame, or start a
    new frame when it does not fit. Every block offered arrives exactly once, in order."""
    frames: list[bytes] = []
    for a in anns:
        data = encode(a)
        both = merge_heads(frames[-1], data) if frames else None
        if both is None:
            frames.append(data)
        else:
            frames[-1] = both
    sent = [b for f in frames for b in decode_heads(f).blocks]
    want: list[tuple[bytes, bytes]] = []
    for a in anns:
        want += a.blocks
    # never lost, and first seen in the order offered (a block repeats only across frames:
    # each frame holds it once)
    assert set(sent) == set(want)
    assert list(dict.fromkeys(sent)) == list(dict.fromkeys(want))
    for f in frames:
        cids = [c for c, _ in decode_heads(f).blocks]
        assert len(cids) == len(set(cids)) <= MAX_INLINE_BLOCKS
    assert decode_heads(frames[-1]).heads == anns[-1].heads


def test_malformed_or_foreign_input_never_merges() -> None:
    a = encode(HeadsAnnouncement(peer=PEERS[0], heads=[], events=1))
    b = encode(HeadsAnnouncement(peer=PEERS[1], heads=[], events=2))
    assert merge_heads(a, b) is None
    assert merge_heads(a, b"\xff\x00junk") is None
    assert merge_heads(b"", a) is None
