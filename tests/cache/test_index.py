"""The cache's key index and staged writes: what keeps a cache lookup cheap on the hot path.

- A node learns which keys a peer holds through the real ``since`` exchange (the peer's own
  ``CacheServer`` answering from its SQLite store), pages included, and asks that peer only for
  those: a key nobody holds costs no request.
- A store whose file was recreated (another epoch) replaces what we knew of it.
- ``KeyIndex`` against a model (hypothesis): holders are exactly the peers whose learned
  prefixes include the key, within the bounds.
- Staged writes: found at once, written in one transaction, flushed at close, and counted.
- A store file from before the index (no ``seq`` column) opens and is indexed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.cache import ResultCache
from p2p.cache.index import KeyIndex
from p2p.cache.remote import PeerOffer
from p2p.cache.store import CacheStore
from p2p.protocols.cache import decode_keys, encode_since
from tests.cache.test_cache import NET_KEY, Spec, _result


class LoopbackNet:
    """Requests to peer ids routed to those caches' real servers (the wire format included)."""

    def __init__(self, servers: dict[str, ResultCache]) -> None:
        self.servers = servers
        self.requests: list[tuple[str, str]] = []  # (peer, "get" | "since")

    async def request(self, peer: str, protocol: str, payload: bytes, timeout: float) -> bytes:
        from p2p.protocols.cache import request_kind

        self.requests.append((peer, request_kind(payload)))
        server = self.servers[peer].server
        assert server is not None
        return await server.handle("asker", payload)


def _offer(peer: str, cache: ResultCache) -> PeerOffer:
    return PeerOffer(peer, cache.advertised_entries(), cache.advertised_seq())


async def _serving_pair(tmp_path: Path, texts: list[str]) -> tuple[ResultCache, ResultCache, LoopbackNet, list[bytes]]:
    """A holding ``texts``' entries and serving them; B following A's index through ``net``
    (B's offer is read from ``net.servers["A"]``, so a recreated A is followed too)."""
    a = ResultCache.open(tmp_path / "a", NET_KEY, max_bytes=1 << 22)
    b = ResultCache.open(tmp_path / "b", NET_KEY, max_bytes=1 << 22)
    keys = [await a.key_for(Spec(t)) for t in texts]
    for i, k in enumerate(keys):
        await a.put(k, *_result(i)[:2])
    net = LoopbackNet({"A": a})
    a.attach(net, list, max_frame_bytes=1 << 20)
    b.attach(net, lambda: [_offer("A", net.servers["A"])], max_frame_bytes=1 << 20)
    return a, b, net, keys


async def test_a_peer_is_asked_only_for_keys_its_index_holds(tmp_path: Path) -> None:
    a, b, net, held = await _serving_pair(tmp_path, [f"held {i}" for i in range(5)])

    await b.sync_index()
    assert b.index.prefixes("A") == 5 and net.requests == [("A", "since")]
    await b.sync_index()
    assert net.requests == [("A", "since")], "an index in step is not asked again"

    other = await b.key_for(Spec("nobody has this"))
    assert await b.get(other) is None and net.requests == [("A", "since")], "a miss everywhere sends nothing"
    hit = await b.get(held[3])
    assert hit is not None and hit.source == "A" and hit.result == _result(3)[0]
    assert net.requests[-1] == ("A", "get") and b.remote_asks == 1 and b.store.has(held[3])

    more = await a.key_for(Spec("stored later"))
    await a.put(more, *_result(9)[:2])
    await b.sync_index()
    assert b.index.prefixes("A") == 6 and (await b.get(more)) is not None
    a.close()
    b.close()


