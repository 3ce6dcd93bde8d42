"""UnixFS CIDs as kubo computes them with its defaults, so a model is named by its content.

``ipfs add --cid-version=1 FILE`` (kubo defaults) cuts a file into fixed 256 KiB chunks, stores
each chunk as a raw block (codec raw 0x55), and builds a balanced DAG over them: dag-pb (0x70)
nodes of at most 174 links, each carrying UnixFS ``Data{Type=File, filesize, blocksizes}``. A
file of one chunk is that single raw block; the empty file is the raw block of no bytes.
``ipfs add -r --hidden --cid-version=1 DIR`` adds a dag-pb node ``Data{Type=Directory}`` per
directory whose links are sorted by name, each link's Tsize being the cumulative size of the
blocks under it. All hashes are sha2-256, CIDs are v1 and print in base32.

Why our own code rather than py-libp2p 0.8.1's ``libp2p.bitswap`` (``MerkleDag.add_file``,
``dag_pb.balanced_layout``), measured against the js importer in tests/content:
- ``add_file``/``add_bytes``/``add_stream`` hand ``balanced_layout`` leaves without their bytes
  (a memory saving), and it then counts each leaf's Tsize as 0: every file of two or more
  chunks gets a CID that no IPFS implementation gives (1 MB of random bytes already differs);
- ``balanced_layout`` carries a lone child up a level unwrapped, where kubo (and the js
  importer) wrap it in a node of one link, so every file of 174·k + 1 chunks (k ≥ 1; the
  first is 45,613,057 bytes) differs even with leaf bytes given;
- it hashes from an async block store and reads one-chunk files whole. Here hashing is a pure,
  streaming function that a block exchange (theirs or ours) can serve from.
The PBNode/UnixFS bytes ``balanced_layout`` writes for a node are right; only these are not.

Departures from ``ipfs add``, on purpose and checked:
- symlinks are followed (their targets' content is hashed), as a Hugging Face cache snapshot is
  all symlinks; kubo would store symlink nodes. The CID equals kubo's on a dereferenced copy
  (``cp -rL``).
- directories large enough for kubo to shard them (HAMT) are refused with
  :class:`DirectoryTooLargeError`, not sharded: models have a handful of files.
- anything that is neither file nor directory (fifo, socket, device) is refused.

All functions here block on disk and CPU: callers on the trio loop run them in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from multiformats import CID

CHUNK_SIZE = 262_144  # kubo's default chunker: size-262144
MAX_LINKS = 174  # kubo's balanced layout: at most 174 links per node
# kubo switches a directory to a HAMT when its estimated node size reaches 256 KiB
# (Import.UnixFSHAMTDirectorySizeThreshold; estimate = sum of name bytes + CID bytes per link).
HAMT_THRESHOLD = 262_144

CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
_RAW_PREFIX = bytes((0x01, CODEC_RAW, 0x12, 0x20))  # CIDv1, raw, sha2-256, 32 bytes
_PB_PREFIX = bytes((0x01, CODEC_DAG_PB, 0x12, 0x20))  # CIDv1, dag-pb, sha2-256, 32 bytes
_UNIXFS_DIRECTORY = 1
_UNIXFS_FILE = 2
_DIR_DATA = bytes((0x08, _UNIXFS_DIRECTORY))  # UnixFS Data{Type=Directory}

BlockSink = Callable[[bytes, bytes], None]  # (cid bytes, block bytes)


class ContentError(ValueError):
    """A path cannot be given a UnixFS CID (what and why in the message); nothing was cached."""


class DirectoryTooLargeError(ContentError):
    """A directory big enough that kubo would shard it (HAMT), which is not implemented here."""


class ContentChangedError(ContentError):
    """A file changed while it was being hashed: the CID would describe no real version of it."""


# --- protobuf, by hand: dag-pb needs Links before Data and exact field presence -------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_bytes(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def encode_link(cid: bytes, name: bytes, tsize: int) -> bytes:
    """A PBLink: Hash (1), Name (2, present even when empty, as kubo writes it), Tsize (3)."""
    return _field_bytes(0x0A, cid) + _field_bytes(0x12, name) + b"\x18" + _varint(tsize)


def encode_node(links: list[bytes], data: bytes) -> bytes:
    """A PBNode in dag-pb's canonical order: every Link (field 2) first, then Data (field 1)."""
    return b"".join(_field_bytes(0x12, link) for link in links) + _field_bytes(0x0A, data)


