"""MerkleClock: append, merge, orphans, persistence, blocks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dag_cbor
import pytest
from multiformats import CID, multihash

from p2p.clock import InvalidBlockError, MerkleClock, block_cid, create_event
from p2p.config import ClockConfig
from tests.clock.conftest import IDENTITIES

A, B, C = IDENTITIES[0], IDENTITIES[1], IDENTITIES[2]


def _open(path: Path, ident=A, **kw) -> MerkleClock:  # type: ignore[no-untyped-def]
    return MerkleClock.open(path, ident, **kw)


def assert_causal(events: list) -> None:  # type: ignore[type-arg]
    seen: dict[CID, int] = {}
    for ev in events:
        assert all(p in seen for p in ev.parents)
        assert ev.height == (1 + max(seen[p] for p in ev.parents) if ev.parents else 0)
        seen[ev.cid] = ev.height


def test_empty_clock(clock: MerkleClock) -> None:
    assert clock.heads() == ()
    assert len(clock) == 0
    assert clock.get_hash() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert list(clock.events()) == []
    assert clock.missing() == set()


def test_append_chains_on_heads(clock: MerkleClock) -> None:
    e1 = clock.append([{"op": "a"}])
    e2 = clock.append([{"op": "b"}, {"op": "c", "x": 1}])
    assert (e1.seq, e2.seq) == (1, 2)
    assert e2.parents == (e1.cid,)
    assert (e1.height, e2.height) == (0, 1)
    assert clock.heads() == (e2.cid,)
    assert [e.cid for e in clock.events()] == [e1.cid, e2.cid]
    assert clock.has(e1.cid) and clock.get_block(e2.cid) == e2.data
    assert list(clock.events()) == [e1, e2]
    assert len(clock) == 2


def test_append_limits(tmp_path: Path) -> None:
    clock = _open(tmp_path / "c.db", config=ClockConfig(max_block_bytes=2048, max_ops_per_event=2))
    with pytest.raises(ValueError):
        clock.append([])
    with pytest.raises(ValueError):
        clock.append([{"op": "x"}] * 3)
    with pytest.raises(ValueError):
        clock.append([{"op": "x", "b": b"\0" * 4096}])
    with pytest.raises(ValueError):
        clock.append([{"no": "op"}])
    with pytest.raises(ValueError):
        clock.append([{"op": "x", "v": {1, 2}}])
    assert len(clock) == 0 and clock.heads() == ()
    ev = clock.append([{"op": "x"}, {"op": "y"}])
    assert ev.seq == 1  # failed appends did not consume a seq
    clock.close()


def test_concurrent_heads_and_merge(tmp_path: Path) -> None:
    a, b = _open(tmp_path / "a.db", A), _open(tmp_path / "b.db", B)
    a1 = a.append([{"op": "a"}])
    b1 = b.append([{"op": "b"}])
    assert [e.cid for e in a.update(b)] == [b1.cid]
    assert a.heads() == tuple(sorted([a1.cid, b1.cid], key=bytes))
    merged = a.append([{"op": "m"}])
    assert set(merged.parents) == {a1.cid, b1.cid} and merged.height == 1
    assert [e.cid for e in b.update(a)] == [a1.cid, merged.cid]
    assert a.heads() == b.heads() == (merged.cid,)
    assert a.get_hash() == b.get_hash()
    assert a.update(b) == [] and b.update(a) == []
    a.close(), b.close()


def test_orphans_wait_for_parents(tmp_path: Path) -> None:
    src = _open(tmp_path / "src.db", A)
    evs = [src.append([{"op": "x", "i": i}]) for i in range(5)]
    dst = _open(tmp_path / "dst.db", B)
    r = dst.add_blocks([(evs[4].cid, evs[4].data), (evs[3].cid, evs[3].data)])
    assert r.applied == [] and r.rejected == []
    assert r.missing == {evs[2].cid} == dst.missing()
    assert not dst.has(evs[4].cid) and dst.heads() == () and len(dst) == 0
    r = dst.add_blocks([(evs[1].cid, evs[1].data)])
    assert r.missing == {evs[0].cid, evs[2].cid}
    r = dst.add_blocks([(evs[2].cid, evs[2].data), (evs[0].cid, evs[0].data)])
    assert [e.cid for e in r.applied] == [e.cid for e in evs]
    assert [e.height for e in r.applied] == [0, 1, 2, 3, 4]
    assert r.missing == set() == dst.missing()
    assert dst.get_hash() == src.get_hash()
    src.close(), dst.close()


def test_orphan_pool_is_bounded(tmp_path: Path) -> None:
    src = _open(tmp_path / "src.db", A)
    evs = [src.append([{"op": "x", "i": i}]) for i in range(6)]
    dst = _open(tmp_path / "dst.db", B, max_orphans=2)
    dst.add_blocks([(e.cid, e.data) for e in reversed(evs[1:])])
    assert dst.orphan_count() == 2  # the oldest arrivals were dropped, to be refetched
    r = dst.add_blocks([(e.cid, e.data) for e in evs])  # a refetch of everything heals it
    assert len(dst) == 6 and dst.get_hash() == src.get_hash()
    assert_causal(r.applied)
    src.close(), dst.close()


def test_invalid_blocks_rejected_and_nothing_stored(tmp_path: Path) -> None:
    src = _open(tmp_path / "src.db", A)
    good = src.append([{"op": "x"}])
    dst = _open(tmp_path / "dst.db", B)
    forged_node = dict(dag_cbor.decode(good.data), author=C.peer_id_str)
    forged = dag_cbor.encode(forged_node)
    garbage = b"\xff\x00garbage"
    blocks = [
        (good.cid, good.data.replace(b"cops", b"cOps")),           # tampered
        (block_cid(b"zzz"), good.data),                              # wrong CID
        (block_cid(forged), forged),                                 # claims another author
        (block_cid(garbage), garbage),                               # garbage CBOR
        ("bafy-not-a-cid", good.data),                               # not a CID at all
    ]
    r = dst.add_blocks(blocks)
    assert r.applied == [] and len(r.rejected) == len(blocks)
    assert len(dst) == 0 and dst.heads() == () and dst.missing() == set()
    for cid, _ in blocks[:4]:
        assert not dst.has(cid)
    big = create_event(A, [], 1, [{"op": "x", "b": b"\0" * 3000}])
    small = _open(tmp_path / "small.db", B, config=ClockConfig(max_block_bytes=2048))
    r = small.add_blocks([(big.cid, big.data)])
    assert len(r.rejected) == 1 and "exceeds" in r.rejected[0][1] and not small.has(big.cid)
    src.close(), dst.close(), small.close()


def test_duplicates_are_noops(tmp_path: Path) -> None:
    src = _open(tmp_path / "src.db", A)
    evs = [src.append([{"op": "x", "i": i}]) for i in range(3)]
    dst = _open(tmp_path / "dst.db", B)
    blocks = [(e.cid, e.data) for e in evs]
    r = dst.add_blocks(blocks + blocks[::-1] + blocks)
    assert len(r.applied) == 3
    assert dst.add_blocks(blocks).applied == []
    assert len(dst) == 3
    src.close(), dst.close()


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    a, b = _open(tmp_path / "a.db", A), _open(tmp_path / "b.db", B)
    for i in range(4):
        a.append([{"op": "a", "i": i}])
        b.append([{"op": "b", "i": i, "blob": os.urandom(100)}])
        if i % 2:
            a.update(b)
    before = (a.heads(), a.get_hash(), list(a.events()), len(a))
    a.close()
    a = _open(tmp_path / "a.db", A)
    assert (a.heads(), a.get_hash(), list(a.events()), len(a)) == before
    nxt = a.append([{"op": "after"}])
    assert nxt.seq == 5 and nxt.parents == before[0]
    a.close(), b.close()


def test_own_seq_recovered_from_peers(tmp_path: Path) -> None:
    """A node that lost its database and re-learns its events from peers continues their seq."""
    a, b = _open(tmp_path / "a.db", A), _open(tmp_path / "b.db", B)
    for _ in range(3):
        a.append([{"op": "x"}])
    b.update(a)
    fresh = _open(tmp_path / "fresh.db", A)
    fresh.update(b)
    assert fresh.append([{"op": "y"}]).seq == 4
    a.close(), b.close(), fresh.close()


def test_put_and_raw_blocks(tmp_path: Path) -> None:
    clock = _open(tmp_path / "c.db", config=ClockConfig(max_block_bytes=4096))
    obj = {"embedding": b"\x01" * 1536, "dims": 384}
    cid = clock.put_block(obj)
    assert cid == CID("base32", 1, "dag-cbor", multihash.digest(dag_cbor.encode(obj), "sha2-256"))
    assert dag_cbor.decode(clock.get_block(cid)) == obj
    assert clock.has(cid) and len(clock) == 0  # a plain block is not an event
    with pytest.raises(ValueError):
        clock.put_block({"x": b"\0" * 5000})
    other = _open(tmp_path / "o.db", B, config=ClockConfig(max_block_bytes=4096))
    other.add_raw_block(cid, clock.get_block(cid))
    assert other.get_block(cid) == clock.get_block(cid)
    raw = b"raw bytes"
    raw_cid = CID("base32", 1, "raw", multihash.digest(raw, "sha2-256"))
    other.add_raw_block(raw_cid, raw)
    assert other.get_block(raw_cid) == raw
    for bad_cid, data in [(raw_cid, b"other"), (block_cid(b"\0" * 5000), b"\0" * 5000),
                          (CID("base32", 1, "raw", multihash.digest(raw, "sha2-512")), raw)]:
        with pytest.raises(InvalidBlockError):
            other.add_raw_block(bad_cid, data)
        assert bad_cid == raw_cid or not other.has(bad_cid)
    assert other.get_block(raw_cid) == raw
    assert other.get_block(block_cid(b"nope")) is None
    clock.close(), other.close()


def test_event_arriving_as_raw_block_is_still_applied(tmp_path: Path) -> None:
    src = _open(tmp_path / "src.db", A)
    e1 = src.append([{"op": "x"}])
    e2 = src.append([{"op": "y"}])
    dst = _open(tmp_path / "dst.db", B)
    dst.add_raw_block(e1.cid, e1.data)  # fetched through the result-block path by mistake
    r = dst.add_blocks([(e2.cid, e2.data)])
    assert [e.cid for e in r.applied] == [e1.cid, e2.cid] and r.missing == set()
    src.close(), dst.close()


_KILL_SCRIPT = """
import os, sys
from pathlib import Path
from p2p.clock import MerkleClock
from p2p.identity import Identity
ident = Identity.load_or_create(Path(sys.argv[1]))
clock = MerkleClock.open(Path(sys.argv[1]) / "clock.db", ident)
for i in range(20):
    ev = clock.append([{"op": "x", "i": i}])
print(ev.cid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_append_survives_kill_9(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)
    assert proc.returncode == -9, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]  # (unconfigured structlog also prints)
    from p2p.identity import Identity
    clock = MerkleClock.open(tmp_path / "clock.db", Identity.load_or_create(tmp_path))
    assert len(clock) == 20 and [str(h) for h in clock.heads()] == [last]
    clock.close()