async def test_index_pages_and_a_recreated_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import p2p.cache.cache as cache_mod

    monkeypatch.setattr(cache_mod, "MAX_PREFIXES", 3)  # pages of 3 prefixes
    a, b, net, keys = await _serving_pair(tmp_path, [f"k {i}" for i in range(8)])
    await b.sync_index()
    assert b.index.prefixes("A") == 8 and net.requests == [("A", "since")] * 3  # 3 + 3 + 2
    assert all(b.index.holders(k) == ["A"] for k in keys)

    # A's store file is recreated: a new epoch, seq from 0. Once its seq passes what b holds,
    # b asks, is answered from the start under the new epoch, and replaces what it knew
    a.close()
    for p in (tmp_path / "a").glob("cache.sqlite*"):
        p.unlink()
    a = ResultCache.open(tmp_path / "a", NET_KEY, max_bytes=1 << 22)
    fresh = [await a.key_for(Spec(f"fresh {i}")) for i in range(9)]
    for i, k in enumerate(fresh):
        await a.put(k, *_result(i)[:2])
    net.servers["A"] = a
    a.attach(net, list, max_frame_bytes=1 << 20)
    await b.sync_index()
    assert b.index.prefixes("A") == 9 and b.index.holders(keys[5]) == [] and b.index.holders(fresh[8]) == ["A"]
    assert b.index.total == 9
    a.close()
    b.close()


async def test_the_server_answers_another_epoch_from_the_start(tmp_path: Path) -> None:
    a = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 22)
    for i in range(4):
        await a.put(await a.key_for(Spec(f"x {i}")), *_result(i)[:2])
    server = a.attach(LoopbackNet({}), list, max_frame_bytes=1 << 20)
    assert server is not None
    epoch, seq, more, prefixes = decode_keys(await server.handle("p", encode_since(b"\x09" * 8, 3)))
    assert epoch == a.store.epoch and seq == 4 and not more and len(prefixes) == 4
    epoch, seq, more, prefixes = decode_keys(await server.handle("p", encode_since(a.store.epoch, 3)))
    assert seq == 4 and len(prefixes) == 1
    a.close()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("learn"), st.sampled_from("pqr"), st.sampled_from([b"E" * 8, b"F" * 8]), st.integers(0, 50),
              st.lists(st.integers(0, 15), max_size=6)),
    st.tuples(st.just("retain"), st.sets(st.sampled_from("pqr")), st.just(b""), st.just(0), st.just([])),
), max_size=30), st.integers(1, 3), st.integers(1, 8))
def test_holders_match_a_model(ops, max_peers, max_prefixes) -> None:
    index = KeyIndex(max_peers=max_peers, max_prefixes=max_prefixes)
    model: dict[str, tuple[bytes, set[int], bool]] = {}  # peer -> (epoch, prefixes, full)
    for op, peer, epoch, seq, pre in ops:
        if op == "retain":
            index.retain(peer)
            model = {p: v for p, v in model.items() if p in peer}
            continue
        index.learn(peer, epoch, seq, [i.to_bytes(8, "big") for i in pre])
        if peer not in model and len(model) >= max_peers:
            continue
        e, have, full = model.get(peer, (b"", set(), False))
        if e != epoch:
            e, have, full = epoch, set(), False
        if not full:
            have = have | set(pre)
            if len(have) > max_prefixes:
                have, full = set(), True
        model[peer] = (e, have, full)
    for i in range(16):
        key = i.to_bytes(8, "big") + b"\0" * 24
        assert index.holders(key) == sorted(p for p, (_, have, _) in model.items() if i in have)
    assert len(index.peers()) <= max_peers


async def test_staged_entries_are_found_at_once_written_together_and_flushed_at_close(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 22)
    keys = [await cache.key_for(Spec(f"s {i}")) for i in range(20)]
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        for i, k in enumerate(keys[:10]):
            assert await cache.put(k, *_result(i)[:2])
        assert cache.info()["staged"] == 10 and not cache.store.has(keys[0])
        got = await cache.get(keys[4])
        assert got is not None and got.result == _result(4)[0], "a staged entry is found at once"
        with trio.fail_after(30):
            while cache.info()["staged"]:  # emptied once the write returned
                await trio.sleep(0.01)
        assert cache.stored == 10 and cache.store.seq == 10 and all(cache.store.has(k) for k in keys[:10])
        for i, k in enumerate(keys[10:]):
            await cache.put(k, *_result(i)[:2])
        nursery.cancel_scope.cancel()
    cache.close()  # what was still staged is written now
    reopened = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 22)
    assert all(reopened.store.has(k) for k in keys) and reopened.store.seq == 20
    reopened.close()


