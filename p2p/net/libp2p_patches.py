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

5. **Every yamux frame leaves whole, and the reader never waits to write**
   (``Yamux._write_frame``, and ``handle_incoming`` to know its task). Two failures of the library's direct writes, both
   seen as connections that went dead in both directions under load:

   - *The reader waited to write.* The task that reads a connection also wrote its control
     frames (the ACK of every new inbound stream, the pong of every ping, resets). When both
     peers send bulk at once, both sockets' send buffers fill; each reader waits to write,
     neither reads, and the connection hangs for good (measured: both Recv-Qs full, both
     processes idle).
   - *A cancelled write left half a frame.* A writer whose timeout fires while it waits inside
     trio's ``send_all`` (the peer is busy or paused and its socket is full) has sent part of
     the frame. The noise nonce and the swarm key's stream cipher have moved on by the whole
     frame, so from then on the peer decrypts garbage: it waits on a garbage length (pings
     unanswered, window updates never seen) until the connection fails. Any timeout around a
     stream write does it (a request's, a push's, the library's own).

   The reader now only queues its frames (bounded: past ``CONTROL_QUEUE_LIMIT`` a flood makes
   it wait, as before) and a task of the connection's nursery writes them, as go-yamux's send
   loop does; every other write flushes that queue first under the write lock, so frames keep
   their order (an ACK before the first data of its stream). Every write, once it holds the
   lock, is shielded from cancellation until the frame is out: waiting for the lock stays
   cancellable (nothing is sent yet), and a write that cannot finish in ``WRITE_STALL_S`` (the
   peer's socket stayed full; TCP_USER_TIMEOUT usually acts first) closes the connection
   instead of leaving half a frame. The price: a caller whose timeout fires while its frame is
   going out on a full socket returns when the frame is out, not at its deadline.

6. **A stream write waits for the peer's window as long as a minute** (``YamuxStream.write``,
   reimplemented with that one change, inside patch 1's lock). The library gives up after a
   fixed 5 s and resets the stream. On two cores running three busy nodes, a receiver's window
   update often takes longer to be read and applied: every big transfer (the 1.3 MB block of a
   10,000-task submit) died at the ~1 MiB the receiver had granted so far, the workers could
   not learn the workflow, and the submitter ran the tasks alone. The caller's own timeout
   (a request's, a push's) still bounds the wait; meanwhile other writers of that one stream
   queue behind it (patch 1's lock), as they did for 5 s before.

7. **The private-network protector other stacks speak** (``libp2p.network.swarm.new_protected_conn``).
   py-libp2p wraps a connection under a swarm key in Salsa20 with an 8-byte nonce; go-libp2p,
   kubo and js-libp2p's ``@libp2p/pnet`` use XSalsa20 with a 24-byte nonce (pnet v1). The same
   key file could not connect a Python node to any of them. :mod:`p2p.net.pnet` speaks pnet v1.
   Not compatible with py-libp2p's own variant: every peer of a private network must run this.

8. **A provider lookup asks the network even when this node holds a record**
   (``ProviderStore.find_providers``). The library answers from its local store whenever it
   holds *any* record for the key, and it stores every provider a lookup finds. So a node that
   provides a key itself, or has looked it up once, never asks the network again and never
   learns of a provider that came later: two peers providing one rendezvous key never found
   each other. Now the local store answers alone only when it holds ``count`` records;
   otherwise the library's own iterative lookup runs and its results follow the local ones.
   What a lookup finds is returned, not stored (stored, it would switch the lookups off again
   once ``count`` of them piled up). Each response's closer peers are capped at
   ``MAX_CLOSER_PER_RESPONSE`` and the lookup at ``MAX_LOOKUP_ROUNDS`` rounds: a hostile
   4 MiB response naming 100,000 peers cost quadratic work on the event loop. And
   ``add_provider`` keeps at most ``MAX_RECORD_ADDRS`` addresses per record (the library kept
   whatever the message held).

9. **A relay reserves for the peer on the connection** (``CircuitV2Protocol._handle_reserve``).
   The library took the peer id from the RESERVE message when it had one, so one member could
   fill every slot of a relay with made-up ids and lock the others out for an hour. The
   message's peer field is dropped; the library then uses the connection's remote peer, as
   go-libp2p does.

10. **The reservation refresher never spins** (``CircuitV2Transport._refresh_reservations_worker``,
    reimplemented). A refresh that failed inside the refresh margin slept 0 s and tried again at
    once, opening streams in a tight loop until the reservation expired (forever, against a relay
    that grants 5-second reservations). Now a failed refresh drops that reservation (the node
    reserves again, on that relay or another, on its own schedule) and the worker sleeps at least
    ``MIN_REFRESH_SLEEP_S``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import struct
from collections import Counter, deque
from typing import Any

import trio
from libp2p.host.basic_host import BasicHost
from libp2p.network.connection.exceptions import RawConnError
from libp2p.pubsub.pubsub import Pubsub
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

from p2p.net.errors import describe
from p2p.net.ratelog import peer_log

_APPLIED = False
PATCHED_VERSION = "0.8.1"
stats: Counter[str] = Counter()
"""What the patches caught, by kind (for tests and diagnostics): ``pubsub_stream_dropped``,
``gossip_message_dropped``, ``inbound_stream_reset``, ``yamux_write_failed``."""
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
    return any(cls.__name__ in _QUIET_ERRORS for cls in type(exc).__mro__) or _is_local_shutdown(exc)


def _is_local_shutdown(exc: BaseException) -> bool:
    """Handling a peer's input tried to start a task in a nursery of ours that is closing (this
    host, or the connection it came on: seen when a peer leaves while an RPC of another is being
    handled). Not the peer's fault: counted as a peer leaving, logged at debug level only."""
    if isinstance(exc, RuntimeError) and "Nursery is closed to new arrivals" in str(exc):
        peer_log.log("debug", "?", "a nursery closed while a peer's input was handled", error=str(exc))
        return True
    return False


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


WINDOW_WAIT_S = 60.0
"""How long a stream write waits for the peer to open its receive window (the library: 5 s)."""
_WINDOW_POLL_S = 0.01


async def _write_waiting_for_window(self: YamuxStream, data: bytes) -> None:
    """``YamuxStream.write`` of py-libp2p 0.8.1, waiting up to :data:`WINDOW_WAIT_S` (not 5 s)
    for a window update (patch 6). Otherwise the library's code, line for line."""
    if self.send_closed:
        raise MuxedStreamError("Stream is closed for sending")
    total_len = len(data)
    sent = 0
    while sent < total_len:
        frame: bytes | None = None
        while frame is None:
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    if self.send_window > 0:
                        to_send = min(self.send_window, MAX_MESSAGE_SIZE - HEADER_SIZE, total_len - sent)
                        chunk = data[sent:sent + to_send]
                        self.send_window -= to_send
                        header = struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, self.stream_id, len(chunk))
                        frame = header + chunk
            if frame is not None:
                break
            self._zero_window_waits += 1
            with trio.move_on_after(WINDOW_WAIT_S) as waited:
                while True:
                    async with self.window_lock:
                        if self.send_window > 0 or self.closed:
                            break
                    await trio.sleep(_WINDOW_POLL_S)
            if waited.cancelled_caught:
                raise MuxedStreamError(f"Timed out waiting for window update after {WINDOW_WAIT_S:g} seconds.")
        await self.conn._write_frame(frame)
        sent += len(frame) - HEADER_SIZE


def _patch_yamux_whole_writes() -> None:
    original = _write_waiting_for_window

    @functools.wraps(YamuxStream.write)
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
WRITE_STALL_S = 20.0
"""A write that cannot finish in this long (the peer's socket stayed full) closes the connection.
TCP_USER_TIMEOUT (p2p.net.host) normally aborts such a connection sooner."""


class _ControlFrames:
    """Frames the reader wrote, waiting for the connection's write lock (one per connection)."""

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.flushing = False
        self.drained = trio.Event()
        self.broken: str | None = None


def _control_frames(conn: Yamux) -> _ControlFrames:
    q = conn.__dict__.get(_CONTROL_ATTR)
    if q is None:
        q = _ControlFrames()
        setattr(conn, _CONTROL_ATTR, q)
    return q


async def _write_whole(conn: Yamux, q: _ControlFrames, data: bytes) -> None:
    """Write the queued control frames, then ``data``; the caller holds ``conn._write_lock``.

    Shielded: a cancel landing inside trio's ``send_all`` would leave part of a frame on the
    wire (see patch 5). Only a stall of :data:`WRITE_STALL_S` ends it, and then the connection
    is closed, since the peer may hold half a frame."""
    try:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + WRITE_STALL_S
            while q.frames:
                await conn.secured_conn.write(q.frames.popleft())
            if data:
                await conn.secured_conn.write(data)
    except BaseException as exc:
        # part of a frame may be out: close, so the reader and the swarm see it at once
        q.broken = describe(exc) if isinstance(exc, Exception) else type(exc).__name__
        await _close_quietly(conn)
        raise
    finally:
        q.drained.set()
        q.drained = trio.Event()
    if scope.cancelled_caught:
        q.broken = f"a write stalled for {WRITE_STALL_S:g} s"
        q.frames.clear()
        await _close_quietly(conn)
        raise RawConnError(f"connection closed: {q.broken}")


async def _close_quietly(conn: Yamux) -> None:
    """Close the transport under a connection that may hold half a frame (never raises)."""
    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
        await conn.secured_conn.close()


async def _flush_task(conn: Yamux, q: _ControlFrames) -> None:
    try:
        async with conn._write_lock:
            await _write_whole(conn, q, b"")
    except Exception as exc:  # noqa: BLE001 - the connection broke (_write_whole closed it)
        q.frames.clear()
        with contextlib.suppress(Exception):
            _report("yamux_write_failed", str(conn.peer_id), "yamux control frame not written; closing", "yamux", exc)
    finally:
        q.flushing = False


def _patch_yamux_frames_leave_whole() -> None:
    original_handle_incoming = Yamux.handle_incoming

    @functools.wraps(original_handle_incoming)
    async def handle_incoming(self: Yamux) -> None:
        setattr(self, _READER_ATTR, trio.lowlevel.current_task())
        await original_handle_incoming(self)

    @functools.wraps(Yamux._write_frame)
    async def _write_frame(self: Yamux, data: bytes) -> None:
        q = _control_frames(self)
        if q.broken is not None:
            raise RawConnError(f"connection closed: {q.broken}")
        nursery = self._nursery
        if self.__dict__.get(_READER_ATTR) is trio.lowlevel.current_task() and nursery is not None:
            while len(q.frames) >= CONTROL_QUEUE_LIMIT and q.broken is None:
                await q.drained.wait()  # a flood: wait, as the library always did
            if q.broken is not None:
                raise RawConnError(f"connection closed: {q.broken}")
            q.frames.append(data)
            if not q.flushing:
                q.flushing = True
                nursery.start_soon(_flush_task, self, q)
            return
        async with self._write_lock:  # waiting here is cancellable: nothing is written yet
            await _write_whole(self, q, data)
        await trio.lowlevel.checkpoint()

    Yamux.handle_incoming = handle_incoming  # type: ignore[method-assign]
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]


def queued(conn: Any) -> dict[str, Any]:
    """Control frames waiting to be written on a yamux connection, and whether a write is in
    progress (for diagnostics)."""
    q = getattr(conn, "__dict__", {}).get(_CONTROL_ATTR)
    lock = getattr(conn, "_write_lock", None)
    return {
        "control_queued": len(q.frames) if q is not None else 0,
        "writing": bool(lock is not None and lock.locked()),
        "writers_waiting": lock.statistics().tasks_waiting if lock is not None else 0,
    }


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


MAX_CLOSER_PER_RESPONSE = 20
MAX_LOOKUP_ROUNDS = 16
MAX_RECORD_ADDRS = 16


def _patch_dht_find_providers() -> None:
    from libp2p.kad_dht.common import ALPHA, QUERY_TIMEOUT
    from libp2p.kad_dht.provider_store import ProviderStore
    from libp2p.kad_dht.utils import sort_peer_ids_by_distance
    from libp2p.peer.peerinfo import PeerInfo

    original_add = ProviderStore.add_provider

    @functools.wraps(original_add)
    def add_provider(self: ProviderStore, key: bytes, provider: Any) -> None:
        addrs = getattr(provider, "addrs", None)
        if isinstance(addrs, list) and len(addrs) > MAX_RECORD_ADDRS:
            provider = PeerInfo(provider.peer_id, addrs[:MAX_RECORD_ADDRS])
        original_add(self, key, provider)

    async def find_providers(self: ProviderStore, key: bytes, count: int = 20) -> list[Any]:
        """``ProviderStore.find_providers`` of py-libp2p 0.8.1, except that local records answer
        alone only when there are ``count`` of them (patch 8)."""
        local = self.get_providers(key)
        if len(local) >= count or not self.host or not self.peer_routing:
            return local[:count]
        found: dict[str, Any] = {}
        queried: set[Any] = set()
        candidates = list(await self.peer_routing.find_closest_peers_network(key))
        seen: set[Any] = set(candidates)
        rounds = 0
        while candidates and len(found) < count and rounds < MAX_LOOKUP_ROUNDS:
            rounds += 1
            batch, candidates = candidates[:ALPHA], candidates[ALPHA:]
            results: list[list[Any]] = [[] for _ in batch]
            closer: list[list[Any]] = [[] for _ in batch]

            async def get_one(idx: int, peer_id: Any, results: list[list[Any]] = results,
                              closer: list[list[Any]] = closer) -> None:
                if peer_id == self.local_peer_id or peer_id in queried:
                    return
                queried.add(peer_id)
                try:
                    with trio.move_on_after(QUERY_TIMEOUT):
                        providers, nearer = await self._get_providers_from_peer_with_closers(peer_id, key)
                        results[idx] = list(providers or ())[:count]
                        closer[idx] = list(nearer or ())[:MAX_CLOSER_PER_RESPONSE]
                except Exception:  # noqa: BLE001 - one peer's failure is not the lookup's (the library logs it)
                    pass

            async with trio.open_nursery() as nursery:
                for idx, peer_id in enumerate(batch):
                    nursery.start_soon(get_one, idx, peer_id)
            for providers in results:
                for info in providers:
                    found.setdefault(str(info.peer_id), info)
            for nearer in closer:
                for peer in nearer:
                    if peer not in seen and peer != self.local_peer_id:
                        seen.add(peer)
                        candidates.append(peer)
            if candidates:
                candidates = sort_peer_ids_by_distance(key, candidates)
        merged: dict[str, Any] = {}
        for info in [*local, *found.values()]:
            merged.setdefault(str(info.peer_id), info)
        return list(merged.values())[:count]

    ProviderStore.find_providers = find_providers  # type: ignore[method-assign]
    ProviderStore.add_provider = add_provider  # type: ignore[method-assign]


MIN_REFRESH_SLEEP_S = 5.0


def _patch_relay() -> None:
    import time

    from libp2p.relay.circuit_v2 import transport as relay_transport
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_ID
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport

    original_reserve = CircuitV2Protocol._handle_reserve

    @functools.wraps(original_reserve)
    async def _handle_reserve(self: Any, stream: Any, msg: Any) -> None:
        if msg.HasField("peer"):
            msg.ClearField("peer")  # the reservation is for whoever is on the connection
        await original_reserve(self, stream, msg)

    async def _refresh_reservations_worker(self: Any) -> None:
        """py-libp2p 0.8.1's refresher, dropping a reservation whose refresh fails and sleeping
        at least MIN_REFRESH_SLEEP_S between passes (patch 10)."""
        margin = relay_transport.RESERVATION_REFRESH_MARGIN
        try:
            while self._reservations:
                now = time.time()
                for relay, expires in list(self._reservations.items()):
                    if expires <= now:
                        self._reservations.pop(relay, None)
                        self._reservation_proofs.pop(relay, None)
                for relay in [r for r, exp in self._reservations.items() if exp - now <= margin]:
                    ok = False
                    try:
                        stream = await self.host.new_stream(relay, [HOP_ID])
                        try:
                            ok = bool(await self._make_reservation(stream, relay))
                        finally:
                            with contextlib.suppress(Exception):
                                await stream.close()
                    except Exception:  # noqa: BLE001 - the relay left or refused: dropped below
                        ok = False
                    if not ok:
                        self._reservations.pop(relay, None)
                        self._reservation_proofs.pop(relay, None)
                now = time.time()
                next_exp = min(self._reservations.values(), default=now + relay_transport.RESERVATION_REFRESH_INTERVAL)
                await trio.sleep(max(MIN_REFRESH_SLEEP_S, next_exp - now - margin))
        finally:
            self._refreshing = False

    CircuitV2Protocol._handle_reserve = _handle_reserve  # type: ignore[method-assign]
    CircuitV2Transport._refresh_reservations_worker = _refresh_reservations_worker  # type: ignore[method-assign]


def _patch_pnet() -> None:
    import libp2p.network.swarm as swarm

    from p2p.net import pnet

    swarm.new_protected_conn = pnet.new_protected_conn  # type: ignore[attr-defined]


def apply() -> None:
    """Apply every patch once (idempotent; safe to call from every ``open_host``)."""
    global _APPLIED
    if _APPLIED:
        return
    version = importlib.metadata.version("libp2p")
    if version != PATCHED_VERSION:  # patch 6 replaces a whole method: never patch another version
        raise RuntimeError(f"p2p.net.libp2p_patches was written for py-libp2p {PATCHED_VERSION}, found {version}: "
                           "review the patches against it before changing the pin in pyproject.toml")
    _patch_yamux_whole_writes()
    _patch_pubsub_stream_handler()
    _patch_pubsub_push_msg()
    _patch_host_stream_handler()
    _patch_yamux_frames_leave_whole()
    _patch_pnet()
    _patch_dht_find_providers()
    _patch_relay()
    _APPLIED = True


def applied() -> bool:
    return _APPLIED


__all__ = ["applied", "apply", "queued", "stats"]
