"""The pieces of a pull that need no network (p2p.content.exchange): the server's block index,
the block store, dag-pb decoding, assembly and its failures (a damaged block, a full disk)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p.content import dir_cid, iter_blocks
from p2p.content.exchange import (
    BlockStore,
    PullError,
    _read,
    build_index,
    decode_node,
    install,
    verify,
)
from p2p.content.unixfs import CHUNK_SIZE, to_cid
from p2p.protocols.content import Want, decode_block, decode_want, encode_block, encode_want
from p2p.protocols.wire import WireError

SIZES = [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17]


def _folder(root: Path, sizes: list[int]) -> Path:
    root.mkdir(parents=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, n in enumerate(sizes):
        where = root if i % 3 == 0 else root / "sub" if i % 3 == 1 else root / "sub" / "deeper"
        (where / f"f{i}.bin").write_bytes(os.urandom(n))
    return root


def _store_all(folder: Path, store: BlockStore) -> bytes:
    root, index = build_index(folder)
    for cid, loc in index.items():
        block = _read(loc)
        assert verify(cid, block)
        store.put(cid, block)
    return root


def test_index_holds_every_block_of_the_dag_and_install_rebuilds_the_same_folder(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", SIZES)
    root, index = build_index(src)
    assert to_cid(root) == dir_cid(src)[0]
    assert set(index) == {c for c, _ in iter_blocks(src)}
    store = BlockStore(tmp_path / "blocks")
    _store_all(src, store)
    install(store, root, tmp_path / "staging", tmp_path / "out" / "org" / "model")
    assert dir_cid(tmp_path / "out" / "org" / "model") == dir_cid(src)
    assert not (tmp_path / "staging").exists()
    # installing again over the same files is a no-op; over other files it is refused
    install(store, root, tmp_path / "staging", tmp_path / "out" / "org" / "model")
    other = _folder(tmp_path / "other", [5])
    with pytest.raises(PullError, match="already holds other files"):
        install(store, root, tmp_path / "staging", other)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 2 * CHUNK_SIZE + 3), min_size=1, max_size=5))
def test_decoded_directory_links_are_the_files(tmp_path_factory: pytest.TempPathFactory, sizes: list[int]) -> None:
    src = _folder(tmp_path_factory.mktemp("h") / "src", sizes)
    root, index = build_index(src)
    node = decode_node(index[root])  # type: ignore[arg-type]
    names = sorted(p.name for p in src.iterdir())
    assert node.kind == 1 and [n for _, n, _ in node.links] == names


def test_block_store_drops_a_damaged_block_and_install_refuses_to_use_it(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", [3 * CHUNK_SIZE + 5])
    store = BlockStore(tmp_path / "blocks")
    root = _store_all(src, store)
    leaf = next(p for p in (tmp_path / "blocks").iterdir() if bytes.fromhex(p.name)[1] == 0x55)
    data = bytearray(leaf.read_bytes())
    data[0] ^= 1
    leaf.write_bytes(bytes(data))
    with pytest.raises(PullError, match="missing or damaged"):
        install(store, root, tmp_path / "staging", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "staging").exists()
    assert not leaf.exists(), "a damaged block stays in the store"


def test_verify_refuses_wrong_bytes_and_unsupported_cids() -> None:
    from p2p.content.unixfs import raw_cid

    cid = raw_cid(b"hello")
    assert verify(cid, b"hello") and not verify(cid, b"hellp")
    assert not verify(b"\x01\x55\x13\x20" + cid[4:], b"hello"), "another hash function is not ours to check"


def test_wire_round_trips_and_refuses_garbage() -> None:
    want = Want(b"\x01\x70" + b"r" * 34, [b"\x01\x55" + b"x" * 34])
    assert decode_want(encode_want(want)) == want
    assert decode_block(encode_block(want.cids[0], b"data")) == (want.cids[0], b"data")
    assert decode_block(encode_block(want.cids[0], None)) == (want.cids[0], None)
    for bad in (b"", b"\xff", encode_want(want)[:-3]):
        with pytest.raises(WireError):
            decode_want(bad)
    for bad in (b"\x00", b"\x02\x24" + b"x" * 40, b"\x01\x02ab" + b"extra"):
        with pytest.raises(WireError):
            decode_block(bad)


def run_with_file_limit(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a child that may write files of at most 1 MiB (RLIMIT_FSIZE, SIGXFSZ
    ignored, so a write fails with EFBIG as a full quota would); it exits 3 on DiskFullError,
    printing ``DISKFULL`` and the message."""
    code = textwrap.dedent("""
        import os, resource, signal, sys
        from pathlib import Path
        from p2p.content.exchange import DiskFullError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
    """) + textwrap.indent(textwrap.dedent(body), "    ") + textwrap.dedent("""
        except DiskFullError as exc:
            print("DISKFULL", exc)
            sys.exit(3)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])


def test_a_full_disk_during_install_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    """A real write failure: the child process may write files of at most 1 MiB (RLIMIT_FSIZE,
    SIGXFSZ ignored, so write() fails with EFBIG as a full quota would)."""
    src = _folder(tmp_path / "src", [5 * CHUNK_SIZE + 3, 10])
    store = BlockStore(tmp_path / "blocks")
    root = _store_all(src, store)
    done = run_with_file_limit(f"""
        from p2p.content.exchange import BlockStore, install
        install(BlockStore(Path({str(tmp_path / 'blocks')!r})), bytes.fromhex({root.hex()!r}),
                Path({str(tmp_path / 'staging')!r}), Path({str(tmp_path / 'out')!r}))
    """)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "disk is full" in done.stdout
    assert not (tmp_path / "staging").exists() and not (tmp_path / "out").exists()


# --- over real libp2p hosts (two in this process, loopback; a small folder) -----------------


async def _hosts(tmp_path: Path):  # type: ignore[no-untyped-def]
    from contextlib import AsyncExitStack

    from p2p.config import NetworkConfig
    from p2p.identity import Identity
    from p2p.net import open_host

    cfg = NetworkConfig(enabled=True, mdns=False, listen=["/ip4/127.0.0.1/tcp/0"])
    stack = AsyncExitStack()
    hosts = []
    for name in ("a", "b", "c"):
        ident = Identity.load_or_create(tmp_path / f"id-{name}")
        hosts.append(await stack.enter_async_context(open_host(ident.key_pair, cfg)))
    return stack, hosts


async def test_fetch_describe_and_a_tampering_server_over_libp2p(tmp_path: Path) -> None:
    from p2p.content.exchange import ContentServer, describe_remote, fetch_dag
    from p2p.protocols.content import CONTENT_PROTOCOL

    class Tampering(ContentServer):
        async def blocks(self, want: Want) -> list[bytes | None]:
            return [None if b is None else b[:-1] + bytes([b[-1] ^ 1]) if b else b"\x00" for b in await super().blocks(want)]

    src = _folder(tmp_path / "src", SIZES)
    cid = str(dir_cid(src)[0])
    root = bytes(dir_cid(src)[0])
    stack, (good, bad, client) = await _hosts(tmp_path)
    async with stack:
        good.set_stream_handler(CONTENT_PROTOCOL, ContentServer(lambda: {cid: src}).handle)
        bad.set_stream_handler(CONTENT_PROTOCOL, Tampering(lambda: {cid: src}).handle)
        g = await client.connect(good.listen_addrs()[0])
        b = await client.connect(bad.listen_addrs()[0])

        files = await describe_remote(client, root, g)
        assert files == dir_cid(src)[1]
        with pytest.raises(PullError, match="wrong or no block"):
            await describe_remote(client, root, b)

        store = BlockStore(tmp_path / "blocks")
        stats, cids = await fetch_dag(client, root, [b, g], store, batch=2)
        assert stats.bad_blocks.get(b, 0) >= 1 and b in stats.dropped_peers and stats.fetched_from.get(b, 0) == 0
        assert stats.blocks_fetched == stats.blocks_total == len(cids)
        install(store, root, tmp_path / "staging", tmp_path / "out")
        assert str(dir_cid(tmp_path / "out")[0]) == cid

        # only the tamperer: the pull fails, and says why
        with pytest.raises(PullError, match="root block"):
            await fetch_dag(client, root, [b], BlockStore(tmp_path / "blocks2"))
        # a root the server does not serve: not here
        other = bytes(dir_cid(_folder(tmp_path / "other", [7]))[0])
        with pytest.raises(PullError, match="no peer gave the root block"):
            await fetch_dag(client, other, [g], BlockStore(tmp_path / "blocks3"))
        # over max_model_bytes: refused once the root is known, nothing else fetched
        with pytest.raises(PullError, match="max_model_bytes"):
            await fetch_dag(client, root, [g], BlockStore(tmp_path / "blocks4"), max_bytes=1000)
        assert not [p for p in (tmp_path / "blocks4").iterdir()]


async def test_a_folder_that_repeats_one_sub_folder_under_many_names_is_refused(tmp_path: Path) -> None:
    """Three small blocks: a folder linking one sub-folder under 200 names, three levels deep
    (8 million paths). Listing it stops at MAX_LISTED_ENTRIES with a clear error instead of
    multiplying entries on the event loop."""
    from p2p.content.exchange import MAX_LISTED_ENTRIES, ContentServer, describe_remote
    from p2p.content.unixfs import encode_link, encode_node, pb_cid
    from p2p.protocols.content import CONTENT_PROTOCOL

    directory = b"\x08\x01"
    blocks: dict[bytes, bytes] = {}
    child = encode_node([], directory)
    blocks[pb_cid(child)] = child
    for _ in range(3):
        links = [encode_link(pb_cid(child), f"a{i:03d}".encode(), len(child)) for i in range(200)]
        child = encode_node(links, directory)
        blocks[pb_cid(child)] = child
    root = pb_cid(child)

    class Crafted(ContentServer):
        async def blocks(self, want: Want) -> list[bytes | None]:
            return [blocks.get(c) for c in want.cids]

    stack, (server, _, client) = await _hosts(tmp_path)
    async with stack:
        server.set_stream_handler(CONTENT_PROTOCOL, Crafted(lambda: {}).handle)
        peer = await client.connect(server.listen_addrs()[0])
        with pytest.raises(PullError, match=f"over {MAX_LISTED_ENTRIES} entries"):
            await describe_remote(client, root, peer)


def test_a_file_that_links_the_same_leaf_many_times_cannot_write_past_its_declared_size(tmp_path: Path) -> None:
    """Fetching costs one block per distinct CID, but assembly writes every link: a file node
    linking one 256 KiB leaf 174 times, twice over, would write 7.6 GB from two blocks. Install
    stops at the size the pull declared and leaves nothing."""
    from p2p.content.unixfs import encode_link, encode_node, file_data, pb_cid, raw_cid

    store = BlockStore(tmp_path / "blocks")
    leaf = os.urandom(CHUNK_SIZE)
    store.put(raw_cid(leaf), leaf)
    inner = encode_node([encode_link(raw_cid(leaf), b"", len(leaf))] * 174, file_data(174 * len(leaf), [len(leaf)] * 174))
    store.put(pb_cid(inner), inner)
    top = encode_node([encode_link(pb_cid(inner), b"", len(inner))] * 174, file_data(174 * 174 * len(leaf), [174 * len(leaf)] * 174))
    store.put(pb_cid(top), top)
    folder = encode_node([encode_link(pb_cid(top), b"big.bin", 10_000)], b"\x08\x01")
    store.put(pb_cid(folder), folder)
    with pytest.raises(PullError, match="larger than its root block declared"):
        install(store, pb_cid(folder), tmp_path / "staging", tmp_path / "out", max_bytes=10_000_000)
    assert not (tmp_path / "staging").exists() and not (tmp_path / "out").exists()


def test_advertised_cids_are_compared_in_one_spelling() -> None:
    """pull_model reads peers' adverts: one CID in another spelling is the same CID, and an
    advert that is not a CID is skipped rather than picked (it sorted first by string order)."""
    from p2p.node import _canonical_cid

    c = "bafybeic234pczxcoymcd45btdcudyiu3pv65px67kzjqhvawjkmhq65o6m"
    assert _canonical_cid(c) == c
    assert _canonical_cid(c.upper()) == c  # multibase B: base32 upper case
    assert _canonical_cid(f"  {c} ") == c
    for junk in ("0garbage", "", "bafy", "Qm" + "1" * 44):
        assert _canonical_cid(junk) is None, junk


async def test_a_served_file_changed_on_disk_is_not_sent_as_its_cid(tmp_path: Path) -> None:
    """The server indexes a model once; a file rewritten since must not go out under the old
    CIDs (peers would drop this honest server as a tamperer): those blocks are withheld and
    the index is rebuilt (and checked against the root) on the next want."""
    from p2p.content.exchange import ContentServer

    src = _folder(tmp_path / "src", SIZES)
    root, index = build_index(src)
    cid = str(to_cid(root))
    server = ContentServer(lambda: {cid: src})
    cids = list(index)
    first = await server.blocks(Want(root, cids))
    assert all(b is not None and verify(c, b) for c, b in zip(cids, first))
    victim = max((p for p in src.rglob("*.bin")), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = await server.blocks(Want(root, cids))
    assert any(b is None for b in again), "a changed block went out"
    assert all(b is None or verify(c, b) for c, b in zip(cids, again))
    assert await server.blocks(Want(root, cids[:1])) == [None]  # re-indexed: the root no longer matches
