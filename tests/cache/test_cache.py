"""ResultCache over a real SQLite file: round trip, authentication failures dropped and counted
(tampered bytes, an entry moved under another key), no plaintext on disk, the in-flight map."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import trio

from p2p.cache import ResultCache
from p2p.cache.cache import STORE_FILE
from p2p.scheduler.results import pack_result

NET_KEY = b"\x07" * 32
TEXT = "the quick brown fox whose embedding is secret"


def _result(seed: int = 1) -> tuple[dict, dict, bytes]:
    emb = np.random.default_rng(seed).standard_normal(384).astype("<f4")
    packed = pack_result({"embedding": emb.tolist(), "label": "confidential-label"})
    return packed, {"ms": 12.5, "backend": "onnx", "device": "cpu", "task": "embed"}, emb.tobytes()


class Spec:
    def __init__(self, text: str, model: str = "m", model_cid: str | None = "bafyfake") -> None:
        self.input, self.model, self.model_cid, self.task, self.params = text, model, model_cid, None, {"top_k": 3}


def _raw_files(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith(STORE_FILE))


async def test_round_trip_and_the_original_stats(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    key = await cache.key_for(Spec(TEXT))
    packed, stats, _ = _result()
    assert await cache.get(key) is None and cache.misses == 1
    assert await cache.put(key, packed, stats)
    entry = await cache.get(key)
    assert entry is not None and entry.result == packed and entry.stats == stats and entry.source == "local"
    assert cache.hits == 1 and cache.info()["entries"] == 1
    cache.close()
    again = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)  # survives a restart
    assert (await again.get(key)).result == packed
    again.close()


async def test_files_on_disk_hold_no_plaintext(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    floats = []
    for i in range(20):
        spec = Spec(f"{TEXT} #{i}")
        packed, stats, raw = _result(i)
        floats.append(raw)
        await cache.put(await cache.key_for(spec), packed, stats)
    disk = _raw_files(tmp_path)
    assert len(disk) > 20 * 1500  # the entries are there (sealed), in the file or its WAL
    assert TEXT.encode() not in disk and b"confidential-label" not in disk and b"onnx" not in disk
    for raw in floats:
        assert raw not in disk and raw[:64] not in disk and raw[-64:] not in disk
    cache.close()


async def test_a_tampered_entry_is_dropped_counted_and_never_returned(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    key = await cache.key_for(Spec(TEXT))
    packed, stats, _ = _result()
    await cache.put(key, packed, stats)
    cache.close()
    db = sqlite3.connect(tmp_path / STORE_FILE)
    (sealed,) = db.execute("SELECT sealed FROM entries WHERE key = ?", (key,)).fetchone()
    flipped = bytearray(sealed)
    flipped[len(flipped) // 2] ^= 0x01
    db.execute("UPDATE entries SET sealed = ? WHERE key = ?", (bytes(flipped), key))
    db.commit()
    db.close()
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    assert await cache.get(key) is None
    assert cache.auth_failures == 1 and cache.info()["auth_failures"] == 1 and cache.info()["entries"] == 0
    assert await cache.get(key) is None and cache.auth_failures == 1  # dropped: not failing again
    cache.close()


async def test_an_entry_moved_under_another_key_does_not_open(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    k1, k2 = await cache.key_for(Spec("one")), await cache.key_for(Spec("two"))
    packed, stats, _ = _result()
    await cache.put(k1, packed, stats)
    sealed = cache.store.get(k1)
    cache.store.put(k2, sealed)  # a disk (or a peer) swapping entries between keys
    assert await cache.get(k2) is None and cache.auth_failures == 1
    assert (await cache.get(k1)).result == packed
    cache.close()


async def test_another_network_key_reads_nothing(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    key = await cache.key_for(Spec(TEXT))
    await cache.put(key, *_result()[:2])
    cache.close()
    other = ResultCache.open(tmp_path, b"\x08" * 32, max_bytes=1 << 20)
    assert await other.key_for(Spec(TEXT)) != key
    assert other.info()["entries"] == 0 and await other.get(key) is None and other.auth_failures == 0
    other.close()


async def test_an_open_network_cache_stays_local(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, None, max_bytes=1 << 20)
    await cache.put(await cache.key_for(Spec(TEXT)), *_result()[:2])
    assert not cache.shared and cache.advertised_entries() == 0
    assert cache.attach(object(), lambda: [], max_frame_bytes=1 << 20) is None  # no server, no asking
    assert await cache.get_remote(b"\x00" * 32) is None
    cache.close()


async def test_the_same_key_is_computed_once_at_a_time(tmp_path: Path) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    key = await cache.key_for(Spec(TEXT))
    runs: list[str] = []

    async def task(name: str) -> None:
        async with cache.computing(key):
            if await cache.get(key) is None:
                runs.append(name)
                await trio.sleep(0.05)  # the inference: the others wait for it, not run it too
                await cache.put(key, *_result()[:2])

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(task, f"t{i}")
    assert len(runs) == 1 and cache.hits == 4 and cache.misses == 1 and cache.in_flight == 0
    cache.close()


@pytest.mark.parametrize("max_bytes", [4096, 20_000])
async def test_lru_keeps_the_cache_within_max_bytes(tmp_path: Path, max_bytes: int) -> None:
    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=max_bytes)
    keys = []
    for i in range(30):
        keys.append(await cache.key_for(Spec(f"{TEXT} {i}")))
        await cache.put(keys[-1], *_result(i)[:2])
        assert cache.info()["bytes"] <= max_bytes
    assert cache.info()["evictions"] > 0
    assert await cache.get(keys[-1]) is not None and await cache.get(keys[0]) is None
    cache.close()


class ForgingNet:
    """A network whose one peer claims (in its key index) to hold ``claims`` and answers every
    lookup with a forged entry (a member's real entry for another key: well-formed, sealed
    under the right key, for the wrong request)."""

    def __init__(self, forged: bytes, claims: list[bytes]) -> None:
        self.forged = forged
        self.claims = claims
        self.asked: list[str] = []

    async def request(self, peer: str, protocol: str, payload: bytes, timeout: float) -> bytes:
        from p2p.protocols.cache import decode_get, encode_got, encode_keys, request_kind

        if request_kind(payload) == "since":
            return encode_keys(b"\x01" * 8, len(self.claims), False, [k[:8] for k in self.claims])
        self.asked.append(peer)
        return encode_got([self.forged for _ in decode_get(payload)])


async def test_a_peer_that_sent_a_forged_entry_is_noted_and_not_asked_again(tmp_path: Path) -> None:
    from p2p.cache.remote import PeerOffer

    cache = ResultCache.open(tmp_path, NET_KEY, max_bytes=1 << 20)
    k1, k2, k3 = [await cache.key_for(Spec(t)) for t in ("one", "two", "three")]
    await cache.put(k1, *_result()[:2])
    net = ForgingNet(cache.store.get(k1), claims=[k2])
    cache.attach(net, lambda: [PeerOffer("forger", 10, seq=1)], max_frame_bytes=1 << 20)
    await cache.sync_index()
    assert await cache.get(k3) is None and net.asked == [], "a key no peer holds is asked of nobody"
    assert await cache.get(k2) is None
    assert net.asked == ["forger"] and cache.auth_failures == 1 and cache.bad_peers == {"forger": 1}
    assert not cache.store.has(k2) and cache.remote_hits == 0 and cache.misses == 2
    assert await cache.get(k2) is None and net.asked == ["forger"]  # not asked again
    cache.close()
