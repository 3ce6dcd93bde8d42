"""``ResultCache``: what the scheduler asks before inference and tells after it.

Lookups go local first, then to peers known to hold the key (:mod:`p2p.cache.index`); a hit
carries the original run's result and stats. Every disk read, write and every seal/unseal runs
in a worker thread (``trio.to_thread``): the event loop never waits on SQLite or AES.

What a task pays on the hot path, where most lookups miss (docs/architecture.md §14): its key
(an HMAC of a short input, computed in place: cheaper than a thread hop), a miss answered from
the in-memory key prefixes (no disk, no thread, no request unless a peer holds the key), and a
store that is staged in memory and written with others in one transaction (``run``: one thread
hop and one commit per ``FLUSH_S``). A staged entry is found by lookups here at once; a node
killed before the write loses it, which costs a recomputation, never a result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from p2p.cache.index import KeyIndex
from p2p.cache.keys import CacheKeys, cache_key, cache_keys
from p2p.cache.remote import CacheServer, PeerOffer, ask_peer, fetch_index
from p2p.cache.seal import AuthError, decode_entry, encode_entry, seal, unseal
from p2p.cache.store import CacheStore
from p2p.protocols.cache import MAX_ENTRY_BYTES, MAX_KEYS, MAX_PREFIXES

log = structlog.get_logger("p2p.cache")

STORE_FILE = "cache.sqlite"
BATCH_S = 0.005  # remote lookups started within this window travel in one request per peer
FLUSH_S = 0.05  # staged entries are written together this often
MAX_STAGED = 4096  # past this many unwritten entries, a store waits for its own write
INLINE_KEY_CHARS = 16384  # a task's key is computed in place below this input size, in a thread above
INDEX_POLL_S = 1.0  # how often peers' advertised index positions are compared with ours
INDEX_ROUNDS = 64  # most index replies taken from one peer in one go (64 x 16,384 prefixes)
INDEX_PASS_S = 10.0  # the longest one peer's index is paged through in one pass


class _Wait:
    """One key's remote lookup in a batch: set ``done`` once asked (``entry`` None: a miss)."""

    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.entry: CacheEntry | None = None


@dataclass(frozen=True)
class CacheEntry:
    """A cached result: its clock form (``pack_result``), the original run's stats, and where it
    came from (``"local"`` or the peer id that sent it)."""

    result: dict[str, Any]
    stats: dict[str, Any]
    source: str = "local"