def file_data(filesize: int, blocksizes: list[int]) -> bytes:
    """UnixFS Data of an inner file node: Type=File, filesize, blocksizes (unpacked, as kubo)."""
    return b"\x08\x02\x18" + _varint(filesize) + b"".join(b"\x20" + _varint(s) for s in blocksizes)


def to_cid(cid: bytes) -> CID:
    """A CID object that prints in base32, as ``ipfs add --cid-version=1`` prints it."""
    return CID.decode(cid).set(base="base32")


def raw_cid(block: bytes | memoryview) -> bytes:
    return _RAW_PREFIX + hashlib.sha256(block).digest()


def pb_cid(block: bytes) -> bytes:
    return _PB_PREFIX + hashlib.sha256(block).digest()


# --- files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Root:
    """A UnixFS DAG's root: its CID bytes, the bytes of content under it, and its Tsize
    (the cumulative size of every block in the DAG: what a parent directory's link carries)."""

    cid: bytes
    size: int
    tsize: int


@dataclass
class _Child:
    cid: bytes
    size: int  # file bytes under it
    tsize: int  # block bytes under it, itself included


@dataclass
class BalancedBuilder:
    """kubo's balanced layout, fed leaf by leaf in file order, holding one partial node per level.

    A level that reaches MAX_LINKS children becomes one node of the next level at once; at the
    end every partial level below the top is wrapped in a node (even a node of one link, as kubo
    does) and carried up, and the top's lone entry is the root. This gives the same tree as Go's
    ``balanced.Layout`` (fill a depth-d tree, then make it the first child of a depth-d+1 root).
    """

    max_links: int = MAX_LINKS
    sink: BlockSink | None = None
    levels: list[list[_Child]] = field(default_factory=list)
    leaves: int = 0

    def __post_init__(self) -> None:
        if self.max_links < 2:
            raise ValueError(f"max_links must be at least 2, got {self.max_links}")

    def add_leaf(self, cid: bytes, size: int) -> None:
        self.leaves += 1
        self._push(0, _Child(cid, size, size))

    def _push(self, level: int, child: _Child) -> None:
        while len(self.levels) <= level:
            self.levels.append([])
        self.levels[level].append(child)
        if len(self.levels[level]) == self.max_links:
            node = self._node(self.levels[level])
            self.levels[level] = []
            self._push(level + 1, node)

    def _node(self, children: list[_Child]) -> _Child:
        links = [encode_link(c.cid, b"", c.tsize) for c in children]
        size = sum(c.size for c in children)
        block = encode_node(links, file_data(size, [c.size for c in children]))
        cid = pb_cid(block)
        if self.sink is not None:
            self.sink(cid, block)
        return _Child(cid, size, len(block) + sum(c.tsize for c in children))

    def finish(self) -> Root:
        """The root; call once, after the last leaf (a file with no leaf has none: see file_root)."""
        if self.leaves == 0:
            raise ValueError("no leaves: the empty file is a raw block of no bytes, not a tree")
        if self.leaves == 1:  # one chunk: the raw block is the file (kubo's single-leaf case)
            only = self.levels[0][0]
            return Root(only.cid, only.size, only.tsize)
        level = 0
        while True:
            top = max(i for i, lv in enumerate(self.levels) if lv)
            if level == top and len(self.levels[level]) == 1:
                root = self.levels[level][0]
                return Root(root.cid, root.size, root.tsize)
            if self.levels[level]:
                node = self._node(self.levels[level])
                self.levels[level] = []
                self._push(level + 1, node)
            level += 1


