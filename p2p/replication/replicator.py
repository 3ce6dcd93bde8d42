"""Replicator: keep this peer's clock in step with its peers'.

- **Announce**: after this peer appends events, its heads go out through the ``Broadcaster``,
  debounced (gossipsub drops bursts), with the newest events inline while they are small; again
  every ``reannounce_s`` (anti-entropy). Heartbeats carry the heads too (``want``). With a
  ``direct`` broadcaster (:mod:`p2p.replication.push`), each local append is also pushed at
  once, without the debounce, to every connected peer: a claim or a result reaches the
  submitter in one stream write, not a gossip round. Gossip stays the mesh (peers we are not
  connected to) and, with the re-announcements (sent on both), the anti-entropy.
- **Hear** announcements from both, through one path (the same decoding and verification);
  inline blocks already held, or being merged from the other path's copy, are skipped.
- **Fetch**: heads a peer announced that we lack are fetched from that peer through the
  ``DAGService``; when their parents are missing too, the next request asks for ancestors in bulk,
  and the walk goes on round trip after round trip until nothing is missing. Progress is counted
  in events applied *or* orphans held, because a deep walk brings children before parents: the
  first replies apply nothing and still move the walk forward.
- **Verify off the loop**: blocks are verified and stored by the clock (in a worker thread when
  the clock offers ``add_blocks_async``), and folded into the scheduler in chunks, so a catch-up
  of tens of thousands of events never holds the event loop long enough to delay a heartbeat.
- **Caught up before claiming**: when a peer connects, or after this process was paused, the
  replicator asks connected peers for their heads, and :meth:`caught_up` stays False until those
  heads are applied here (or the sync with that peer ends). The scheduler claims nothing while it
  is False: a joiner or a resumed laptop never claims on half a history.
- **Pruned history** (docs/compaction.md §5–§6): a peer that pruned events answers with their
  stubs (and walks on below them). A stub is adopted once ``checkpoint_quorum`` connected
  peers (or all of them, when fewer) give the same bytes — a peer that still holds an event's
  block gives the block instead, which verifies itself — and only after the compacted
  workflows it is about are adopted (``p2p.compaction.joining``). Then it goes the way of an
  event: an orphan until its parents are here, then applied, releasing the events above it.
- **Result blocks** (results too large to inline) are fetched from the peer that announced them,
  retried from any peer, and given up after ``missing_result_giveup_s``; at most
  ``max_missing_results`` are waited for at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from p2p.clock.cids import cid_from_bytes, cid_raw
from p2p.clock.stub import Stub, StubError, decode_stub
from p2p.config import NetworkConfig
from p2p.net.errors import ProtocolRefused
from p2p.net.pacing import Debouncer
from p2p.net.ratelog import PeerLogLimiter
from p2p.protocols.wire import INLINE_ANNOUNCE_BYTES, HeadsAnnouncement, WireError, decode_heads, encode
from p2p.replication.broadcaster import Broadcaster
from p2p.replication.dagservice import CATCH_UP_BLOCKS, DAGService

log = structlog.get_logger("p2p.replication")
peer_log = PeerLogLimiter(log)  # bad input: once per peer per minute, with a count

MAX_HEADS = 1024  # the wire's cap; more concurrent heads than that collapse at our next append
GATE_TIMEOUT_S = 60.0  # longest claims wait for one peer's catch-up
STARTUP = ""  # the gate of a node that has just started and heard of no peer yet
RESUME = "\x00resume"  # the gate of a node that has just noticed a pause of its own


@dataclass
class _Gate:
    heads: set[bytes] | None  # None: the peer's heads are not known yet
    since: float
    hear_by: float  # its heartbeat is awaited until then (our liveness view must include it)


@dataclass
class _Missing:
    first_seen: float
    peers: set[str] = field(default_factory=set)


class Replicator:
    """Replicates the Merkle clock over a Broadcaster and a DAGService (see the module doc)."""

    def __init__(
        self,
        clock: Any,
        broadcaster: Broadcaster,
        dag: DAGService,
        *,
        peer_id: str,
        config: NetworkConfig,
        ingest: Callable[[list[Any]], None],
        local_event: Any,
        take_unannounced: Callable[[], list[Any]],
        on_results: Callable[[], None] = lambda: None,
        on_ready: Callable[[], None] = lambda: None,
        on_heard: Callable[[str], None] = lambda peer: None,
        connected_peers: Callable[[], list[str]] = list,
        known_peer: Callable[[str], bool] = lambda peer: True,
        live_peers: Callable[[], Iterable[str]] = tuple,
        startup_wait_s: float = 0.0,
        now: Callable[[], float] = time.monotonic,
        direct: Any = None,
        gossip: bool = True,
        adopter: Any = None,
        checkpoint_quorum: int = 2,
    ) -> None:
        self.clock = clock
        self.broadcaster = broadcaster
        self.dag = dag
        self.peer_id = peer_id
        self.config = config
        self._ingest = ingest
        self._local_event = local_event
        self._take_unannounced = take_unannounced
        self._on_results = on_results
        self._on_ready = on_ready
        self._on_heard = on_heard
        self._connected = connected_peers
        self._known = known_peer
        self._live_peers = live_peers
        self._startup_wait_s = startup_wait_s
        self._hear_wait_s = 2 * config.heartbeat_s + 0.5
        self._now = now
        self._syncing: dict[str, set[bytes]] = {}  # peer -> heads it announced that we lack
        self._gates: dict[str, _Gate] = {}  # peer -> heads to reach before claiming
        self._ready = True  # cached: the policy asks once per task, so it must cost nothing
        self._fetching: set[str] = set()  # peers a result fetch is running for
        self._missing_results: dict[bytes, _Missing] = {}
        self._results_full_logged = False
        self._nursery: trio.Nursery | None = None
        self.synced_events = 0  # events applied from peers (metrics, tests)
        # direct push (p2p.replication.push.PushBroadcaster) or None; ``gossip`` False: heads go
        # only by push (and the connect-time heads request); tests prove push delivers with it
        self.direct = direct
        self._gossip = gossip
        # p2p.compaction.joining.DroppedAdopter, or None: stubs are then never adopted
        self.adopter = adopter
        self.checkpoint_quorum = checkpoint_quorum
        self.stubs_adopted = 0
        self.stubs_refused = 0
        self._pending_gossip: list[Any] = []  # local events not yet inline in a gossip announcement
        self._pending_push: list[Any] = []  # ... nor in a pushed one
        self._merging: set[bytes] = set()  # inline blocks being merged now (the other path's copy waits)
        # heads a peer announced while another copy of them was being merged: wanted from that
        # peer if the merge did not store them (a forged copy must not hide the honest one)
        self._deferred: dict[bytes, set[str]] = {}
        self.heard = {"gossip": 0, "push": 0}  # announcements heard per path
        self.gossip_announcements = 0
        self.push_announcements = 0

    # ------------------------------------------------------------------ life

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        announcer: Debouncer[int] = Debouncer(
            self._announce, delay_s=self.config.announce_debounce_ms / 1000, min_interval_s=self.gossip_interval_s,
            name="heads",
        )
        if self._startup_wait_s > 0:
            # a node that just started knows nobody yet: were it to claim now, it would rank only
            # itself and take every queued task. It waits for its first peer (whose gate then
            # takes over) or for startup_wait_s with nobody around.
            now = self._now()
            self._gate(STARTUP, _Gate(set(), now, now + self._startup_wait_s))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_gates)
            await nursery.start(announcer.run)
            nursery.start_soon(self._on_local_events, announcer)
            nursery.start_soon(self._reannounce, announcer)
            nursery.start_soon(self._hear, self.broadcaster, "gossip")
            if self.direct is not None:
                nursery.start_soon(self._hear, self.direct, "push")
                nursery.start_soon(self._push_local_events)
            nursery.start_soon(self._retry_results)
            task_status.started()

    def gossip_interval_s(self) -> float:
        """Spacing of gossip announcements of local events. While direct push reaches every
        live peer, gossip is only the anti-entropy (every receiver decodes, and gossipsub
        forwards, each copy): ``push_gossip_interval_ms``. While some live peer has no open
        push stream (reached only through the mesh, or it refused push), gossip is its first
        path: 12 ms, as with push off."""
        reaches = getattr(self.direct, "reaches", None)
        if self.direct is None or (reaches is not None and not reaches(p for p in self._live_peers() if p != self.peer_id)):
            return 0.012
        return self.config.push_gossip_interval_ms / 1000

    def caught_up(self) -> bool:
        """False while a catch-up that must finish before this peer claims is under way. O(1):
        the answer is recomputed by ``refresh_ready`` (after merges, gate changes, and every
        0.1 s), not per call."""
        return self._ready

    def refresh_ready(self) -> bool:
        """Re-evaluate the gates; returns (and caches) whether claims may go ahead."""
        if not self._gates:
            self._ready = True
            return True
        now = self._now()
        for peer, gate in list(self._gates.items()):
            if gate.heads is not None:
                gate.heads = {h for h in gate.heads if not self._has(h)}
            heard = peer != STARTUP and self._known(peer)
            if gate.heads == set() and (heard or now > gate.hear_by):
                del self._gates[peer]
            elif now - gate.since > GATE_TIMEOUT_S:
                log.warning("catch-up with a peer did not finish in time; claiming again", peer=peer,
                            missing_heads=len(gate.heads or ()))
                del self._gates[peer]
        self._ready = not self._gates
        return self._ready

    def _gate(self, key: str, gate: _Gate) -> None:
        self._gates[key] = gate
        self._ready = False

    async def _watch_gates(self) -> None:
        """Tell the scheduler the moment claims may resume (gates also end with time)."""
        while True:
            await trio.sleep(0.1)
            if self._gates and self.refresh_ready():
                self._on_ready()

    def peer_connected(self, peer: str) -> None:
        """A new connection: ask the peer for its heads (gossip meshes take a heartbeat to form)
        and hold claims until we hold them too."""
        if self.direct is not None and hasattr(self.direct, "warm"):
            self.direct.warm(peer)  # the push stream is ready before the next append
        if self._nursery is not None:
            now = self._now()
            if peer not in self._gates:
                self._gate(peer, _Gate(None, now, now + self._hear_wait_s))  # claims wait from now on
            self._nursery.start_soon(self._gate_on, peer)

    def resumed(self) -> None:
        """This process was paused: what it knows may be stale, so catch up with every connected
        peer before claiming again — and, since peers that saw us silent may have closed our
        connections, wait at least for a round of heartbeats (and the redials they bring)."""
        now = self._now()
        self._gate(RESUME, _Gate(set(), now, now + self._hear_wait_s))
        for peer in self._connected():
            self.peer_connected(peer)

    async def _gate_on(self, peer: str) -> None:
        now = self._now()
        gate = self._gates.get(peer)
        if gate is None:
            gate = _Gate(None, now, now + self._hear_wait_s)
            self._gate(peer, gate)
        heads: list[bytes] = []
        try:
            with trio.fail_after(self._hear_wait_s):  # a peer that won't say its heads gets no veto
                heads = await self.dag.get_heads(peer)
        except ProtocolRefused as exc:
            # not a peer of this network (the blocks protocol id carries the name), or an older
            # version: nothing of ours to wait for, and no startup wait ends on its account
            log.debug("peer does not speak this network's blocks protocol", peer=peer, error=str(exc))
            self._gates.pop(peer, None)
            if self.refresh_ready():
                self._on_ready()
            return
        except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - unreachable or broken peer
            log.debug("heads request failed", peer=peer, error=str(exc))
            gate.heads = set()
            self._release_gate(peer)
            return
        self._gates.pop(STARTUP, None)  # a first peer of this network: its own gate takes over
        missing = {h for h in heads[:MAX_HEADS] if not self._has(h)}
        gate.heads = (gate.heads or set()) | missing
        if missing:
            self.want(peer, list(missing))
        elif self.refresh_ready():
            self._on_ready()

    def _release_gate(self, peer: str) -> None:
        """The sync with ``peer`` ended (reached, failed, or stopped making progress): claims no
        longer wait for its heads; its heartbeat may still be awaited (``caught_up``)."""
        gate = self._gates.get(peer)
        if gate is not None and gate.heads is not None:  # heads not asked yet: _gate_on decides
            gate.heads = set()
            if self.refresh_ready():
                self._on_ready()

    # ------------------------------------------------------------- announcing

    async def _on_local_events(self, announcer: Debouncer[int]) -> None:
        while True:
            await self._local_event.wait()
            announcer.submit(1)

    async def _reannounce(self, announcer: Debouncer[int]) -> None:
        while True:
            await trio.sleep(self.config.reannounce_s)
            announcer.submit(0)

    def heads_raw(self) -> list[bytes]:
        return [cid_raw(c) for c in self.clock.heads()[:MAX_HEADS]]

    def _drain(self) -> None:
        """Move the scheduler's unannounced events to each path's own list (newest 64 kept)."""
        new = self._take_unannounced()
        if new:
            self._pending_gossip = (self._pending_gossip + new)[-64:]
            if self.direct is not None:
                self._pending_push = (self._pending_push + new)[-64:]

    def _announcement(self, pending: list[Any]) -> HeadsAnnouncement:
        blocks: list[tuple[bytes, bytes]] = []
        if pending and sum(len(e.data) for e in pending) <= INLINE_ANNOUNCE_BYTES:
            blocks = [(cid_raw(e.cid), e.data) for e in pending]
        return HeadsAnnouncement(peer=self.peer_id, heads=self.heads_raw(), events=len(self.clock), blocks=blocks)

    async def _announce(self, items: list[int]) -> None:
        """The debounced announcement: gossip (local events and re-announcements) and, for a
        re-announcement alone, push too (anti-entropy on both paths)."""
        self._drain()
        pending, self._pending_gossip = self._pending_gossip, []
        data = encode(self._announcement(pending if any(items) else []))
        if self.direct is not None and not any(items):
            await self.direct.broadcast(data)
            self.push_announcements += 1
        if self._gossip:
            await self.broadcaster.broadcast(data)
            self.gossip_announcements += 1

    async def _push_local_events(self) -> None:
        """Every local append is pushed at once (no debounce): one announcement carries what
        was appended since the last one, so a burst coalesces by itself while we are busy."""
        assert self.direct is not None
        while True:
            await self._local_event.wait()
            self._drain()
            if not self._pending_push:
                continue
            pending, self._pending_push = self._pending_push, []
            await self.direct.broadcast(encode(self._announcement(pending)))
            self.push_announcements += 1

    def stats(self) -> dict[str, Any]:
        """Replication counters for metrics: events applied from peers, announcements sent and
        heard per path, and the push broadcaster's own counters (``push``) when it is on."""
        out: dict[str, Any] = {
            "synced_events": self.synced_events,
            "gossip_announcements": self.gossip_announcements,
            "push_announcements": self.push_announcements,
            "heard_gossip": self.heard["gossip"],
            "heard_push": self.heard["push"],
            "syncing_peers": len(self._syncing),
            "stubs_adopted": self.stubs_adopted,
            "stubs_refused": self.stubs_refused,
            "missing_results": len(self._missing_results),
        }
        if self.direct is not None and hasattr(self.direct, "stats"):
            out["push"] = self.direct.stats()
        return out

    # --------------------------------------------------------------- hearing

    async def _hear(self, broadcaster: Broadcaster, path: str) -> None:
        while True:
            peer, data = await broadcaster.next()
            try:
                ann = decode_heads(data)
                self._on_heard(peer)
                self.heard[path] += 1
                # the other path's copy of the same announcement: its blocks are held or on their way
                blocks = [b for b in ann.blocks if b[0] not in self._merging and not self._has_block(b[0])]
                if blocks:
                    cids = {b[0] for b in blocks}
                    self._merging |= cids
                    try:
                        await self._merge(peer, blocks)
                    finally:
                        self._merging -= cids
                        for cid in cids:
                            for other in self._deferred.pop(cid, ()):
                                self.want(other, [cid])
                self.want(peer, ann.heads)
            except WireError as exc:
                peer_log.warning(peer, "bad heads announcement", error=str(exc), path=path)
            except Exception as exc:  # noqa: BLE001 - one peer's message must not stop the node
                peer_log.log("error", peer, "heads announcement failed", error=repr(exc), path=path)

    def _has_block(self, raw: bytes) -> bool:
        """Whether an inline block is stored here already (applied, or an orphan waiting)."""
        try:
            return bool(self.clock.has(cid_from_bytes(raw)))
        except Exception:  # noqa: BLE001 - a malformed CID: the merge skips it with a log line
            return False

    def want(self, peer: str, heads: Iterable[bytes]) -> None:
        """``peer`` has these heads: fetch from it whatever of them we lack."""
        heads = list(heads)[:MAX_HEADS]
        for h in heads:
            if h in self._merging:
                self._deferred.setdefault(h, set()).add(peer)  # bounded: keys are merging blocks
        missing = {h for h in heads if h not in self._merging and not self._has(h)}
        if not missing or self._nursery is None:
            return
        if peer in self._syncing:
            # a sync with this peer is running: it picks these up. A peer's latest heads
            # supersede what it announced before, so replace, never accumulate (bounded).
            self._syncing[peer] = missing
            return
        self._syncing[peer] = missing
        self._nursery.start_soon(self._sync_from, peer)

    def lagging(self, peer: str) -> bool:
        """Whether ``peer`` announced events we do not hold yet (a sync from it is running):
        what it wrote — its claims, say — may be on its way, so nothing it left undone should
        be taken over on the strength of our stale view."""
        return peer in self._syncing

    def _has(self, raw: bytes) -> bool:
        try:
            return bool(self.clock.has_event(cid_from_bytes(raw)))
        except Exception:  # noqa: BLE001 - a malformed CID is never "had"; the fetch rejects it
            return True

    # --------------------------------------------------------------- fetching

    async def _sync_from(self, peer: str) -> None:
        """Fetch what ``peer`` announced until nothing it has is missing here."""
        try:
            deep = False
            while True:
                announced = self._syncing.get(peer, set())
                self._syncing[peer] = set()
                heads = sorted(h for h in announced if not self._has(h))
                # what this peer announced first, then the parents our orphans still miss, within
                # the server's per-request cap, so unfetchable parents can't crowd heads out
                parents = sorted({cid_raw(c) for c in self.clock.missing()} - set(heads))
                want = (heads + parents)[: self.config.max_blocks_per_request]
                if not want:
                    return
                left = set(heads[self.config.max_blocks_per_request:])
                if left:  # asked for next round, unless the peer announces newer heads meanwhile
                    self._syncing[peer] = self._syncing.get(peer, set()) | left
                try:
                    blocks, stubs = await self.dag.get_blocks_and_stubs(peer, want, CATCH_UP_BLOCKS if deep else 0)
                except Exception as exc:  # noqa: BLE001
                    log.info("block fetch failed", peer=peer, error=str(exc))
                    return
                self._on_heard(peer)
                if not blocks and not stubs:
                    return
                before = (len(self.clock), self.clock.orphan_count())
                try:
                    missing = await self._merge(peer, blocks)
                    if stubs:
                        missing = await self._adopt_stubs(peer, stubs)
                except Exception:  # a bug must not let one peer's blocks stop the node
                    log.exception("merging blocks failed", peer=peer)
                    return
                after = (len(self.clock), self.clock.orphan_count())
                if after[0] == before[0] and after[1] <= before[1] and deep:
                    # it sent blocks but nothing applied or waited (rejected, or parents it can't
                    # give us): stop; the next announcement or heartbeat starts a fresh attempt
                    log.info("sync made no progress; pausing", peer=peer, missing=len(missing))
                    return
                deep = bool(missing)  # deep history is missing: ask for it in bulk
        finally:
            self._syncing.pop(peer, None)
            # reached, or the walk ended without reaching them: claims don't wait any longer
            self._release_gate(peer)

    async def _merge(self, peer: str, blocks: list[tuple[bytes, bytes]]) -> set[bytes]:
        pairs = []
        for raw_cid, data in blocks:
            try:
                pairs.append((cid_from_bytes(raw_cid), data))
            except Exception:  # noqa: BLE001 - not a CID: nothing to verify it against
                peer_log.warning(peer, "block with a malformed CID skipped")
        result = await self.clock.add_blocks_async(pairs)
        if result.rejected:
            cid, reason = result.rejected[0]
            peer_log.warning(peer, "blocks rejected", first=str(cid), reason=reason, rejected=len(result.rejected))
        if result.applied:
            self.synced_events += len(result.applied)
            self._ingest(result.applied)  # at once: the fold must see events in the clock's order
            self._note_results(peer, result.applied)
        return {cid_raw(c) for c in result.missing}

    async def _adopt_stubs(self, peer: str, raw: list[bytes]) -> set[bytes]:
        """Stubs ``peer`` sent for events it pruned (asked for, or met on its walk down): adopt
        them once enough peers vouch and their workflows are adopted (module doc). Returns what
        is still missing."""
        stubs: dict[bytes, tuple[bytes, Stub]] = {}
        for data in raw:
            try:
                stub = decode_stub(data)
            except StubError as exc:
                peer_log.warning(peer, "malformed stub", error=str(exc))
                continue
            if not self._has(stub.key):
                stubs[stub.key] = (bytes(data), stub)
        if not stubs or self.adopter is None:
            return {cid_raw(c) for c in self.clock.missing()}
        others = [p for p in self._connected() if p not in (peer, self.peer_id)]
        need = max(1, min(self.checkpoint_quorum, 1 + len(others)))
        votes = {key: {peer} for key in stubs}
        vouchers = [peer]
        for other in others:
            open_ = [k for k in stubs if len(votes[k]) < need and not self._has(k)]
            if not open_:
                break
            try:
                blocks, theirs = await self.dag.get_blocks_and_stubs(other, open_)
            except Exception as exc:  # noqa: BLE001 - it vouches for nothing
                log.debug("stub check failed", peer=other, error=str(exc))
                continue
            vouchers.append(other)
            if blocks:
                await self._merge(other, blocks)  # it still holds them: the events themselves
            for data in theirs:
                try:
                    key = decode_stub(data).key
                except StubError:
                    continue
                if key in stubs and bytes(data) == stubs[key][0]:
                    votes[key].add(other)
                elif key in stubs:
                    peer_log.warning(other, "a stub differs from another peer's for the same event", cid=str(stubs[key][1].cid))
        ready = [st for key, (_, st) in stubs.items() if len(votes[key]) >= need and not self._has(key)]
        short = sum(1 for key in stubs if len(votes[key]) < need and not self._has(key))
        if short:
            self.stubs_refused += short
            log.warning("stubs not vouched for by enough peers; not adopted", peer=peer, stubs=short, need=need)
        about = {w for st in ready for w in st.about}
        adopted = await self.adopter.adopt(vouchers, about, need) if about else set()
        ready = [st for st in ready if set(st.about) <= adopted]
        if ready:
            result = self.clock.add_stubs(ready)
            self.stubs_adopted += len(ready)
            if result.applied:
                self.synced_events += len(result.applied)
                self._ingest(result.applied)
                self._note_results(peer, result.applied)
        return {cid_raw(c) for c in self.clock.missing()}

    # ---------------------------------------------------------------- results

    def _note_results(self, peer: str, events: list[Any]) -> None:
        now = self._now()
        found = False
        for ev in events:
            for op in ev.ops:
                if isinstance(op, dict) and op.get("op") == "task.done" and op.get("result_cid") is not None:
                    try:
                        raw = cid_raw(op["result_cid"])
                        if self.clock.has(op["result_cid"]):
                            continue
                    except Exception:  # noqa: BLE001 - the fold rejects a malformed result_cid
                        continue
                    self.expect_result(raw, peer, now)
                    found = True
        if found and self._nursery is not None and peer not in self._fetching:
            self._nursery.start_soon(self._fetch_results, peer)

    def expect_result(self, raw: bytes, peer: str | None, now: float | None = None) -> None:
        """Wait for a result block (``peer`` announced it; None: any peer may have it)."""
        entry = self._missing_results.get(raw)
        if entry is None:
            if len(self._missing_results) >= self.config.max_missing_results:
                if not self._results_full_logged:
                    log.warning("too many result blocks missing; newer ones are fetched when a status asks",
                                max_missing_results=self.config.max_missing_results)
                    self._results_full_logged = True
                return
            entry = self._missing_results[raw] = _Missing(self._now() if now is None else now)
        if peer is not None:
            entry.peers.add(peer)

    async def _fetch_results(self, peer: str) -> None:
        """Fetch result blocks that ``peer`` is known to have (one fetch per peer at a time)."""
        if peer in self._fetching:
            return
        self._fetching.add(peer)
        try:
            await self._fetch_results_from(peer)
        finally:
            self._fetching.discard(peer)

    async def _fetch_results_from(self, peer: str) -> None:
        got = 0
        while True:
            want = [c for c, m in self._missing_results.items() if peer in m.peers][:256]
            if not want:
                break
            try:
                blocks = await self.dag.get_blocks(peer, want)
            except Exception as exc:  # noqa: BLE001 - retried by _retry_results from any peer
                log.info("result fetch failed", peer=peer, error=str(exc))
                break
            for raw_cid, data in blocks:
                if raw_cid not in self._missing_results:
                    continue
                try:
                    self.clock.add_raw_block(cid_from_bytes(raw_cid), data)
                    self._missing_results.pop(raw_cid, None)
                    got += 1
                except Exception as exc:  # noqa: BLE001
                    peer_log.warning(peer, "result block rejected", error=str(exc))
            for raw in want:  # still missing: it did not serve it (or served it wrong); ask others
                entry = self._missing_results.get(raw)
                if entry is not None:
                    entry.peers.discard(peer)
        if got:
            self._on_results()

    async def _retry_results(self) -> None:
        """Missing result blocks are asked of every connected peer (any may hold them) every
        ``reannounce_s``, until they arrive or ``missing_result_giveup_s`` passes."""
        while True:
            await trio.sleep(self.config.reannounce_s)
            if not self._missing_results:
                continue
            now = self._now()
            stale = [c for c, m in self._missing_results.items() if now - m.first_seen > self.config.missing_result_giveup_s]
            for c in stale:
                del self._missing_results[c]
            if stale:
                log.warning("gave up waiting for result blocks no peer served", blocks=len(stale))
            for peer in self._connected():
                for m in self._missing_results.values():
                    m.peers.add(peer)
                await self._fetch_results(peer)

    @property
    def missing_results(self) -> int:
        return len(self._missing_results)