class ResultCache:
    """This node's result cache: keys, the sealed store, the counters and the in-flight map.

    Why one object: a lookup, a store and a remote answer all need the same keys and the same
    store, and the counters (``info``) must count them all; the scheduler and the node see
    only ``key_for`` / ``computing`` / ``get`` / ``put`` and the protocol handler."""

    def __init__(self, keys: CacheKeys, store: CacheStore, *, remote_timeout_s: float = 1.0, remote_peers: int = 3) -> None:
        self.keys = keys
        self.store = store
        self.remote_timeout_s = remote_timeout_s
        self.remote_peers = remote_peers
        self.hits = 0
        self.misses = 0
        self.remote_hits = 0
        self.auth_failures = 0
        self.stored = 0
        self.bad_peers: dict[str, int] = {}  # peer -> entries from it that failed authentication
        self._flights: dict[bytes, list[Any]] = {}  # key -> [lock, holders and waiters]
        self._net: Any = None
        self._batch: dict[bytes, _Wait] = {}  # keys waiting to be asked of peers
        self._leading = False  # a lookup is gathering the batch
        self._offers: Callable[[], list[PeerOffer]] = list
        self.server: CacheServer | None = None
        self.index = KeyIndex()
        self._staged: dict[bytes, CacheEntry] = {}  # stored here, not yet written (see ``run``)
        self._staged_wanted = trio.Event()
        self._running = False
        self.remote_asks = 0  # lookup requests sent to peers (each for up to MAX_KEYS keys)

    @classmethod
    def open(cls, data_dir: Path, network_key: bytes | None, *, max_bytes: int, remote_timeout_s: float = 1.0,
             remote_peers: int = 3) -> "ResultCache":
        """The cache of the node in ``data_dir`` (start-up, before the event loop serves anyone)."""
        keys = cache_keys(network_key, Path(data_dir))
        store = CacheStore(Path(data_dir) / STORE_FILE, max_bytes, keys.key_id)
        return cls(keys, store, remote_timeout_s=remote_timeout_s, remote_peers=remote_peers)

    def close(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - a cache that cannot write loses entries, and still closes
            log.warning("could not write the staged cache entries at close", error=str(exc))
        finally:
            self.store.close()

    @property
    def shared(self) -> bool:
        """Whether entries may travel to peers (only under a network key)."""
        return self.keys.shared

    # ------------------------------------------------------------------ keys

    def key_sync(self, spec: Any) -> bytes:
        """The cache key of a task spec: its model's content id (the name when unpinned), task,
        params and input (blocking: an HMAC)."""
        return cache_key(self.keys, spec.model_cid or spec.model, spec.task, dict(spec.params), spec.input)

    async def key_for(self, spec: Any) -> bytes:
        if len(spec.input) <= INLINE_KEY_CHARS:  # an HMAC of a few KiB: cheaper than the thread hop
            return self.key_sync(spec)
        return await trio.to_thread.run_sync(self.key_sync, spec)

    @asynccontextmanager
    async def computing(self, key: bytes) -> AsyncIterator[None]:
        """Hold ``key`` while looking it up and computing it: another task with the same key
        waits here (first come, first served) and then finds the entry instead of running the
        same inference again."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = [trio.Lock(), 0]
        flight[1] += 1
        try:
            async with flight[0]:
                yield
        finally:
            flight[1] -= 1
            if flight[1] == 0:
                del self._flights[key]

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    # --------------------------------------------------------------- lookups

    def _open_sync(self, key: bytes, sealed: bytes) -> CacheEntry:
        result, stats = decode_entry(unseal(self.keys.entry, key, sealed))
        return CacheEntry(result, stats)

    def _get_local_sync(self, key: bytes) -> tuple[CacheEntry | None, bool]:
        """(entry, whether one failed authentication and was dropped)."""
        sealed = self.store.get(key)
        if sealed is None:
            return None, False
        try:
            return self._open_sync(key, sealed), False
        except (AuthError, ValueError):
            self.store.delete(key)
            return None, True

    async def get_local(self, key: bytes) -> CacheEntry | None:
        staged = self._staged.get(key)
        if staged is not None:
            return staged
        if not self.store.may_hold(key):  # the common miss: no disk read, no thread
            return None
        entry, failed = await trio.to_thread.run_sync(self._get_local_sync, key)
        if failed:
            self.auth_failures += 1
            log.warning("a cache entry on disk failed authentication; dropped", key=key.hex()[:16])
        return entry

    async def get(self, key: bytes, *, remote: bool = True) -> CacheEntry | None:
        """The entry under ``key``: local, else (``remote`` and shared) from a peer, stored here
        once verified. Counts a hit, a remote hit or a miss."""
        entry = await self.get_local(key)
        if entry is None and remote:
            entry = await self.get_remote(key)
            if entry is not None:
                self.remote_hits += 1
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    async def get_remote(self, key: bytes) -> CacheEntry | None:
        """``key`` from a peer known to hold it (its key index), verified and stored here; None
        when none does, or none answers within ``remote_timeout_s``. Keys asked at the same
        moment travel together: the first asker waits ``BATCH_S`` for the others."""
        if not self.shared or self._net is None or self.remote_peers == 0:
            return None
        if not any(p not in self.bad_peers for p in self.index.holders(key)):
            return None  # nobody holds it: no request, no batching delay
        wait = self._batch.get(key)
        if wait is None:
            wait = self._batch[key] = _Wait()
        if not self._leading:
            self._leading = True
            try:
                await trio.sleep(BATCH_S)
            finally:
                self._leading = False
            batch, self._batch = self._batch, {}
            await self._fetch(batch)
        with trio.move_on_after(self.remote_timeout_s + BATCH_S + 1.0):  # a cancelled leader: a miss
            await wait.done.wait()
        return wait.entry

    async def _fetch(self, batch: dict[bytes, "_Wait"]) -> None:
        """Ask each key of ``batch`` of up to ``remote_peers`` of its holders (one request per
        peer for all its keys); store what verifies; wake every waiter."""
        try:
            asks: dict[str, list[bytes]] = {}
            for key in batch:
                for peer in [p for p in self.index.holders(key) if p not in self.bad_peers][:self.remote_peers]:
                    asks.setdefault(peer, []).append(key)
            found: dict[bytes, tuple[str, bytes, CacheEntry]] = {}
            log.debug("cache lookup at peers", keys=len(batch), peers=sorted(asks))
            with trio.move_on_after(self.remote_timeout_s):
                async with trio.open_nursery() as nursery:
                    for peer, keys in asks.items():
                        for i in range(0, len(keys), MAX_KEYS):
                            self.remote_asks += 1
                            nursery.start_soon(self._fetch_some, peer, keys[i:i + MAX_KEYS], found)
            if found:
                await trio.to_thread.run_sync(self._put_many_sync, [(k, sealed) for k, (_, sealed, _) in found.items()])
            for key, (peer, _, entry) in found.items():
                batch[key].entry = CacheEntry(entry.result, entry.stats, source=peer)
        finally:
            for wait in batch.values():
                wait.done.set()

    async def _fetch_some(self, peer: str, keys: list[bytes], found: dict[bytes, Any]) -> None:
        got = await ask_peer(self._net, peer, keys, timeout_s=self.remote_timeout_s, verify=self._verify_remote)
        for key, value in got.items():
            found.setdefault(key, value)

    def _put_many_sync(self, entries: list[tuple[bytes, bytes]]) -> int:
        return sum(self.store.put_many(entries))

    def _open_many_sync(self, items: list[tuple[bytes, bytes]]) -> list[CacheEntry | str]:
        out: list[CacheEntry | str] = []
        for key, sealed in items:
            try:
                out.append(self._open_sync(key, sealed))
            except (AuthError, ValueError) as exc:
                out.append(str(exc))
        return out

    async def _verify_remote(self, peer: str, items: list[tuple[bytes, bytes]]) -> list[CacheEntry | None]:
        """Open a peer's entries (in a thread): one that fails is dropped, counted, and the peer
        noted (never asked again)."""
        opened = await trio.to_thread.run_sync(self._open_many_sync, items)
        out: list[CacheEntry | None] = []
        for (key, _), got in zip(items, opened):
            if isinstance(got, str):
                self.auth_failures += 1
                self.bad_peers[peer] = self.bad_peers.get(peer, 0) + 1
                log.warning("a peer's cache entry failed authentication; dropped, and the peer is not asked again",
                            peer=peer, key=key.hex()[:16], error=got)
                out.append(None)
            else:
                out.append(got)
        return out

    # ---------------------------------------------------------------- stores

    def _seal_sync(self, key: bytes, entry: CacheEntry) -> bytes | None:
        """The sealed entry; None when it is too large to travel, or cannot be encoded (a value
        DAG-CBOR refuses, such as NaN): that one entry is not kept, the others are."""
        try:
            sealed = seal(self.keys.entry, key, encode_entry(entry.result, entry.stats))
        except Exception as exc:  # noqa: BLE001 - the encoder raises several types
            log.warning("a result could not be encoded for the cache; not kept", key=key.hex()[:16], error=str(exc))
            return None
        return sealed if len(sealed) <= MAX_ENTRY_BYTES else None  # too large to travel: recomputed

    def _write_sync(self, staged: list[tuple[bytes, CacheEntry]]) -> int:
        """Seal and write entries in one transaction: how many were kept."""
        sealed = [(k, s) for k, e in staged if (s := self._seal_sync(k, e)) is not None]
        return self._put_many_sync(sealed)

    async def put(self, key: bytes, result: dict[str, Any], stats: dict[str, Any]) -> bool:
        """Keep the result of a real run. While ``run`` is running, the entry is staged (found
        by lookups here at once) and written with others; otherwise it is written now. False
        when it is too large to keep (known only when written now)."""
        entry = CacheEntry(result, stats)
        if self._running and len(self._staged) < MAX_STAGED:
            if key not in self._staged:
                self.stored += 1  # taken back if it turns out too large to keep
            self._staged[key] = entry
            self._staged_wanted.set()
            return True
        kept = await trio.to_thread.run_sync(self._write_sync, [(key, entry)])
        self.stored += kept
        return kept > 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The cache's own tasks, in the node's nursery: write staged entries, and follow the
        key index of the peers that offer a shared cache."""
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if self.shared:
                    nursery.start_soon(self._follow_index)
                task_status.started()
        finally:
            self._running = False

    async def _writer(self) -> None:
        while True:
            await self._staged_wanted.wait()
            await trio.sleep(FLUSH_S)  # gather what the next tasks store
            self._staged_wanted = trio.Event()
            staged = list(self._staged.items())
            try:
                self.stored -= len(staged) - await trio.to_thread.run_sync(self._write_sync, staged)
            except Exception as exc:  # noqa: BLE001 - a cache write fault loses entries, never results
                self.stored -= len(staged)
                log.warning("could not write cache entries; they will be recomputed", entries=len(staged), error=str(exc))
            for key, entry in staged:
                if self._staged.get(key) is entry:
                    del self._staged[key]

    async def _follow_index(self) -> None:
        while True:
            await self.sync_index()
            await trio.sleep(INDEX_POLL_S)

    async def sync_index(self) -> None:
        """For each peer whose heartbeat advertises entries past what we hold of its key index,
        ask it for the keys stored since (forgetting peers no longer offered, or noted bad).
        Peers are asked at once, each within ``INDEX_PASS_S``: a slow one delays nobody else."""
        offers = [o for o in (self._offers() if self._net is not None else []) if o.peer_id not in self.bad_peers]
        self.index.retain({o.peer_id for o in offers})
        due = [o for o in offers if self.index.behind(o.peer_id, o.seq)]
        if due:
            async with trio.open_nursery() as nursery:
                for offer in due:
                    nursery.start_soon(self._sync_peer, offer.peer_id)

    async def _sync_peer(self, peer: str) -> None:
        """Page through ``peer``'s index until it says there is no more, it stops moving forward
        (a server that repeats itself is not asked again this pass), or the pass's time is up."""
        from p2p.net.errors import NetError
        from p2p.protocols.wire import WireError

        with trio.move_on_after(INDEX_PASS_S):
            try:
                for _ in range(INDEX_ROUNDS):
                    epoch, asked = self.index.position(peer)
                    got_epoch, seq, more, prefixes = await fetch_index(
                        self._net, peer, epoch, asked, timeout_s=max(self.remote_timeout_s, 5.0))
                    self.index.learn(peer, got_epoch, seq, prefixes)
                    if not more or not prefixes or (got_epoch == epoch and seq <= asked):
                        break
            except (NetError, WireError) as exc:
                log.debug("cache index request failed", peer=peer, error=str(exc))

    # --------------------------------------------------------------- network

    def attach(self, net: Any, offers: Callable[[], list[PeerOffer]], *, max_frame_bytes: int) -> CacheServer | None:
        """Networking is up: ask ``offers()`` peers on misses and answer theirs. Nothing is
        attached for a local (open-network) cache: its entries never leave this node."""
        if not self.shared:
            return None
        self._net, self._offers = net, offers
        self.server = CacheServer(self._serve_read, self._serve_index, max_frame_bytes)
        return self.server

    async def _serve_index(self, epoch: bytes, seq: int) -> tuple[bytes, int, bool, list[bytes]]:
        """The key prefixes stored after ``seq`` (from the start when asked under another epoch)."""
        store = self.store
        start = seq if epoch == store.epoch else 0
        prefixes, last, more = await trio.to_thread.run_sync(store.since, start, MAX_PREFIXES)
        return store.epoch, last, more, prefixes

    async def _serve_read(self, keys: list[bytes]) -> list[bytes | None]:
        """Sealed entries to send a peer, each checked first: one that fails is dropped, not sent."""

        def read() -> tuple[list[bytes | None], int]:
            out: list[bytes | None] = []
            failed = 0
            for key in keys:
                sealed = self.store.get(key)
                if sealed is not None:
                    try:
                        self._open_sync(key, sealed)
                    except (AuthError, ValueError):
                        self.store.delete(key)
                        sealed, failed = None, failed + 1
                out.append(sealed)
            return out, failed

        out, failed = await trio.to_thread.run_sync(read)
        if failed:
            self.auth_failures += failed
            log.warning("cache entries on disk failed authentication; dropped, not sent", count=failed)
        return out

    def advertised_entries(self) -> int:
        """What the heartbeat advertises: entries peers may ask for (0 for a local cache)."""
        return self.store.entries if self.shared else 0

    def advertised_seq(self) -> int:
        """The seq of the newest written entry (0 for a local cache): peers behind it ask for
        the keys stored since."""
        return self.store.seq if self.shared else 0

    def flush(self) -> None:
        """Write what is still staged (blocking: at shutdown, once the node's tasks ended)."""
        staged, self._staged = list(self._staged.items()), {}
        if staged:
            self.stored -= len(staged) - self._write_sync(staged)

    def info(self) -> dict[str, Any]:
        return {
            "entries": self.store.entries,
            "bytes": self.store.bytes,
            "max_bytes": self.store.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "remote_hits": self.remote_hits,
            "remote_asks": self.remote_asks,
            "staged": len(self._staged),
            "index_peers": len(self.index.peers()),
            "index_prefixes": sum(self.index.prefixes(p) for p in self.index.peers()),
            "auth_failures": self.auth_failures,
            "stored": self.stored,
            "evictions": self.store.evictions,
            "served": self.server.served if self.server is not None else 0,
            "shared": self.shared,
            "bad_peers": dict(self.bad_peers),
        }


def open_node_cache(config: Any) -> ResultCache | None:
    """The result cache of a node's ``config`` (``p2p.config.NodeConfig``): keyed from the network
    key when the node runs with one (entries shared with members), else from a local key (entries
    stay on this node). None with ``cache.enabled`` off."""
    if not config.cache.enabled:
        return None
    from p2p.net.psk import load_swarm_key

    net, c = config.network, config.cache
    key = load_swarm_key(Path(net.psk_file).expanduser()) if net.enabled and net.psk_file else None
    return ResultCache.open(Path(config.data_dir).expanduser(), key, max_bytes=c.max_bytes,
                            remote_timeout_s=c.remote_timeout_s, remote_peers=c.remote_peers)


def cache_offers(peers: Any, net: Any, me: str) -> list[PeerOffer]:
    """Live, connected peers (``peers``: the PeerTable) whose heartbeat offers a shared cache."""
    return [PeerOffer(r.heartbeat.peer_id, r.heartbeat.cache_entries, r.heartbeat.cache_seq) for r in peers.records()
            if r.heartbeat.cache_entries > 0 and r.heartbeat.peer_id != me and net.is_connected(r.heartbeat.peer_id)]
