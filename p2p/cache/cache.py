"""``ResultCache``: what the scheduler asks before inference and tells after it.

Lookups go local first, then to a few peers that advertise a shared cache; a hit carries the
original run's result and stats. Every disk read, write and every seal/unseal runs in a worker
thread (``trio.to_thread``): the event loop never waits on SQLite or AES.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from p2p.cache.keys import CacheKeys, cache_key, cache_keys
from p2p.cache.remote import CacheServer, PeerOffer, ask_peers
from p2p.cache.seal import AuthError, decode_entry, encode_entry, seal, unseal
from p2p.cache.store import CacheStore
from p2p.protocols.cache import MAX_ENTRY_BYTES, MAX_KEYS

log = structlog.get_logger("p2p.cache")

STORE_FILE = "cache.sqlite"
BATCH_S = 0.005  # remote lookups started within this window travel in one request per peer


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

    @classmethod
    def open(cls, data_dir: Path, network_key: bytes | None, *, max_bytes: int, remote_timeout_s: float = 1.0,
             remote_peers: int = 3) -> "ResultCache":
        """The cache of the node in ``data_dir`` (start-up, before the event loop serves anyone)."""
        keys = cache_keys(network_key, Path(data_dir))
        store = CacheStore(Path(data_dir) / STORE_FILE, max_bytes, keys.key_id)
        return cls(keys, store, remote_timeout_s=remote_timeout_s, remote_peers=remote_peers)

    def close(self) -> None:
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
        """``key`` from a peer that advertises a shared cache, verified and stored here; None
        when nobody has it within ``remote_timeout_s``. Keys asked at the same moment travel
        together: the first asker waits ``BATCH_S`` for the others, then asks for them all."""
        if not self.shared or self._net is None:
            return None
        if not any(o.peer_id not in self.bad_peers for o in self._offers()):
            return None  # nobody to ask: no batching delay
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
        """Ask peers for every key of ``batch``; store what verifies; wake every waiter."""
        try:
            offers = [o for o in self._offers() if o.peer_id not in self.bad_peers]
            keys = list(batch)
            found: dict[bytes, tuple[str, bytes, CacheEntry]] = {}
            log.debug("cache lookup at peers", keys=len(keys), peers=[o.peer_id for o in offers],
                      skipped=sorted(self.bad_peers))
            if offers:
                async with trio.open_nursery() as nursery:
                    for i in range(0, len(keys), MAX_KEYS):
                        nursery.start_soon(self._fetch_some, offers, keys[i:i + MAX_KEYS], found)
            if found:
                await trio.to_thread.run_sync(self._put_many_sync, [(k, sealed) for k, (_, sealed, _) in found.items()])
            for key, (peer, _, entry) in found.items():
                batch[key].entry = CacheEntry(entry.result, entry.stats, source=peer)
        finally:
            for wait in batch.values():
                wait.done.set()

    async def _fetch_some(self, offers: list[PeerOffer], keys: list[bytes], found: dict[bytes, Any]) -> None:
        found.update(await ask_peers(self._net, offers, keys, peers=self.remote_peers, timeout_s=self.remote_timeout_s,
                                     verify=self._verify_remote))

    def _put_many_sync(self, entries: list[tuple[bytes, bytes]]) -> None:
        for key, sealed in entries:
            self.store.put(key, sealed)

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

    def _put_sync(self, key: bytes, result: dict[str, Any], stats: dict[str, Any]) -> bool:
        sealed = seal(self.keys.entry, key, encode_entry(result, stats))
        if len(sealed) > MAX_ENTRY_BYTES:
            return False  # too large to travel: recomputed rather than cached
        return self.store.put(key, sealed)

    async def put(self, key: bytes, result: dict[str, Any], stats: dict[str, Any]) -> bool:
        """Seal and store a result of a real run (False when it is too large to keep)."""
        ok = await trio.to_thread.run_sync(self._put_sync, key, result, stats)
        if ok:
            self.stored += 1
        return ok

    # --------------------------------------------------------------- network

    def attach(self, net: Any, offers: Callable[[], list[PeerOffer]], *, max_frame_bytes: int) -> CacheServer | None:
        """Networking is up: ask ``offers()`` peers on misses and answer theirs. Nothing is
        attached for a local (open-network) cache: its entries never leave this node."""
        if not self.shared:
            return None
        self._net, self._offers = net, offers
        self.server = CacheServer(self._serve_read, max_frame_bytes)
        return self.server

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

    def info(self) -> dict[str, Any]:
        return {
            "entries": self.store.entries,
            "bytes": self.store.bytes,
            "max_bytes": self.store.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "remote_hits": self.remote_hits,
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
    return [PeerOffer(r.heartbeat.peer_id, r.heartbeat.cache_entries) for r in peers.records()
            if r.heartbeat.cache_entries > 0 and r.heartbeat.peer_id != me and net.is_connected(r.heartbeat.peer_id)]
