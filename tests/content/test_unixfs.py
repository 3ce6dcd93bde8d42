"""UnixFS hashing, the pure parts: chunking, kubo's balanced layout, node bytes, and bad input.

The layout is checked against a transcription of Go's ``balanced.Layout`` (fill a tree of
depth d, then make it the first child of a root of depth d+1), with a small fan-out so that
deep trees are cheap; node bytes are parsed back with py-libp2p's protobuf-generated dag-pb
decoder, an independent parser; files and directories are rebuilt from the blocks yielded.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from libp2p.bitswap.dag_pb import decode_dag_pb

from p2p.content.unixfs import (
    CHUNK_SIZE,
    HAMT_THRESHOLD,
    BalancedBuilder,
    ContentChangedError,
    ContentError,
    DirectoryTooLargeError,
    _varint,
    dir_cid,
    file_cid,
    file_root,
    iter_blocks,
    iter_file_blocks,
    raw_cid,
)

Tree = Any  # a leaf index, or a list of subtrees


def go_balanced(n: int, max_links: int) -> Tree:
    """Go's balanced.Layout over leaves 0..n-1, as nested lists (a transcription, for shape)."""
    pos = 0

    def leaf() -> int:
        nonlocal pos
        pos += 1
        return pos - 1

    def fill(node: list[Tree], depth: int) -> list[Tree]:
        while len(node) < max_links and pos < n:
            node.append(leaf() if depth == 1 else fill([], depth - 1))
        return node

    root: Tree = leaf()
    depth = 1
    while pos < n:
        root = fill([root], depth)
        depth += 1
    return root


def decode_shape(cid: bytes, blocks: dict[bytes, bytes], leaf_ids: dict[bytes, int]) -> Tree:
    if cid in leaf_ids:
        return leaf_ids[cid]
    links, _ = decode_dag_pb(blocks[cid])
    return [decode_shape(link.cid, blocks, leaf_ids) for link in links]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), max_links=st.integers(2, 7))
def test_balanced_builder_builds_gos_tree(n: int, max_links: int) -> None:
    blocks: dict[bytes, bytes] = {}
    builder = BalancedBuilder(max_links=max_links, sink=blocks.__setitem__)
    leaf_ids = {}
    sizes = {}
    for i in range(n):
        cid = raw_cid(i.to_bytes(4, "big"))
        leaf_ids[cid] = i
        sizes[cid] = 1 + i % 5
        builder.add_leaf(cid, sizes[cid])
    root = builder.finish()
    assert decode_shape(root.cid, blocks, leaf_ids) == go_balanced(n, max_links)
    assert root.size == sum(sizes.values())

    def check(cid: bytes) -> tuple[int, int, int]:  # (file bytes, tsize, depth)
        if cid in leaf_ids:
            return sizes[cid], sizes[cid], 0
        block = blocks[cid]
        assert hashlib.sha256(block).digest() == cid[4:] and cid[:4] == bytes.fromhex("01701220")
        links, data = decode_dag_pb(block)
        assert data is not None and data.type == "file" and 1 <= len(links) <= max_links
        kids = [check(link.cid) for link in links]
        assert [link.size for link in links] == [k[1] for k in kids]  # Tsize: cumulative block bytes
        assert data.blocksizes == [k[0] for k in kids] and data.filesize == sum(k[0] for k in kids)
        assert len({k[2] for k in kids}) == 1  # balanced: every leaf at the same depth
        return data.filesize, len(block) + sum(k[1] for k in kids), kids[0][2] + 1

    size, tsize, depth = check(root.cid)
    assert (size, tsize) == (root.size, root.tsize)
    assert max_links ** (depth - 1) < n <= max_links ** depth or (n == 1 and depth == 0)


@given(st.integers(0, 2**64 - 1))
def test_varint_is_protobufs(n: int) -> None:
    assert _varint(n) == _VarintBytes(n)


def rebuild(root: bytes, blocks: dict[bytes, bytes]) -> bytes:
    if root[:2] == b"\x01\x55":
        return blocks[root]
    links, _ = decode_dag_pb(blocks[root])
    return b"".join(rebuild(link.cid, blocks) for link in links)


def check_blocks(pairs: list[tuple[Any, bytes]]) -> dict[bytes, bytes]:
    out = {}
    for cid, block in pairs:
        raw = bytes(cid)
        assert raw[2:4] == b"\x12\x20" and hashlib.sha256(block).digest() == raw[4:]  # every block verifies
        assert raw[1] in (0x55, 0x70)
        out[raw] = block
    return out


EDGE_SIZES = st.one_of(
    st.sampled_from([0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 7]),
    st.integers(0, 4 * CHUNK_SIZE),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=EDGE_SIZES, zeros=st.booleans())
def test_file_blocks_rebuild_the_file(size: int, zeros: bool) -> None:
    data = bytes(size) if zeros else os.urandom(size)  # zeros: equal chunks, the same block twice
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f"
        path.write_bytes(data)
        pairs = list(iter_file_blocks(path))
        root = file_root(path)
        assert bytes(pairs[-1][0]) == root.cid == bytes(file_cid(path))  # the root comes last
    blocks = check_blocks(pairs)
    assert rebuild(root.cid, blocks) == data
    assert root.size == size and root.tsize == sum(len(b) for _, b in pairs)
    leaves = [b for c, b in pairs if bytes(c)[1] == 0x55]
    assert b"".join(leaves) == data and all(len(b) == CHUNK_SIZE for b in leaves[:-1])
    assert (size <= CHUNK_SIZE) == (root.cid[1] == 0x55)  # one chunk (or none): a single raw block


