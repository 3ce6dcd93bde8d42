"""The Merkle clock: a replicated, signed, content-addressed DAG of events (Merkle-CRDT).

Modules, one concept each: ``cids`` (fast CIDs), ``codec`` (DAG-CBOR encode/decode and why
cbor2), ``event`` (the signed event, create/verify), ``store`` (SQLite), ``writer`` (the writer thread: batched commits off the event loop,
read-your-writes overlay), ``pending`` (orphans
waiting for parents), ``clock`` (MerkleClock: append, merge, heads).
"""

from p2p.clock.cids import block_cid
from p2p.clock.clock import MergeResult, MerkleClock
from p2p.clock.codec import CodecError
from p2p.clock.event import Event, InvalidBlockError, create_event, decode_event
from p2p.clock.writer import ClockWriterError

__all__ = [
    "ClockWriterError",
    "CodecError",
    "Event",
    "InvalidBlockError",
    "MergeResult",
    "MerkleClock",
    "block_cid",
    "create_event",
    "decode_event",
]