def test_a_store_file_from_before_the_index_opens_indexed(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
        CREATE TABLE entries (key BLOB PRIMARY KEY, sealed BLOB NOT NULL, size INTEGER NOT NULL, used INTEGER NOT NULL);
    """)
    db.execute("INSERT INTO meta VALUES ('key_id', ?)", (b"k" * 16,))
    for i in range(3):
        db.execute("INSERT INTO entries VALUES (?, ?, ?, ?)", (bytes([i]) * 32, b"s" * 10, 42, i + 1))
    db.commit()
    db.close()
    store = CacheStore(path, 1 << 20, b"k" * 16)
    assert store.entries == 3 and store.seq == 3 and store.may_hold(bytes([1]) * 32)
    prefixes, last, more = store.since(0, 10)
    assert len(prefixes) == 3 and last == 3 and not more
    store.put(b"\x07" * 32, b"t" * 10)
    assert store.seq == 4 and store.since(3, 10)[0] == [b"\x07" * 8]
    store.close()


def test_seq_keeps_rising_when_a_new_key_empties_the_store(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = CacheStore(path, 1 << 20, b"k" * 16)
    for i in range(3):
        store.put(bytes([i]) * 32, b"s" * 10)
    epoch = store.epoch
    store.close()
    store = CacheStore(path, 1 << 20, b"z" * 16)
    assert store.entries == 0 and store.seq == 3 and store.epoch == epoch and not store.may_hold(bytes([1]) * 32)
    store.put(b"\x05" * 32, b"s" * 10)
    assert store.seq == 4
    store.close()


class LyingNet:
    """A peer whose index replies never move forward: always seq 5, ``more`` true, the same prefixes."""

    def __init__(self) -> None:
        self.requests = 0

    async def request(self, peer: str, protocol: str, payload: bytes, timeout: float) -> bytes:
        from p2p.protocols.cache import encode_keys

        self.requests += 1
        return encode_keys(b"L" * 8, 5, True, [bytes([i]) * 8 for i in range(16)])


async def test_an_index_server_that_repeats_itself_is_asked_once_a_pass(tmp_path: Path) -> None:
    b = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 22)
    net = LyingNet()
    b.attach(net, lambda: [PeerOffer("liar", 100, seq=1000)], max_frame_bytes=1 << 20)
    await b.sync_index()
    assert net.requests == 2 and b.index.prefixes("liar") == 16  # first contact, then one that did not move
    await b.sync_index()
    assert net.requests == 3, "each later pass: one request, not INDEX_ROUNDS"
    b.close()


def test_the_index_total_bound_holds_across_peers() -> None:
    index = KeyIndex(max_peers=8, max_prefixes=100, max_total=150)
    index.learn("p", b"E" * 8, 1, [i.to_bytes(8, "big") for i in range(100)])
    index.learn("q", b"E" * 8, 1, [i.to_bytes(8, "big") for i in range(100, 160)])  # past the total: q dropped
    assert index.total == 100 and index.prefixes("q") == 0 and not index.behind("q", 99)
    index.retain({"q"})
    assert index.total == 0 and index.peers() == ["q"]


async def test_an_entry_that_cannot_be_encoded_spoils_nothing_else(tmp_path: Path) -> None:
    """DAG-CBOR refuses NaN: that one entry is not kept; the batch it was staged with is, and
    close() still closes (it used to raise out of the node's shutdown)."""
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 22)
    bad, good = await cache.key_for(Spec("nan stats")), await cache.key_for(Spec("fine"))
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await cache.put(bad, _result(1)[0], {"ms": float("nan")})
        await cache.put(good, *_result(2)[:2])
        with trio.fail_after(30):
            while cache.info()["staged"]:
                await trio.sleep(0.01)
        assert cache.store.has(good) and not cache.store.has(bad) and cache.stored == 1
        await cache.put(bad, _result(1)[0], {"ms": float("inf")})
        nursery.cancel_scope.cancel()
    cache.close()  # the staged bad entry is dropped here, without an exception
    assert cache.stored == 1
