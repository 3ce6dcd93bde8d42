"""A pull's leaves land straight in their files (p2p.content.exchange.Staging): the folder comes
out as the DAG says (repeated chunks and identical files included), a resumed pull re-hashes what
is staged and fetches only what is missing or torn, and a malformed or hostile DAG is refused
before it writes past what its root declared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2p.content import dir_cid
from p2p.content.exchange import (
    MAX_STAGED_ENTRIES,
    OPEN_FILES,
    BlockStore,
    ContentServer,
    PullError,
    Staging,
    decode_node,
    fetch_dag,
    install_staged,
)
from p2p.content.unixfs import CHUNK_SIZE, encode_link, encode_node, file_data, pb_cid, raw_cid
from p2p.protocols.content import CONTENT_PROTOCOL
from tests.content.test_exchange import _hosts, run_with_file_limit


def _folder(root: Path) -> Path:
    """Files that share blocks: a file of repeated chunks, two identical files, an empty file,
    a one-leaf file, and a file whose last chunk is short."""
    (root / "sub").mkdir(parents=True)
    zeros = bytes(3 * CHUNK_SIZE + 11)
    (root / "zeros.bin").write_bytes(zeros)  # three identical leaves and a short one
    same = os.urandom(2 * CHUNK_SIZE + 5)
    (root / "a.bin").write_bytes(same)
    (root / "sub" / "a-copy.bin").write_bytes(same)  # the same file node under two names
    (root / "sub" / "empty").write_bytes(b"")
    (root / "small.json").write_bytes(b'{"x": 1}')
    (root / "sub" / "big.bin").write_bytes(os.urandom(5 * CHUNK_SIZE + 3))
    return root


async def test_a_staged_pull_lands_the_folder_once_and_resumes_what_is_missing_or_torn(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    cid = dir_cid(src)[0]
    root = bytes(cid)
    stack, (server, _, client) = await _hosts(tmp_path)
    async with stack:
        server.set_stream_handler(CONTENT_PROTOCOL, ContentServer(lambda: {str(cid): src}).handle)
        peer = await client.connect(server.listen_addrs()[0])

        store, staging = BlockStore(tmp_path / "blocks"), tmp_path / "staging"
        stats, cids = await fetch_dag(client, root, [peer], store, staging=staging, batch=3)
        assert stats.blocks_reused == 0 and stats.blocks_fetched == stats.blocks_total == len(cids)
        leaves = [p for p in (tmp_path / "blocks").iterdir() if bytes.fromhex(p.name)[1] == 0x55]
        assert leaves == [], "leaves went to the block store as well as to the files"
        assert dir_cid(staging)[0] == cid  # the staged folder is the model, byte for byte

        # a kill -9 midway, as a resumed pull finds it: a torn region, a file cut short, an
        # inner node never stored
        big = staging / "sub" / "big.bin"
        with open(big, "r+b") as f:
            f.seek(CHUNK_SIZE + 5)
            f.write(b"\xff")
        with open(staging / "a.bin", "r+b") as f:
            f.truncate(CHUNK_SIZE)
        inner = next(p for p in (tmp_path / "blocks").iterdir()
                     if bytes.fromhex(p.name)[1] == 0x70 and decode_node(p.read_bytes()).kind == 2)
        inner.unlink()
        (staging / "left-over.txt").write_text("not the model's")  # what a staging folder may hold
        (staging / "sub" / "junk").mkdir()
        again, _ = await fetch_dag(client, root, [peer], store, staging=staging)
        assert 0 < again.blocks_fetched < again.blocks_total, again
        assert again.blocks_reused + again.blocks_fetched == again.blocks_total
        assert again.blocks_fetched <= 6, again  # the torn leaf, a.bin's lost tail, the inner node and what it names

        final = tmp_path / "models" / "org" / "m"
        install_staged(staging, root, final)
        assert dir_cid(final)[0] == cid and not staging.exists()
        assert (final / "sub" / "a-copy.bin").read_bytes() == (src / "a.bin").read_bytes()
        assert (final / "sub" / "empty").read_bytes() == b""
        install_staged(staging, root, final)  # installing again over the same files: nothing to do
        with pytest.raises(PullError, match="already holds other files"):
            install_staged(staging, root, src / "sub")


def test_a_leaf_that_is_not_the_size_its_file_node_declares_is_refused(tmp_path: Path) -> None:
    leaf = os.urandom(20)
    top = encode_node([encode_link(raw_cid(leaf), b"", len(leaf))], file_data(10, [10]))  # says 10 bytes
    folder = encode_node([encode_link(pb_cid(top), b"f.bin", len(top) + 20)], b"\x08\x01")
    st = Staging(tmp_path / "staging", 1000)
    assert st.start(pb_cid(folder), decode_node(folder)) == [pb_cid(top)]
    assert st.put(pb_cid(top), top) == [raw_cid(leaf)]
    with pytest.raises(PullError, match="malformed.*holds 20 bytes where its file node declares 10"):
        st.put(raw_cid(leaf), leaf)
    st.close()


def test_a_file_that_links_one_leaf_many_times_cannot_write_past_its_declared_size(tmp_path: Path) -> None:
    """Two small nodes that would write 7.6 GB of one leaf: refused as soon as the file's node
    declares a size over what the pull's root declared, with nothing written."""
    leaf = os.urandom(CHUNK_SIZE)
    inner = encode_node([encode_link(raw_cid(leaf), b"", len(leaf))] * 174, file_data(174 * len(leaf), [len(leaf)] * 174))
    top = encode_node([encode_link(pb_cid(inner), b"", len(inner))] * 174,
                      file_data(174 * 174 * len(leaf), [174 * len(leaf)] * 174))
    folder = encode_node([encode_link(pb_cid(top), b"big.bin", 10_000)], b"\x08\x01")
    _refused(tmp_path / "staging", 10_000_000, folder, top, "larger than its root block declared")
    assert sum(p.stat().st_size for p in (tmp_path / "staging").rglob("*") if p.is_file()) == 0