def _same_version(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino) == (after.st_size, after.st_mtime_ns, after.st_ino)


def _read_full(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` as io.ReadFull does (kubo's chunker); fewer bytes only at end of file."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


Blocks = Generator[tuple[bytes, bytes], None, Root]  # yields (cid, block), returns the root


def _file_blocks(path: Path, leaves: bool) -> Blocks:
    """Stream one regular file through the chunker and the balanced builder.

    Yields the inner nodes as they complete (the root last) and, with ``leaves``, each raw leaf
    before them; returns the root. Holds one chunk and one partial node per level at a time."""
    nodes: list[tuple[bytes, bytes]] = []
    builder = BalancedBuilder(sink=lambda c, b: nodes.append((c, b)))
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a generator may be left unfinished
    except OSError as exc:
        raise ContentError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        before = os.fstat(f.fileno())
        if not stat_mod.S_ISREG(before.st_mode):
            raise ContentError(f"{path}: not a regular file")
        while True:
            n = _read_full(f, view)
            if n == 0 and builder.leaves > 0:
                break
            cid = raw_cid(view[:n])
            if leaves:
                yield cid, bytes(view[:n])
            builder.add_leaf(cid, n)
            while nodes:
                yield nodes.pop(0)
            if n < CHUNK_SIZE:
                break
        after = os.fstat(f.fileno())
    except OSError as exc:
        raise ContentError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    finally:
        f.close()
    root = builder.finish()
    if not _same_version(before, after) or root.size != before.st_size:
        raise ContentChangedError(f"{path}: changed while it was read; try again when it is complete")
    while nodes:
        yield nodes.pop(0)
    return root


def _run(gen: Blocks) -> Root:
    """Drive a block generator for its root alone."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def file_root(path: str | os.PathLike[str]) -> Root:
    """The UnixFS root of one file (CID bytes, size, Tsize), streaming it in 256 KiB chunks."""
    return _run(_file_blocks(Path(path), leaves=False))


def file_cid(path: str | os.PathLike[str]) -> CID:
    """The CID ``ipfs add --cid-version=1 FILE`` gives (kubo defaults)."""
    return to_cid(file_root(path).cid)


def iter_file_blocks(path: str | os.PathLike[str]) -> Iterator[tuple[bytes, bytes]]:
    """Every block of a file's DAG as (binary CIDv1, block): each raw leaf in file order, each
    inner node as soon as it is complete, the root last. Streams; a leaf that occurs twice is
    yielded twice. CIDs stay bytes (Bitswap's wire form; ``to_cid`` makes one an object): a
    multiformats CID object costs more to build than hashing a 256 KiB leaf."""
    yield from _file_blocks(Path(path), leaves=True)


# --- directories ----------------------------------------------------------------------------


class RootCache(Protocol):
    """Where a directory walk gets file roots without hashing (p2p.content.cache.CidCache)."""

    def file_root(self, path: str | os.PathLike[str]) -> Root: ...


@dataclass(frozen=True)
class FileEntry:
    """One file of a directory: its path under the directory (POSIX, '/'), size and CID."""

    path: str
    size: int
    cid: CID

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size, "cid": str(self.cid)}


def _name_bytes(entry: os.DirEntry[str], where: Path) -> bytes:
    raw = os.fsencode(entry.name)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContentError(f"{where / entry.name!s}: a name that is not UTF-8 cannot be a UnixFS link name") from exc
    return raw


def _check_not_sharded(where: Path, links: list[tuple[bytes, bytes, int]]) -> None:
    """Refuse what kubo would shard. Its default estimate (links, as in go-unixfsnode and the js
    importer's 'links-bytes') is the sum of each link's name bytes and CID bytes; kubo shards
    above the threshold. Reaching it is refused too, so no boundary case is guessed."""
    estimate = sum(len(name) + len(cid) for name, cid, _ in links)
    if estimate >= HAMT_THRESHOLD:
        raise DirectoryTooLargeError(
            f"{where}: {len(links)} entries (a size estimate of {estimate} bytes) are past kubo's {HAMT_THRESHOLD}-byte "
            f"threshold for a sharded (HAMT) directory, which is not implemented here: split the directory"
        )


def _dir_blocks(
    where: Path,
    rel: str,
    files: list[FileEntry],
    seen: frozenset[tuple[int, int]],
    file_blocks: Callable[[Path], Blocks],
) -> Blocks:
    """Walk one directory depth first, in link order: yields the blocks ``file_blocks`` yields
    and each directory node after its entries; returns the directory's root."""
    try:
        st = os.stat(where)
        entries = list(os.scandir(where))
    except OSError as exc:
        raise ContentError(f"{where}: cannot list ({exc.strerror or exc})") from exc
    key = (st.st_dev, st.st_ino)
    if key in seen:
        raise ContentError(f"{where}: a symlink loop (this directory contains itself)")
    seen = seen | {key}
    links: list[tuple[bytes, bytes, int]] = []  # (name, cid, tsize)
    total = 0
    for entry in sorted(entries, key=lambda e: os.fsencode(e.name)):  # dag-pb: links by name bytes
        name = _name_bytes(entry, where)
        child_rel = f"{rel}/{entry.name}" if rel else entry.name
        child = where / entry.name
        try:
            mode = os.stat(child).st_mode  # follows symlinks: the content is what counts
        except OSError as exc:
            raise ContentError(f"{child}: cannot stat ({exc.strerror or exc}); a broken symlink?") from exc
        if stat_mod.S_ISDIR(mode):
            root = yield from _dir_blocks(child, child_rel, files, seen, file_blocks)
        elif stat_mod.S_ISREG(mode):
            root = yield from file_blocks(child)
            files.append(FileEntry(child_rel, root.size, to_cid(root.cid)))
        else:
            raise ContentError(f"{child}: neither a file nor a directory; UnixFS import refuses it")
        links.append((name, root.cid, root.tsize))
        total += root.size
    block = encode_node([encode_link(cid, name, tsize) for name, cid, tsize in links], _DIR_DATA)
    _check_not_sharded(where, links)
    cid = pb_cid(block)
    yield cid, block
    return Root(cid, total, len(block) + sum(t for _, _, t in links))


def _top_dir(path: str | os.PathLike[str]) -> Path:
    top = Path(path)
    if not top.is_dir():
        raise ContentError(f"{top}: not a directory")
    return top


def dir_root(path: str | os.PathLike[str], cache: RootCache | None = None) -> tuple[Root, list[FileEntry]]:
    """A directory's UnixFS root and its files (sorted by path); ``cache`` skips unchanged files."""
    top = _top_dir(path)
    files: list[FileEntry] = []

    def file_blocks(p: Path) -> Blocks:
        if cache is not None:
            return cache.file_root(p)
        return file_root(p)
        yield  # a generator that yields nothing: only the root counts here

    root = _run(_dir_blocks(top, "", files, frozenset(), file_blocks))
    return root, sorted(files, key=lambda e: e.path.encode())


def dir_cid(path: str | os.PathLike[str], cache: RootCache | None = None) -> tuple[CID, list[dict[str, object]]]:
    """The CID ``ipfs add -r --hidden --cid-version=1 DIR`` gives (kubo defaults; symlinks
    followed), and its files as ``[{path, size, cid}]``."""
    root, files = dir_root(path, cache)
    return to_cid(root.cid), [f.as_dict() for f in files]


def iter_blocks(path: str | os.PathLike[str]) -> Iterator[tuple[bytes, bytes]]:
    """Every block of the DAG of a file or a directory as (binary CIDv1, block), streaming, for a
    block exchange to serve: each file's blocks (leaves, then its inner nodes) and each directory
    node after its entries; the root last. A block that occurs twice is yielded each time."""
    top = Path(path)
    if top.is_dir():
        yield from _dir_blocks(top, "", [], frozenset(), lambda p: _file_blocks(p, leaves=True))
    else:
        yield from _file_blocks(top, leaves=True)
