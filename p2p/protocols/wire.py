"""Wire formats (CBOR on streams, JSON/CBOR on gossipsub), validated with pydantic.

Every decoder turns malformed or oversize input into ``WireError``; the node logs it and stays up.

- gossipsub ``/ipfs-accelerate/<network>/heads``: ``HeadsAnnouncement`` — a peer's heads after it
  appended events (debounced) and periodically (anti-entropy).
- gossipsub ``/ipfs-accelerate/<network>/peers``: ``p2p.peers.Heartbeat`` as JSON.
- stream ``/ipfs-accelerate/<network>/blocks/1.0.0`` (:func:`blocks_protocol`): one CBOR request
  frame, one CBOR reply frame:
  ``BlocksRequest`` → ``BlocksReply`` (blocks by CID, optionally with their ancestors), or
  ``HeadsRequest`` → ``HeadsReply`` (used right after connecting, before gossip meshes form), or
  ``DroppedRequest`` → ``DroppedReply`` (the records of compacted workflows whose events the
  peer pruned: what a joiner adopts before it folds the events above their stubs).

A ``BlocksReply`` carries ``pruned``, the stubs of asked-for events the peer pruned
(``p2p.clock.stub``), only when there are some: a peer of an older version, which forbids the
field, still reads every reply from a peer that pruned nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import cbor2
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


def blocks_protocol(network: str) -> str:
    """The blocks stream protocol of one network. The network name is in the id, as it is in the
    gossip topics: peers that share a key but not a name cannot read each other's clocks, and
    a node of another network is refused at protocol negotiation, before any block moves."""
    return f"/ipfs-accelerate/{network}/blocks/1.0.0"

MAX_CID_BYTES = 128
# Gossip stays small by policy: a heads announcement inlines at most this many bytes of blocks;
# anything larger travels on the blocks stream (blocks_protocol). Small gossip RPCs keep the
# per-peer pubsub stream responsive (big ones hold it for several yamux frames) and bound what
# a relay buffers per subscriber.
INLINE_ANNOUNCE_BYTES = 64 * 1024
MAX_INLINE_BLOCKS = 64


class WireError(ValueError):
    """A peer sent something malformed or too large."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Cid = Annotated[bytes, Field(min_length=2, max_length=MAX_CID_BYTES)]


class HeadsAnnouncement(_Msg):
    t: Literal["heads"] = "heads"
    peer: str = Field(min_length=1, max_length=128)
    heads: list[Cid] = Field(max_length=1024)
    events: int = Field(ge=0)
    # The newest events themselves when small, so receivers skip a fetch round trip; they are
    # verified exactly like fetched blocks.
    blocks: list[tuple[Cid, bytes]] = Field(default_factory=list, max_length=MAX_INLINE_BLOCKS)


class BlocksRequest(_Msg):
    t: Literal["want"] = "want"
    cids: list[Cid] = Field(min_length=1, max_length=4096)
    # 0: just these blocks; n: also up to n blocks of their ancestors (catch-up in one round trip)
    ancestors: int = Field(0, ge=0, le=100_000)


class HeadsRequest(_Msg):
    t: Literal["heads?"] = "heads?"


class BlocksReply(_Msg):
    t: Literal["blocks"] = "blocks"
    blocks: list[tuple[Cid, bytes]] = Field(max_length=100_000)
    # stubs of asked-for (or walked-to) events this peer pruned, encoded (p2p.clock.stub)
    pruned: list[bytes] = Field(default_factory=list, max_length=100_000)


class DroppedRequest(_Msg):
    t: Literal["dropped?"] = "dropped?"
    workflows: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(min_length=1, max_length=1024)


class DroppedReply(_Msg):
    t: Literal["dropped!"] = "dropped!"
    # p2p.scheduler.dropped.Dropped records, encoded, of those asked for that this peer dropped
    records: list[bytes] = Field(max_length=1024)


class HeadsReply(_Msg):
    t: Literal["heads!"] = "heads!"
    heads: list[Cid] = Field(max_length=1024)
    events: int = Field(ge=0)


Request = Annotated[Union[BlocksRequest, HeadsRequest, DroppedRequest], Field(discriminator="t")]
Reply = Annotated[Union[BlocksReply, HeadsReply, DroppedReply], Field(discriminator="t")]
_REQUEST: TypeAdapter[Any] = TypeAdapter(Request)
_REPLY: TypeAdapter[Any] = TypeAdapter(Reply)
_HEADS: TypeAdapter[HeadsAnnouncement] = TypeAdapter(HeadsAnnouncement)


def encode(msg: _Msg) -> bytes:
    data = msg.model_dump()
    if isinstance(msg, BlocksReply) and not msg.pruned:
        del data["pruned"]  # an older peer forbids the field: send it only when it says something
    return cbor2.dumps(data)


def _decode(adapter: TypeAdapter[Any], data: bytes, what: str) -> Any:
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise WireError(f"malformed {what}: not CBOR ({type(exc).__name__})") from None
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise WireError(f"malformed {what}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def decode_request(data: bytes) -> BlocksRequest | HeadsRequest | DroppedRequest:
    return _decode(_REQUEST, data, "request")


def decode_reply(data: bytes) -> BlocksReply | HeadsReply | DroppedReply:
    return _decode(_REPLY, data, "reply")


def decode_heads(data: bytes) -> HeadsAnnouncement:
    return _decode(_HEADS, data, "heads announcement")


def merge_heads(older: bytes, newer: bytes) -> bytes | None:
    """One announcement saying what ``older`` then ``newer`` said, or None when it would not fit.

    Why: a sender whose stream is busy would otherwise queue (and, when full, drop) one frame per
    append; an announcement is a peer's *current* heads plus the newest blocks, so two of them
    from one peer fold into one without losing anything: ``newer``'s heads supersede ``older``'s
    (heads only grow along the clock) and the inline blocks are both lists in order, without
    repeats. None when the peers differ, either is malformed, or the blocks would pass
    ``MAX_INLINE_BLOCKS`` (the receiver refuses more) or ``INLINE_ANNOUNCE_BYTES`` (the
    senders' own inline policy): the caller then sends them apart."""
    try:
        a, b = decode_heads(older), decode_heads(newer)
    except WireError:
        return None
    if a.peer != b.peer:
        return None
    held = {cid for cid, _ in a.blocks}
    blocks = list(a.blocks) + [blk for blk in b.blocks if blk[0] not in held]
    if len(blocks) > MAX_INLINE_BLOCKS or sum(len(d) for _, d in blocks) > INLINE_ANNOUNCE_BYTES:
        return None
    return encode(HeadsAnnouncement(peer=b.peer, heads=b.heads, events=max(a.events, b.events), blocks=blocks))


def topic(network: str, name: str) -> str:
    return f"/ipfs-accelerate/{network}/{name}"