def test_a_folder_that_repeats_one_sub_folder_under_many_names_is_refused(tmp_path: Path) -> None:
    directory = b"\x08\x01"
    child = encode_node([], directory)
    nodes = [child]
    for _ in range(2):
        child = encode_node([encode_link(pb_cid(child), f"a{i:03d}".encode(), len(child)) for i in range(200)], directory)
        nodes.append(child)
    st = Staging(tmp_path / "staging", 1 << 30)
    top = nodes[-1]
    wanted = st.start(pb_cid(top), decode_node(top))
    with pytest.raises(PullError, match=f"over {MAX_STAGED_ENTRIES} entries"):
        for c in wanted:
            st.put(c, nodes[-2])
    st.close()


def test_a_full_disk_while_staging_is_a_clear_error(tmp_path: Path) -> None:
    """A real write failure (``run_with_file_limit``: files of at most 1 MiB); fetch_dag then
    removes the staging folder (``DiskFullError``)."""
    done = run_with_file_limit(f"""
        from p2p.content.exchange import Staging, decode_node
        from p2p.content.unixfs import CHUNK_SIZE, encode_link, encode_node, file_data, pb_cid, raw_cid
        leaves = [os.urandom(CHUNK_SIZE) for _ in range(6)]
        top = encode_node([encode_link(raw_cid(b), b"", len(b)) for b in leaves], file_data(6 * CHUNK_SIZE, [CHUNK_SIZE] * 6))
        folder = encode_node([encode_link(pb_cid(top), b"big.bin", len(top) + 6 * CHUNK_SIZE)], b"\\x08\\x01")
        st = Staging(Path({str(tmp_path / 'staging')!r}), 10 * CHUNK_SIZE)
        st.start(pb_cid(folder), decode_node(folder))
        st.put(pb_cid(top), top)
        for b in leaves:
            st.put(raw_cid(b), b)
    """)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "disk is full" in done.stdout


def _refused(where: Path, budget: int, folder: bytes, node: bytes, match: str) -> None:
    """A staged pull of ``folder`` refuses its child ``node`` (with ``match``), and closes."""
    st = Staging(where, budget)
    st.start(pb_cid(folder), decode_node(folder))
    with pytest.raises(PullError, match=match):
        st.put(pb_cid(node), node)
    st.close()


def _file_of(leaf: bytes, k: int, size: int) -> tuple[bytes, bytes]:
    node = encode_node([encode_link(raw_cid(leaf), b"", len(leaf))] * k, file_data(k * size, [size] * k))
    return pb_cid(node), node


def test_one_cid_linked_at_many_places_is_refused_before_it_costs_memory(tmp_path: Path) -> None:
    """Two small nodes can name a leaf at millions of places (1-byte or 0-byte block sizes):
    refused once the places outnumber what a folder of the declared size holds, or at once for
    a zero size, before any place is written."""
    leaf = b"A"
    inner, inner_b = _file_of(leaf, 2000, 1)
    top = encode_node([encode_link(inner, b"", len(inner_b))] * 2000, file_data(2000 * 2000, [2000] * 2000))
    folder = encode_node([encode_link(pb_cid(top), b"x", 2000 * 2000 + 1000)], b"\x08\x01")
    st = Staging(tmp_path / "s1", 2000 * 2000 + 1000)
    st.start(pb_cid(folder), decode_node(folder))
    st.put(pb_cid(top), top)
    with pytest.raises(PullError, match="at over .* places"):
        st.put(inner, inner_b)
    st.close()
    zero = encode_node([encode_link(raw_cid(b""), b"", 0)] * 2000, file_data(0, [0] * 2000))
    _refused(tmp_path / "s2", 1000, encode_node([encode_link(pb_cid(zero), b"x", 100)], b"\x08\x01"), zero, "block sizes")


def test_a_folder_that_names_one_entry_twice_is_refused(tmp_path: Path) -> None:
    a, b = b"one", b"two"
    folder = encode_node([encode_link(raw_cid(a), b"x", 3), encode_link(raw_cid(b), b"x", 3)], b"\x08\x01")
    st = Staging(tmp_path / "s", 1000)
    with pytest.raises(PullError, match="one name twice"):
        st.start(pb_cid(folder), decode_node(folder))
    st.close()


def test_a_folder_of_many_files_keeps_few_open(tmp_path: Path) -> None:
    leaves = [os.urandom(100) for _ in range(3 * OPEN_FILES)]
    folder = encode_node([encode_link(raw_cid(b), f"f{i:03d}".encode(), len(b)) for i, b in enumerate(leaves)],
                         b"\x08\x01")
    st = Staging(tmp_path / "s", 10_000)
    st.start(pb_cid(folder), decode_node(folder))
    for b in leaves:
        st.put(raw_cid(b), b)
        assert len(st._fds) <= OPEN_FILES
    st.sync()
    assert [(tmp_path / "s" / f"f{i:03d}").read_bytes() for i in range(len(leaves))] == leaves