NAMES = st.text(alphabet="aZ._- äß1", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
TREES = st.recursive(
    st.binary(max_size=3 * CHUNK_SIZE // 2).map(lambda b: b[:40] * 2 if len(b) > 40 else b) | st.just(b"x" * (CHUNK_SIZE + 3)),
    lambda kids: st.dictionaries(NAMES, kids, max_size=4),
    max_leaves=8,
)


def write_tree(where: Path, tree: dict[str, Any]) -> None:
    where.mkdir(exist_ok=True)
    for name, sub in tree.items():
        if isinstance(sub, dict):
            write_tree(where / name, sub)
        else:
            (where / name).write_bytes(sub)


def read_dir(cid: bytes, blocks: dict[bytes, bytes]) -> dict[str, Any]:
    links, data = decode_dag_pb(blocks[cid])
    assert data is not None and data.type == "directory"
    names = [link.name.encode() for link in links]
    assert names == sorted(names)  # dag-pb: links sorted by name bytes
    out: dict[str, Any] = {}
    for link in links:
        child = blocks[link.cid]
        is_dir = link.cid[1] == 0x70 and decode_dag_pb(child)[1].type == "directory"  # type: ignore[union-attr]
        out[link.name] = read_dir(link.cid, blocks) if is_dir else rebuild(link.cid, blocks)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(NAMES, TREES, max_size=5))
def test_directory_blocks_rebuild_the_tree(tree: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        top = Path(d) / "top"
        write_tree(top, tree)
        cid, files = dir_cid(top)
        pairs = list(iter_blocks(top))
    blocks = check_blocks(pairs)
    assert bytes(pairs[-1][0]) == bytes(cid)
    assert read_dir(bytes(cid), blocks) == tree

    def flat(t: dict[str, Any], pre: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in t.items():
            out.update(flat(v, pre + k + "/") if isinstance(v, dict) else {pre + k: len(v)})
        return out

    assert {f["path"]: f["size"] for f in files} == flat(tree)
    assert [f["path"] for f in files] == sorted(flat(tree), key=str.encode)


def test_empty_file_is_the_empty_raw_block(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    assert str(file_cid(tmp_path / "e")) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_empty_directory_is_kubos_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert str(dir_cid(tmp_path / "d")[0]) == "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


# --- bad input: a clear error, nothing returned ----------------------------------------------


def test_missing_paths_and_wrong_kinds_are_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ContentError, match="cannot read"):
        file_cid(tmp_path / "nope")
    with pytest.raises(ContentError, match="not a directory"):
        dir_cid(tmp_path / "f")
    with pytest.raises(ContentError, match="cannot read|not a regular file"):
        file_cid(tmp_path)


def test_fifo_broken_symlink_and_loop_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "pipe")
    with pytest.raises(ContentError, match="neither a file nor a directory"):
        dir_cid(d)
    os.unlink(d / "pipe")
    (d / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(ContentError, match="broken symlink"):
        dir_cid(d)
    os.unlink(d / "dangling")
    (d / "sub").mkdir()
    (d / "sub" / "up").symlink_to(d)
    with pytest.raises(ContentError, match="symlink loop"):
        dir_cid(d)


def test_a_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    with open(os.path.join(os.fsencode(d), b"bad\xff"), "wb") as f:
        f.write(b"x")
    with pytest.raises(ContentError, match="not UTF-8"):
        dir_cid(d)


def test_a_directory_kubo_would_shard_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "many"
    d.mkdir()
    name_len = 200
    count = HAMT_THRESHOLD // (name_len + 36) + 1  # links estimate: name bytes + 36 CID bytes each
    for i in range(count):
        (d / f"{i:0{name_len}d}").write_bytes(b"")
    with pytest.raises(DirectoryTooLargeError, match="HAMT"):
        dir_cid(d)
    os.unlink(d / f"{0:0{name_len}d}")
    assert (count - 1) * (name_len + 36) < HAMT_THRESHOLD
    dir_cid(d)  # one link fewer, just under: a plain directory


def test_a_file_growing_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(os.urandom(3 * CHUNK_SIZE))
    blocks = iter_file_blocks(path)
    next(blocks)
    with open(path, "ab") as f:
        f.write(b"more")
    with pytest.raises(ContentChangedError, match="changed while"):
        list(blocks)


def test_hashing_streams_a_large_file(tmp_path: Path) -> None:
    """A 1 GB model must not be read into memory: Python allocations stay at a few chunks."""
    import tracemalloc

    path = tmp_path / "big"
    with open(path, "wb") as f:
        for _ in range(40):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        root = file_root(path)
        leaf_bytes = sum(len(b) for c, b in iter_file_blocks(path) if c[1] == 0x55)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert root.size == leaf_bytes == 40 << 20
    assert peak < 4 * CHUNK_SIZE, peak
