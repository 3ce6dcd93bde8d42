"""Small, documented fixes to py-libp2p 0.8.1, applied once at import by :func:`apply`.

Each patch wraps one library function, keeps its behaviour for well-formed input and is small
enough to go upstream as is. ``open_host`` calls :func:`apply` before it builds a host.

1. **Whole writes on a yamux stream** (``YamuxStream.write``). The library splits a write into
   64 KiB frames and takes the stream's write lock *per frame*, so two tasks writing to one
   stream at once interleave their frames. Gossipsub does exactly that: every forwarded message
   (``push_msg`` runs as its own task), every control message of the heartbeat and every
   publish calls ``Pubsub.write_msg`` on the one outbound stream of a peer. A small RPC written
   while a >64 KiB RPC waits for its next frame lands *inside* the big one; the receiver reads
   the big RPC's announced length, which now holds the small RPC and misses the big one's last
   bytes, and everything after is out of step. That is the "inner message ends 216 bytes
   before the frame does" corruption of issue 7 (216 bytes: one heartbeat/IHAVE RPC), and the
   next varint read from the middle of a message is what crashed honest nodes. The patch holds
   a per-stream lock for the whole ``write`` call, so one write leaves as one contiguous run.

2. **A bad pubsub RPC ends that stream, not the node** (``Pubsub.stream_handler``). The
   library catches only stream/varint errors; ``google.protobuf.message.DecodeError`` (41
   bytes of junk after a length prefix do it) and any error of the router's RPC handling
   escaped through the swarm's nursery and ended the process. Now any ``Exception`` resets the
   stream and forgets the peer's pubsub state, exactly what the library already does for the
   errors it knew, and is logged once per peer per minute.

3. **A bad forwarded message is dropped** (``Pubsub.push_msg``). It runs as a task of the
   pubsub service, whose failure cancels the service (and the host). Messages from a remote
   forwarder that raise (an origin id or key that does not parse, ...) are dropped and logged
   once per peer per minute; our own publishes still raise to the caller.

4. **Every inbound stream is isolated** (``BasicHost._swarm_stream_handler``). Protocol
   negotiation and whatever handler serves the stream (identify, identify-push, ping, ours,
   any added later) run in the connection's nursery, so one unexpected exception from either
   ended the connection and climbed into the host. The patch resets that stream and logs the
   peer once per minute. ``trio.Cancelled`` and ``KeyboardInterrupt``/``SystemExit`` pass;
   ``MemoryError`` passes too (local and unrecoverable: the process must end).

5. **The yamux reader never waits to write** (``Yamux.handle_incoming``/``_write_frame``).
   The task that reads a connection also wrote its control frames itself: the ACK of every new
   inbound stream, the pong of every ping, resets. When both peers send bulk at once, both
   sockets' send buffers fill; each reader then waits to write, neither reads, and the
   connection hangs for good (measured: both Recv-Qs full, both processes idle; pings
   unanswered, peers judged silent, the link finally dropped). go-yamux avoids it by queueing
   control frames for its send loop. The patch does the same: frames the reader writes go into
   a per-connection queue that a task of the connection's nursery flushes, and every other
   write flushes the queue first under the write lock, so frames still leave in the order they
   were written (an ACK before the first data of its stream). The queue is bounded (a peer
   flooding SYNs or pings makes the reader wait again, as before, rather than grow memory).
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter, deque
from typing import Any

import trio
from libp2p.host.basic_host import BasicHost
from libp2p.pubsub.pubsub import Pubsub
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from p2p.net.errors import describe
from p2p.net.ratelog import peer_log

_APPLIED = False
stats: Counter[str] = Counter()
"""What the patches caught, by kind (for tests and diagnostics): ``pubsub_stream_dropped``,
``gossip_message_dropped``, ``inbound_stream_reset``, ``yamux_control_write_failed``."""
_WRITE_LOCK_ATTR = "_p2p_whole_write_lock"

# The library's own "the peer went away" errors: not worth a warning.
_QUIET_ERRORS = ("StreamEOF", "StreamReset", "StreamClosed", "StreamError", "MuxedStreamEOF",
                 "MuxedStreamReset", "IncompleteReadError", "RawConnError", "IOException",
                 "ConnectionClosedError", "MuxedStreamError")


def _peer_of(stream: Any) -> str:
    try:
        return str(stream.muxed_conn.peer_id)
    except Exception:  # noqa: BLE001 - a half-built stream
        return "?"


def _is_quiet(exc: BaseException) -> bool:
    return any(cls.__name__ in _QUIET_ERRORS for cls in type(exc).__mro__)


async def _reset_quietly(stream: Any) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.reset()
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass


def _report(kind: str, peer: str, what: str, protocol: str, exc: BaseException) -> None:
    """Count and log (once per peer per minute) a failure, unless it is just a peer leaving."""
    if _is_quiet(exc):
        return
    stats[kind] += 1
    peer_log.warning(peer, what, protocol=protocol, error=describe(exc))


def _patch_yamux_whole_writes() -> None:
    original = YamuxStream.write

    @functools.wraps(original)
    async def write(self: YamuxStream, data: bytes) -> None:
        lock = self.__dict__.get(_WRITE_LOCK_ATTR)
        if lock is None:
            lock = trio.Lock()
            setattr(self, _WRITE_LOCK_ATTR, lock)
        async with lock:
            await original(self, data)

    write.__p2p_patched__ = True  # type: ignore[attr-defined]
    YamuxStream.write = write  # type: ignore[method-assign]


_READER_ATTR = "_p2p_reader_task"
_CONTROL_ATTR = "_p2p_control_frames"
CONTROL_QUEUE_LIMIT = 4096
"""Control frames the reader may queue before it waits to write (12 to 12+n bytes each)."""


class _ControlFrames:
    """Frames the reader wrote, waiting for the connection's write lock (one per connection)."""

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.flushing = False
        self.drained = trio.Event()


def _control_frames(conn: Yamux) -> _ControlFrames:
    q = conn.__dict__.get(_CONTROL_ATTR)
    if q is None:
        q = _ControlFrames()
        setattr(conn, _CONTROL_ATTR, q)
    return q


async def _flush_locked(conn: Yamux, q: _ControlFrames) -> None:
    """Write every queued control frame; the caller holds ``conn._write_lock``."""
    while q.frames:
        await conn.secured_conn.write(q.frames.popleft())
    q.drained.set()
    q.drained = trio.Event()


async def _flush_task(conn: Yamux, q: _ControlFrames) -> None:
    try:
        async with conn._write_lock:
            await _flush_locked(conn, q)
    except Exception as exc:  # noqa: BLE001 - the connection broke: let the reader see it
        q.frames.clear()
        q.drained.set()
        _report("yamux_control_write_failed", str(conn.peer_id), "yamux control frame not written; closing", "yamux", exc)
        with contextlib.suppress(Exception):
            await conn.secured_conn.close()
    finally:
        q.flushing = False


def _patch_yamux_reader_never_waits_to_write() -> None:
    original_write_frame = Yamux._write_frame
    original_handle_incoming = Yamux.handle_incoming

    @functools.wraps(original_handle_incoming)
    async def handle_incoming(self: Yamux) -> None:
        setattr(self, _READER_ATTR, trio.lowlevel.current_task())
        await original_handle_incoming(self)

    @functools.wraps(original_write_frame)
    async def _write_frame(self: Yamux, data: bytes) -> None:
        q = _control_frames(self)
        nursery = self._nursery
        if self.__dict__.get(_READER_ATTR) is trio.lowlevel.current_task() and nursery is not None:
            while len(q.frames) >= CONTROL_QUEUE_LIMIT:
                await q.drained.wait()  # a flood: wait, as the library always did
            q.frames.append(data)
            if not q.flushing:
                q.flushing = True
                nursery.start_soon(_flush_task, self, q)
            return
        if not q.frames:
            await original_write_frame(self, data)
            return
        async with self._write_lock:
            await _flush_locked(self, q)
            await self.secured_conn.write(data)
        await trio.lowlevel.checkpoint()

    Yamux.handle_incoming = handle_incoming  # type: ignore[method-assign]
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]


def _patch_pubsub_stream_handler() -> None:
    async def stream_handler(self: Pubsub, stream: Any) -> None:
        peer_id = stream.muxed_conn.peer_id
        try:
            await self.continuously_read_stream(stream)
        except Exception as exc:  # noqa: BLE001 - remote input must not end the node
            _report("pubsub_stream_dropped", str(peer_id), "pubsub stream dropped: peer sent a bad RPC", "pubsub", exc)
            await _reset_quietly(stream)
            self._handle_dead_peer(peer_id)

    stream_handler.__doc__ = Pubsub.stream_handler.__doc__
    Pubsub.stream_handler = stream_handler  # type: ignore[method-assign]


def _patch_pubsub_push_msg() -> None:
    original = Pubsub.push_msg

    @functools.wraps(original)
    async def push_msg(self: Pubsub, msg_forwarder: Any, msg: Any) -> None:
        if msg_forwarder == self.host.get_id():
            await original(self, msg_forwarder, msg)
            return
        try:
            await original(self, msg_forwarder, msg)
        except Exception as exc:  # noqa: BLE001 - a remote message must not end the pubsub service
            _report("gossip_message_dropped", str(msg_forwarder), "gossip message dropped: it failed to process", "pubsub", exc)

    Pubsub.push_msg = push_msg  # type: ignore[method-assign]


def _patch_host_stream_handler() -> None:
    original = BasicHost._swarm_stream_handler

    @functools.wraps(original)
    async def _swarm_stream_handler(self: BasicHost, net_stream: Any) -> None:
        try:
            await original(self, net_stream)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this stream
            protocol = str(getattr(net_stream, "protocol_id", None) or "negotiation")
            _report("inbound_stream_reset", _peer_of(net_stream), "inbound stream failed; reset", protocol, exc)
            await _reset_quietly(net_stream)

    BasicHost._swarm_stream_handler = _swarm_stream_handler  # type: ignore[method-assign]


def apply() -> None:
    """Apply every patch once (idempotent; safe to call from every ``open_host``)."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_yamux_whole_writes()
    _patch_pubsub_stream_handler()
    _patch_pubsub_push_msg()
    _patch_host_stream_handler()
    _patch_yamux_reader_never_waits_to_write()
    _APPLIED = True


def applied() -> bool:
    return _APPLIED


__all__ = ["applied", "apply", "stats"]
