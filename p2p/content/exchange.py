"""Pulling a model from peers by its UnixFS CID, and serving our own models' blocks.

Why this shape:
- The model's directory CID (p2p.content.unixfs, what ``ipfs add -r`` gives) is the only thing
  trusted. The puller walks the DAG from it top down, so every block is checked against a CID
  that a verified parent named: a peer can send garbage, but never a block we keep.
- A verified leaf goes straight into its file in a staging folder, at the offset its verified
  parent's UnixFS blocksizes give (``Staging``): the model lands on disk once. Inner nodes (a
  few KiB) also go to a block store (one file per block, written atomically), so a pull killed
  with -9 resumes: it walks the DAG from the store and re-hashes each leaf's region in the
  staged files, fetching only what is missing or torn.
- The staging folder, complete, is fsynced and renamed into the node's model folder in one step
  (``install_staged``): nothing partial is served, and the node re-hashes what it serves and
  checks the CID again. (``install`` assembles a folder from a block store that holds every
  block: the pull's way before staging, kept for tests and the benchmark's comparison.)
- The server side never copies a model into a block store: it indexes each served model's
  files once (CID -> file, offset, length for leaves; the few inner nodes in memory) and reads
  leaves from the files themselves.

All disk and hashing runs in worker threads; the trio loop only moves frames.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from p2p.content.unixfs import (
    CODEC_DAG_PB,
    CODEC_RAW,
    ContentError,
    _dir_blocks,
    _file_blocks,
    dir_root,
    to_cid,
)
from p2p.protocols.content import CONTENT_PROTOCOL, MAX_WANT, Want, decode_block, decode_want, encode_block, encode_want

log = structlog.get_logger("p2p.content")

ProgressFn = Callable[[int, int, str], Awaitable[None]]
ROUND_TIMEOUT_S = 60.0  # one want round (at most MAX_WANT blocks) from one peer
_UNIXFS_DIRECTORY = 1
_UNIXFS_FILE = 2
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class PullError(Exception):
    """A pull failed for a reason the caller should show as is (nothing was installed).
    ``resumable``: the peers failed, not the model; what was staged is worth keeping."""

    resumable = False


class PeersFailedError(PullError):
    """No peer (left) could give a block: a later pull may resume from what was staged."""

    resumable = True


class DiskFullError(PullError):
    """No space left while writing blocks or files; what the pull wrote has been removed."""


class _PeerFault(Exception):
    """This peer misbehaved or failed for this pull; it is dropped and its work goes to others."""


# --- CIDs and dag-pb ----------------------------------------------------------------------


def cid_from_str(text: str) -> bytes:
    """Binary CIDv1 of a printed CID (ContentError if it is not one)."""
    from multiformats import CID

    try:
        return bytes(CID.decode(text.strip()))
    except Exception as exc:  # multiformats raises several types
        raise ContentError(f"{text!r} is not a CID ({exc})") from None


def verify(cid: bytes, block: bytes) -> bool:
    """Whether ``block`` is the block ``cid`` names (CIDv1, raw or dag-pb, sha2-256: what
    kubo's defaults and p2p.content.unixfs produce; anything else is refused)."""
    if len(cid) != 36 or cid[0] != 0x01 or cid[1] not in (CODEC_RAW, CODEC_DAG_PB) or cid[2:4] != b"\x12\x20":
        return False
    return hashlib.sha256(block).digest() == cid[4:]


def _uvarint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ContentError("malformed dag-pb: truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> Iterable[tuple[int, int, Any]]:
    """Protobuf fields as (number, wire type, value): varints as int, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = _uvarint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = _uvarint(buf, i)
        elif wt == 2:
            n, i = _uvarint(buf, i)
            if i + n > len(buf):
                raise ContentError("malformed dag-pb: field past the end")
            val, i = buf[i:i + n], i + n
        else:
            raise ContentError(f"malformed dag-pb: wire type {wt}")
        yield num, wt, val


@dataclass(frozen=True)
class PbNode:
    """A decoded dag-pb node: its links (cid, name, tsize) and its UnixFS type and filesize."""

    links: list[tuple[bytes, str, int]]
    kind: int  # UnixFS Data.Type: 1 directory, 2 file
    filesize: int
    blocksizes: tuple[int, ...] = ()  # a file node's: bytes under each link, in order


def decode_node(block: bytes) -> PbNode:
    links: list[tuple[bytes, str, int]] = []
    data = b""
    for num, wt, val in _fields(block):
        if num == 2 and wt == 2:
            cid, name, tsize = b"", "", 0
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 2:
                    cid = bytes(v2)
                elif n2 == 2 and w2 == 2:
                    name = bytes(v2).decode("utf-8", errors="strict")
                elif n2 == 3 and w2 == 0:
                    tsize = v2
            links.append((cid, name, tsize))
        elif num == 1 and wt == 2:
            data = bytes(val)
    kind = filesize = 0
    blocksizes: list[int] = []
    for num, wt, val in _fields(data):
        if num == 1 and wt == 0:
            kind = val
        elif num == 3 and wt == 0:
            filesize = val
        elif num == 4 and wt == 0:
            blocksizes.append(val)
        elif num == 4 and wt == 2:  # packed (kubo writes them unpacked; both are valid protobuf)
            i = 0
            while i < len(val):
                v, i = _uvarint(val, i)
                blocksizes.append(v)
    if kind not in (_UNIXFS_DIRECTORY, _UNIXFS_FILE):
        raise ContentError(f"unsupported UnixFS node type {kind} (only files and plain directories)")
    return PbNode(links, kind, filesize, tuple(blocksizes))


def _is_pb(cid: bytes) -> bool:
    return len(cid) > 1 and cid[1] == CODEC_DAG_PB


def _raise_disk(exc: OSError, what: str) -> None:
    if exc.errno in _DISK_FULL:
        raise DiskFullError(f"the disk is full ({exc.strerror}) while writing {what}; the pull's partial data was removed") from None
    raise PullError(f"cannot write {what}: {exc.strerror or exc}") from None


@contextmanager
def _disk(what: str) -> Iterator[None]:
    """OSError while writing ``what``: DiskFullError or PullError, one clear line."""
    try:
        yield
    except OSError as exc:
        _raise_disk(exc, what)


# --- block store ---------------------------------------------------------------------------


class BlockStore:
    """Verified blocks of pulls in progress, one file per block named by the CID's hex; each is
    written to a temp file and renamed, so a kill leaves whole blocks or none. Reads verify
    again (a block cut short by a power loss is dropped and fetched again)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, cid: bytes) -> Path:
        return self.root / cid.hex()

    def get(self, cid: bytes, *, check: bool = True) -> bytes | None:
        """The block, verified again unless ``check`` is false (assembly re-hashes the result whole)."""
        try:
            data = self._path(cid).read_bytes()
        except FileNotFoundError:
            return None
        if not check or verify(cid, data):
            return data
        log.warning("a stored block failed verification; fetching it again", cid=str(to_cid(cid)))
        self._path(cid).unlink(missing_ok=True)
        return None

    def put(self, cid: bytes, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._path(cid)
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # two threads, one CID
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            _raise_disk(exc, "a block")

    def remove(self, cids: Iterable[bytes]) -> None:
        for cid in cids:
            self._path(cid).unlink(missing_ok=True)


# --- serving -------------------------------------------------------------------------------

Location = tuple[str, int, int] | bytes  # a leaf in a file (path, offset, length), or an inner node's bytes


def build_index(path: Path) -> tuple[bytes, dict[bytes, Location]]:
    """Every block of the model folder ``path``: where each leaf lies in its file and the bytes of
    each inner node (a few KiB in all). Hashes the whole folder once (blocking: run in a thread)."""
    index: dict[bytes, Location] = {}

    def file_blocks(p: Path) -> Any:
        offset = 0
        gen = _file_blocks(p, leaves=True)
        while True:
            try:
                cid, block = next(gen)
            except StopIteration as done:
                return done.value
            if cid[1] == CODEC_RAW:
                index.setdefault(cid, (str(p), offset, len(block)))
                offset += len(block)
            else:
                index.setdefault(cid, block)
            yield cid, block

    gen = _dir_blocks(Path(path), "", [], frozenset(), file_blocks)
    while True:
        try:
            cid, block = next(gen)
        except StopIteration as done:
            return done.value.cid, index
        if cid not in index:
            index[cid] = block


def _read(loc: Location) -> bytes:
    if isinstance(loc, bytes):
        return loc
    path, offset, length = loc
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


SERVE_SLICE = 8  # blocks read and sent at a time (2 MiB of leaves)
SERVE_SLOTS_PER_PEER = 4  # slices of one peer held in memory at once, over all its streams


class ContentServer:
    """Serves the blocks of this node's models to pullers (``CONTENT_PROTOCOL``).

    ``models`` gives the served models as {CID string: folder}; a want names its model's root
    and only a served root is answered. Each model is indexed on its first request (in a thread)
    and re-indexed when its folder changes CID."""

    def __init__(self, models: Callable[[], dict[str, Path]]) -> None:
        self._models = models
        self._index: dict[bytes, dict[bytes, Location]] = {}
        self._lock = trio.Lock()
        self._slots: dict[str, trio.Semaphore] = {}  # peer -> slices it may hold in memory
        self.blocks_served = 0
        self.bytes_served = 0

    async def _index_for(self, root: bytes) -> dict[bytes, Location] | None:
        if root in self._index:
            return self._index[root]
        folder = {cid_from_str(c): Path(p) for c, p in self._models().items()}.get(root)
        if folder is None:
            return None
        async with self._lock:
            if root not in self._index:
                got, index = await trio.to_thread.run_sync(build_index, folder)
                if got != root:
                    log.warning("a served model changed on disk; not serving it until re-hashed", folder=str(folder))
                    return None
                self._index[root] = index
        return self._index[root]

    async def blocks(self, want: Want) -> list[bytes | None]:
        """The wanted blocks in order (None: not one of a served model's), read in a thread."""
        index = await self._index_for(want.root)
        locs = [None if index is None else index.get(c) for c in want.cids]

        def read_all() -> list[bytes | None]:
            # checked before sending: files changed on disk since they were indexed must not
            # go out as the CID's bytes (our peers would drop us as a tamperer)
            out: list[bytes | None] = []
            for cid, loc in zip(want.cids, locs):
                try:
                    block = None if loc is None else _read(loc)
                except OSError:  # removed or unreadable since indexed
                    block = None
                out.append(block if block is not None and verify(cid, block) else None)
            return out

        got = await trio.to_thread.run_sync(read_all)
        if any(loc is not None and b is None for loc, b in zip(locs, got)):
            self._index.pop(want.root, None)  # re-indexed (and re-checked against the root) next time
            log.warning("a served model's files changed on disk; those blocks are not served", root=str(to_cid(want.root)))
        return got

    async def handle(self, peer: str, stream: Any) -> None:
        # A want names up to MAX_WANT blocks (64 MiB of 256 KiB leaves): read and sent a slice
        # at a time, at most SERVE_SLOTS_PER_PEER slices of one peer in memory at once, so a
        # peer that opens many streams and never reads its replies holds a few MiB, not N x 64.
        slots = self._slots.setdefault(peer, trio.Semaphore(SERVE_SLOTS_PER_PEER))
        async for payload in stream.frames():
            want = decode_want(payload)
            for i in range(0, len(want.cids), SERVE_SLICE):
                part = Want(want.root, want.cids[i:i + SERVE_SLICE])
                async with slots:
                    blocks = await self.blocks(part)
                    for cid, block in zip(part.cids, blocks):
                        await stream.write_frame(encode_block(cid, block))
                        if block is not None:
                            self.blocks_served += 1
                            self.bytes_served += len(block)


# --- pulling -------------------------------------------------------------------------------


@dataclass
class PullStats:
    """What a pull did: blocks fetched from peers vs found in the block store, and which peers
    sent blocks that failed verification (they were dropped from the pull)."""

    root: str
    total_bytes: int = 0
    blocks_total: int = 0
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    blocks_reused: int = 0
    bad_blocks: dict[str, int] = field(default_factory=dict)
    dropped_peers: dict[str, str] = field(default_factory=dict)
    fetched_from: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Fetch:
    """The state of one DAG fetch, shared by the per-peer workers."""

    def __init__(self, net: Any, root: bytes, store: BlockStore, stats: PullStats, progress: ProgressFn | None,
                 batch: int, staging: Staging | None = None) -> None:
        self.net, self.root, self.store, self.stats, self.progress = net, root, store, stats, progress
        self.staging = staging  # leaves go straight into the staged files; inner nodes to the store too
        # workers report concurrently: one at a time, and never a figure below one already sent
        # (a report read before another worker's and sent after it went backwards)
        self._report_lock = trio.Lock()
        self._reported = -1
        self.batch = batch
        self.todo: deque[bytes] = deque()
        self.seen: set[bytes] = {root}
        self.remaining = 0  # blocks wanted and not stored yet (queued or in flight)
        self.done_bytes = 0
        self.changed = trio.Event()
        self.fatal: BaseException | None = None

    async def _report(self) -> None:
        if self.progress is None:
            return
        async with self._report_lock:
            done = self.done_bytes
            if done <= self._reported:
                return
            self._reported = done
            await self.progress(done, self.stats.total_bytes, f"{done / 1e6:.1f}/{self.stats.total_bytes / 1e6:.1f} MB")

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def want(self, cids: Iterable[bytes]) -> None:
        for c in cids:
            if c not in self.seen:
                self.seen.add(c)
                self.todo.append(c)
                self.remaining += 1
        self._wake()

    async def take(self) -> list[bytes] | None:
        while True:
            if self.fatal is not None or self.remaining == 0:
                return None
            if self.todo:
                n = min(self.batch, len(self.todo))
                return [self.todo.popleft() for _ in range(n)]
            await self.changed.wait()

    def _store_batch(self, got: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes], int, list[bytes]]:
        """Verify and store (thread): (bad cids, children to want, bytes stored, children a
        resumed pull found staged already)."""
        bad: list[bytes] = []
        children: list[bytes] = []
        staged: list[bytes] = []
        stored = 0
        for cid, data in got:
            if not verify(cid, data):
                bad.append(cid)
                continue
            stored += len(data)
            if self.staging is not None:
                if _is_pb(cid):
                    self.store.put(cid, data)  # a resumed pull walks the DAG from the store
                for child in self.staging.put(cid, data):
                    if self.staging.resuming and not _is_pb(child) and child not in self.seen \
                            and self.staging.has_leaf(child):
                        staged.append(child)
                    else:
                        children.append(child)
                continue
            self.store.put(cid, data)
            if _is_pb(cid):
                children += [c for c, _, _ in decode_node(data).links]
        return bad, children, stored, staged

    async def worker(self, peer: str) -> None:
        batch: list[bytes] = []
        try:
            async with self.net.open_stream(peer, CONTENT_PROTOCOL) as stream:
                while True:
                    got_batch = await self.take()
                    if got_batch is None:
                        return
                    batch = got_batch
                    got: list[tuple[bytes, bytes]] = []
                    with trio.fail_after(ROUND_TIMEOUT_S):
                        await stream.write_frame(encode_want(Want(self.root, batch)))
                        for cid in batch:
                            rcid, data = decode_block(await stream.read_frame())
                            if rcid != cid:
                                raise _PeerFault("answered with a block that was not asked for")
                            if data is None:
                                raise _PeerFault(f"does not have block {to_cid(cid)} of the model it advertises")
                            got.append((cid, data))
                    try:
                        bad, children, stored, staged = await trio.to_thread.run_sync(self._store_batch, got)
                    except ContentError as exc:  # a verified node that is not UnixFS we can assemble
                        self.fatal = PullError(f"the model's DAG is not a plain UnixFS folder: {exc}")
                        self._wake()
                        return
                    except UnicodeDecodeError:
                        self.fatal = PullError("the model's DAG is not a plain UnixFS folder: a name that is not UTF-8")
                        self._wake()
                        return
                    except PullError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - storing failed here: not the peer's fault
                        self.fatal = PullError(f"storing the model's blocks failed: {type(exc).__name__}: {exc}")
                        self._wake()
                        return
                    good = len(batch) - len(bad)
                    self.stats.blocks_fetched += good
                    self.stats.bytes_fetched += stored
                    self.stats.fetched_from[peer] = self.stats.fetched_from.get(peer, 0) + good
                    self.done_bytes += stored
                    self.remaining -= good
                    for c in staged:  # a resumed pull's leaves found in the staged files
                        if c not in self.seen:
                            self.seen.add(c)
                            self.stats.blocks_reused += 1
                            self.done_bytes += self.staging.leaf_size(c) if self.staging is not None else 0
                    self.want(children)
                    if bad:
                        self.stats.bad_blocks[peer] = self.stats.bad_blocks.get(peer, 0) + len(bad)
                        log.warning("a peer sent blocks that fail verification; dropped from this pull",
                                    peer=peer, blocks=len(bad), first=str(to_cid(bad[0])))
                        batch = bad
                        raise _PeerFault(f"sent {len(bad)} block(s) that fail verification")
                    batch = []
                    await self._report()
                    self._wake()
        except DiskFullError as exc:
            self.fatal = exc
        except PullError as exc:
            self.fatal = exc
        except Exception as exc:  # noqa: BLE001 - any failure of this peer: drop it, others carry on
            reason = str(exc) if isinstance(exc, _PeerFault) else f"{type(exc).__name__}: {exc}"
            self.stats.dropped_peers.setdefault(peer, reason)
            log.info("peer dropped from a pull", peer=peer, reason=reason)
        finally:
            if batch:
                self.todo.extendleft(reversed(batch))
            self._wake()


async def _root_block(net: Any, root: bytes, store: BlockStore, peers: list[str], stats: PullStats) -> bytes:
    block = await trio.to_thread.run_sync(store.get, root)
    if block is not None:
        stats.blocks_reused += 1
        return block
    for peer in peers:
        try:
            with trio.fail_after(ROUND_TIMEOUT_S):
                async with net.open_stream(peer, CONTENT_PROTOCOL) as stream:
                    await stream.write_frame(encode_want(Want(root, [root])))
                    cid, data = decode_block(await stream.read_frame())
        except Exception as exc:  # noqa: BLE001
            stats.dropped_peers.setdefault(peer, f"{type(exc).__name__}: {exc}")
            continue
        if cid == root and data is not None and verify(root, data):
            await trio.to_thread.run_sync(store.put, root, data)
            stats.blocks_fetched += 1
            stats.bytes_fetched += len(data)
            stats.fetched_from[peer] = stats.fetched_from.get(peer, 0) + 1
            return data
        if data is not None:
            stats.bad_blocks[peer] = stats.bad_blocks.get(peer, 0) + 1
            log.warning("a peer sent a root block that fails verification", peer=peer)
        stats.dropped_peers.setdefault(peer, "could not give the model's root block")
    raise PeersFailedError(f"no peer gave the root block of {to_cid(root)} (tried {len(peers)}: "
                    f"{'; '.join(f'{p}: {r}' for p, r in stats.dropped_peers.items()) or 'none'})")


def _scan(store: BlockStore, first: list[bytes], expand: Callable[[bytes, bytes], list[bytes]],
          leaf_here: Callable[[bytes], int | None]) -> tuple[list[bytes], set[bytes], int, int]:
    """Walk the DAG down from ``first`` as far as this node holds it (thread): inner nodes from
    the store (``expand`` gives their children), leaves by ``leaf_here`` (their size, or None).
    Returns (missing cids, every cid seen, blocks reused, bytes reused)."""
    missing: list[bytes] = []
    seen: set[bytes] = set()
    reused = reused_bytes = 0
    stack = list(reversed(first))
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        if _is_pb(cid):
            data = store.get(cid)
            size = None if data is None else len(data)
        else:
            size = leaf_here(cid)
        if size is None:
            missing.append(cid)
            continue
        reused += 1
        reused_bytes += size
        if _is_pb(cid):
            stack += reversed(expand(cid, data))  # type: ignore[arg-type]
    return missing, seen, reused, reused_bytes


def _scan_local(store: BlockStore, root_node: PbNode) -> tuple[list[bytes], set[bytes], int, int]:
    """``_scan`` of a block store that holds every block (leaves too)."""
    def leaf(cid: bytes) -> int | None:
        data = store.get(cid)
        return None if data is None else len(data)

    return _scan(store, [c for c, _, _ in root_node.links], lambda _c, data: [c for c, _, _ in decode_node(data).links],
                 leaf)


async def fetch_dag(net: Any, root: bytes, peers: list[str], store: BlockStore, *, max_bytes: int = 0,
                    free_dir: Path | None = None, progress: ProgressFn | None = None, workers_per_peer: int = 2,
                    batch: int = 32, staging: Path | None = None) -> tuple[PullStats, set[bytes]]:
    """Every block of the folder DAG ``root`` into ``store``, from ``peers``, verified; with
    ``staging``, the leaves go straight into the folder's files there instead (``Staging``; then
    ``install_staged``), and only inner nodes into ``store``.

    Blocks already in the store are reused. A peer that sends a bad block, lacks one, or fails
    is dropped and its share goes to the others; the pull fails only when no peer is left.
    The size is checked against ``max_bytes`` (0: no limit) and the free space of ``free_dir``
    as soon as the root is known, before any other block is fetched. Returns the stats and the
    set of every CID of the DAG (to remove from the store once the files are installed)."""
    stats = PullStats(root=str(to_cid(root)))
    t0 = time.perf_counter()
    if not peers:
        raise PullError(f"no connected peer serves {stats.root}")
    root_block = await _root_block(net, root, store, peers, stats)
    try:
        node = decode_node(root_block)
    except (ContentError, UnicodeDecodeError) as exc:
        raise PullError(f"{stats.root} is not a UnixFS folder: {exc}") from None
    if node.kind != _UNIXFS_DIRECTORY:
        raise PullError(f"{stats.root} is a file, not a model folder")
    stats.total_bytes = len(root_block) + sum(t for _, _, t in node.links)
    if max_bytes and stats.total_bytes > max_bytes:
        store.remove([root])
        raise PullError(f"model {stats.root} is {stats.total_bytes} bytes, over inference.max_model_bytes = {max_bytes}; "
                        f"nothing was downloaded")
    if free_dir is not None:
        free = shutil.disk_usage(free_dir).free
        if staging is not None:  # the staged files; what a resumed pull staged is there already
            need = max(0, stats.total_bytes - await trio.to_thread.run_sync(staged_bytes, staging))
        else:  # the blocks, then the assembled files
            need = 2 * stats.total_bytes
        if free < need:
            store.remove([root])
            raise DiskFullError(f"not enough disk space to pull {stats.root}: it needs about {need} more bytes "
                                f"and {free} are free in {free_dir}")
    staged = Staging(staging, stats.total_bytes) if staging is not None else None
    try:
        if staged is not None:
            missing, seen, reused, reused_bytes = await trio.to_thread.run_sync(_scan_staged, store, staged, root, node)
        else:
            missing, seen, reused, reused_bytes = await trio.to_thread.run_sync(_scan_local, store, node)
        stats.blocks_reused += reused
        f = _Fetch(net, root, store, stats, progress, max(1, min(batch, MAX_WANT)), staged)
        await _fetch_missing(f, peers, missing, seen, len(root_block) + reused_bytes, workers_per_peer)
        if staged is not None:
            await trio.to_thread.run_sync(staged.prune)
            await trio.to_thread.run_sync(staged.sync)
    except BaseException as exc:
        if staged is not None:
            staged.close()  # on this thread, never cancelled: no file left open
            if isinstance(exc, DiskFullError):  # free the space: the staged files and the inner blocks
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, staging, True)
                    await trio.to_thread.run_sync(store.remove, staged.inner_cids())
        raise
    stats.blocks_total = len(f.seen)
    stats.seconds = round(time.perf_counter() - t0, 3)
    return stats, f.seen


def _scan_staged(store: BlockStore, staged: Staging, root: bytes, node: PbNode) -> tuple[list[bytes], set[bytes], int, int]:
    """``_scan`` of a staged pull: inner nodes from the store, leaves from the staged files
    (each region re-hashed)."""
    try:
        return _scan(store, staged.start(root, node), staged.put,
                     lambda cid: staged.leaf_size(cid) if staged.has_leaf(cid) else None)
    except OSError as exc:
        _raise_disk(exc, "the model's files")
        raise  # unreachable: _raise_disk raises
    except (ContentError, UnicodeDecodeError) as exc:
        raise PullError(f"the model's DAG is not a plain UnixFS folder: {exc}") from None


async def _fetch_missing(f: _Fetch, peers: list[str], missing: list[bytes], seen: set[bytes], done_bytes: int,
                         workers_per_peer: int) -> None:
    stats = f.stats
    progress = f.progress
    f.seen |= seen
    f.done_bytes = done_bytes
    for c in missing:
        f.todo.append(c)
    f.remaining = len(missing)
    if progress is not None:
        await progress(f.done_bytes, stats.total_bytes, f"{stats.blocks_reused} block(s) already here")
    if f.remaining:
        async with trio.open_nursery() as nursery:
            for peer in peers:
                for _ in range(workers_per_peer):
                    nursery.start_soon(f.worker, peer)
    if f.fatal is not None:
        if isinstance(f.fatal, DiskFullError):
            f.store.remove(f.seen)
        raise f.fatal
    if f.remaining:
        raise PeersFailedError(f"{f.remaining} block(s) of {stats.root} could not be fetched: every peer failed "
                        f"({'; '.join(f'{p}: {r}' for p, r in stats.dropped_peers.items())})")


# --- installing ----------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a rename or new entries in it survive a power cut once done)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PullError(f"the model's folder holds an entry named {name!r}, which cannot be a file name here")
    return name


MAX_DAG_DEPTH = 32  # a file's balanced DAG of 174 links per node is 4 deep at 90 GB


@dataclass
class _Budget:
    """Bytes ``install`` may still write: a DAG whose nodes link the same leaves many times
    (cheap to fetch: each block once) must not write without end."""

    left: int

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise PullError("the model's files are larger than its root block declared (or than max_model_bytes)")


def _stored(store: BlockStore, cid: bytes, depth: int) -> bytes:
    """A verified block for assembly at ``depth``: PullError when the DAG nests too deep or the
    block is missing or damaged."""
    if depth > MAX_DAG_DEPTH:
        raise PullError(f"the model's DAG nests over {MAX_DAG_DEPTH} levels")
    data = store.get(cid)
    if data is None:
        raise PullError(f"block {to_cid(cid)} is missing or damaged in the block store; pull again to fetch it")
    return data


def _write_file(store: BlockStore, cid: bytes, out: Any, budget: _Budget, depth: int = 0) -> None:
    data = _stored(store, cid, depth)
    if not _is_pb(cid):
        budget.spend(len(data))
        out.write(data)
        return
    node = decode_node(data)
    for child, _, _ in node.links:
        _write_file(store, child, out, budget, depth + 1)


def _assemble_dir(store: BlockStore, cid: bytes, where: Path, budget: _Budget, depth: int = 0) -> None:
    data = _stored(store, cid, depth)
    where.mkdir(parents=True, exist_ok=True)
    for child, name, _ in decode_node(data).links:
        target = where / _safe_name(name)
        if _is_pb(child):
            if decode_node(_stored(store, child, depth + 1)).kind == _UNIXFS_DIRECTORY:
                _assemble_dir(store, child, target, budget, depth + 1)
                continue
        with open(target, "wb") as out:
            _write_file(store, child, out, budget)
            out.flush()
            os.fsync(out.fileno())


def install(store: BlockStore, root: bytes, staging: Path, final: Path, max_bytes: int | None = None) -> None:
    """Assemble the files of ``root`` from the store in ``staging`` and rename it to ``final``
    (blocking: run in a thread). Every block is verified again as it is read (one damaged in the
    store since it was fetched is refused), so the files are the DAG's by construction; the node
    re-hashes the installed folder as it serves it (Node.hash_models) and checks its CID again.
    On any failure the staging folder is removed and ``final`` is untouched. ``max_bytes``:
    the most it writes (the size the root declared, checked against max_model_bytes)."""
    if final.exists():
        got = dir_root(final)[0].cid
        if got == root:
            return
        raise PullError(f"{final} already holds other files (CID {to_cid(got)}); remove it to pull {to_cid(root)} there")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            _assemble_dir(store, root, staging, _Budget(max_bytes if max_bytes is not None else 1 << 62))
        except OSError as exc:
            _raise_disk(exc, "the model's files")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- staging: leaves written where they belong -------------------------------------------

MAX_STAGED_ENTRIES = 10_000  # directory entries a pull may create (a model folder has tens)
MAX_LEAF_BYTES = 1 << 20  # a raw leaf's largest size (kubo's chunker tops out at 1 MiB)
OPEN_FILES = 32  # staged files kept open at once (a folder may hold thousands)

# Where a block lands: (path, offset, size). offset None: a directory entry, whose own type
# decides (a folder, a one-leaf file of ``size`` bytes (its link's Tsize), or a file node whose
# filesize gives its size).
Place = tuple[Path, int | None, int | None]


class Staging:
    """A pull's folder as it is fetched: each verified leaf is written straight into its file at
    its offset (a file node's UnixFS blocksizes say where each child starts), so a model lands
    on disk once, not as blocks and then again as files. Inner nodes (a few KiB) also go to the
    block store, so a pull killed with -9 resumes: it walks the DAG from the store and re-hashes
    each leaf's region in the staged files, fetching only what is missing or torn.

    Blocks reach it only once verified against a CID a verified parent named, and what they say
    is bounded before anything is kept: a leaf whose size differs from what its parent declares,
    a zero block size in a file node, a file over the size the root declared, a DAG nested over
    ``MAX_DAG_DEPTH``, more than ``MAX_STAGED_ENTRIES`` folder entries, two entries of one name,
    or more places (a CID linked many times) than a folder of the declared size has chunks is
    refused as malformed. A CID may occur at many places (a repeated chunk, an identical file):
    every place gets its bytes. At most ``OPEN_FILES`` files are open at once. Thread-safe: fetch
    workers store from several threads."""

    def __init__(self, root: Path, budget: int) -> None:
        import threading

        self.root = Path(root)
        self._budget = _Budget(budget)
        self._declared = budget
        # places a folder of ``budget`` bytes can have: one per 4 KiB (kubo's leaves are 256 KiB)
        self._max_places = budget // 4096 + 4 * MAX_STAGED_ENTRIES
        self._n_places = 0
        self._lock = threading.Lock()
        self._places: dict[bytes, list[tuple[Place, int]]] = {}  # cid -> (place, depth) seen so far
        self._leaf_at: dict[bytes, tuple[Path, int, int]] = {}  # a written leaf: where to copy it from
        self._nodes: dict[bytes, PbNode] = {}  # decoded inner nodes
        self._fds: OrderedDict[Path, int] = OrderedDict()  # open staged files, least recently used first
        self._files: set[Path] = set()  # every file of the folder
        self._dirs: set[Path] = {self.root}  # every folder of the folder
        self._entries = 0
        # a pull that finds its staging folder already there resumes: leaves under an inner node
        # fetched now may be staged already (their node was lost, not they)
        self.resuming = self.root.exists()

    # the caller holds the lock below this line -------------------------------------------

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is not None:
            self._fds.move_to_end(path)
            return fd
        while len(self._fds) >= OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated: resumes
        return fd

    def _add(self, cid: bytes, place: Place, depth: int) -> list[bytes]:
        """File ``cid`` at ``place``; its bytes or children land there now if already known.
        Returns CIDs whose places are new and whose blocks are not here yet (to fetch or scan)."""
        if depth > MAX_DAG_DEPTH:
            raise PullError(f"the model's DAG nests over {MAX_DAG_DEPTH} levels")
        self._n_places += 1
        if self._n_places > self._max_places:
            raise PullError(f"the model's DAG is malformed: it links its blocks at over {self._max_places} places, "
                            f"more than a folder of {self._declared} bytes holds")
        self._places.setdefault(cid, []).append((place, depth))
        if cid in self._leaf_at:
            self._copy_leaf(cid, place)
            return []
        node = self._nodes.get(cid)
        if node is not None:
            return self._expand(node, place, depth)
        return [cid] if len(self._places[cid]) == 1 else []  # asked for once; every place waits for it

    def _write_leaf(self, cid: bytes, data: bytes, place: Place) -> None:
        path, offset, size = place
        if offset is not None and len(data) != size:
            raise PullError(f"the model's DAG is malformed: leaf {to_cid(cid)} holds {len(data)} bytes where its "
                            f"file node declares {size}")
        self._budget.spend(len(data))
        self._files.add(path)
        fd = self._fd(path)
        os.pwrite(fd, data, offset or 0)
        if offset is None:
            os.ftruncate(fd, len(data))  # a one-leaf file: exactly its leaf

    def _copy_leaf(self, cid: bytes, place: Place) -> None:
        path, offset, size = self._leaf_at[cid]
        data = os.pread(self._fd(path), size, offset)
        if not verify(cid, data):  # its first place was overwritten by another entry: a malformed folder
            raise PullError(f"the model's DAG is malformed: two of its places overlap ({path.name!r})")
        self._write_leaf(cid, data, place)

    def _expand(self, node: PbNode, place: Place, depth: int) -> list[bytes]:
        path, offset, size = place
        new: list[bytes] = []
        if node.kind == _UNIXFS_DIRECTORY:
            if offset is not None:
                raise PullError("the model's DAG is malformed: a folder inside a file")
            self._entries += len(node.links)
            if self._entries > MAX_STAGED_ENTRIES:
                raise PullError(f"the model's folder holds over {MAX_STAGED_ENTRIES} entries")
            names = [_safe_name(name) for _, name, _ in node.links]
            if len(set(names)) != len(names):
                raise PullError(f"the model's DAG is malformed: a folder lists one name twice ({path.name!r})")
            path.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path)
            for (child, _, tsize), name in zip(node.links, names):
                new += self._add(child, (path / name, None, tsize), depth + 1)
            return new
        if offset is None:  # a file's top node
            offset, size = 0, node.filesize
            if size > self._budget.left:
                raise PullError("the model's files are larger than its root block declared (or than max_model_bytes)")
            self._files.add(path)
            fd = self._fd(path)
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        if len(node.blocksizes) != len(node.links) or sum(node.blocksizes) != size or 0 in node.blocksizes:
            raise PullError(f"the model's DAG is malformed: a file node of {path.name!r} declares "
                            f"{len(node.blocksizes)} block sizes summing to {sum(node.blocksizes)} for "
                            f"{len(node.links)} links and {size} bytes")
        at = offset
        for (child, _, _), n in zip(node.links, node.blocksizes):
            new += self._add(child, (path, at, n), depth + 1)
            at += n
        return new

    # the public side: each call takes the lock ---------------------------------------------

    def start(self, root: bytes, node: PbNode) -> list[bytes]:
        """The root folder: returns its children (to fetch or scan)."""
        with self._lock, _disk("the model's files"):
            self._places[root] = [((self.root, None, None), 0)]
            self._nodes[root] = node
            return self._expand(node, (self.root, None, None), 0)

    def put(self, cid: bytes, data: bytes) -> list[bytes]:
        """A verified block: a leaf is written at every place it has; an inner node's children
        get their places. Returns the children to fetch (each once)."""
        with self._lock, _disk("the model's files"):
            places = self._places.get(cid, [])
            if not _is_pb(cid):
                if cid in self._leaf_at:
                    return []
                for place, _ in places:
                    self._write_leaf(cid, data, place)
                if places:
                    path, offset, _ = places[0][0]
                    self._leaf_at[cid] = (path, offset or 0, len(data))
                return []
            if cid in self._nodes:
                return []
            node = self._nodes[cid] = decode_node(data)
            new: list[bytes] = []
            for place, depth in places:
                new += self._expand(node, place, depth)
            return new

    def has_leaf(self, cid: bytes) -> bool:
        """Whether the staged files already hold this leaf at one of its places, verified (a
        resumed pull); if so, its other places get it too. A place that cannot be read (gone, a
        folder where a file should be) does not hold it."""
        with self._lock:
            if cid in self._leaf_at:
                return True
            places = [p for p, _ in self._places.get(cid, [])]
        for path, offset, size in places[:8]:  # a leaf staged anywhere is staged at its first places
            if size is None or size > MAX_LEAF_BYTES:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    if offset is None and os.fstat(fd).st_size != size:
                        continue  # a one-leaf file is exactly its leaf
                    data = os.pread(fd, size, offset or 0)
                finally:
                    os.close(fd)
            except OSError:
                continue
            if not verify(cid, data):
                continue
            with self._lock, _disk("the model's files"):
                if cid not in self._leaf_at:
                    self._leaf_at[cid] = (path, offset or 0, len(data))
                    self._files.add(path)
                    for place, _ in self._places[cid]:
                        if place != (path, offset, size):
                            self._write_leaf(cid, data, place)
            return True
        return False

    def leaf_size(self, cid: bytes) -> int:
        with self._lock:
            return self._leaf_at[cid][2]

    def inner_cids(self) -> list[bytes]:
        """The inner nodes it decoded (what a failed pull leaves in the block store)."""
        with self._lock:
            return list(self._nodes)

    def prune(self) -> None:
        """Remove what the folder holds that the DAG does not name (a resumed pull's staging
        folder may hold anything): the installed folder must be exactly the DAG's."""
        with self._lock, _disk("the model's files"):
            for dirpath, dirnames, filenames in os.walk(self.root, topdown=True):
                here = Path(dirpath)
                for name in filenames:
                    if here / name not in self._files:
                        os.unlink(here / name)
                for name in list(dirnames):
                    if here / name not in self._dirs:
                        shutil.rmtree(here / name)
                        dirnames.remove(name)

    def close(self) -> None:
        """Close the staged files (never raises: the pull's own error is the one to report)."""
        with self._lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def sync(self) -> None:
        """fsync every staged file and folder (before the rename that installs them); a full
        disk found only now is a ``DiskFullError``."""
        self.close()
        with _disk("the model's files"):
            for path in [*sorted(self._files), *sorted(self._dirs, key=lambda p: -len(p.parts))]:
                _fsync(path)


def staged_bytes(staging: Path) -> int:
    """Bytes a staging folder holds on disk (its files are sparse until written)."""
    total = 0
    for dirpath, _, filenames in os.walk(staging):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def install_staged(staging: Path, root: bytes, final: Path) -> None:
    """Move a fully fetched, pruned and synced ``Staging`` folder into place (blocking: run in a
    thread). Its files are the DAG's by construction (every leaf verified, written where its
    verified parent said); the node re-hashes the installed folder as it serves it and checks the
    CID again. PullError (DiskFullError) on any failure; the staging folder is then left to the
    caller."""
    try:
        if final.exists():
            try:
                got = dir_root(final)[0].cid
            except ContentError as exc:
                raise PullError(f"{final} already exists and is not a model folder ({exc}); remove it to pull "
                                f"{to_cid(root)} there") from None
            if got == root:
                shutil.rmtree(staging, ignore_errors=True)
                return
            raise PullError(f"{final} already holds other files (CID {to_cid(got)}); remove it to pull {to_cid(root)} there")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        _fsync(final.parent)
    except OSError as exc:
        _raise_disk(exc, f"the model's folder {final}")


# What describe_remote walks at most: a model folder has tens of files; a hostile DAG whose
# folders link one sub-folder under many names would otherwise multiply entries level by level
# on the event loop (1,000 links, 3 levels: 10^9 entries from three blocks).
MAX_LISTED_ENTRIES = 10_000
MAX_LISTED_DEPTH = 16


async def describe_remote(net: Any, root: bytes, peer: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The files (``[{path, size, cid}]``) of the model folder ``root`` as ``peer`` serves it,
    from its directory nodes and its files' root nodes only (a few KiB; leaves are never
    fetched: a one-block file's size is its link's Tsize). Every block is verified.
    PullError if the peer fails or sends a wrong block."""
    out: list[dict[str, Any]] = []
    try:
        with trio.fail_after(timeout):
            async with net.open_stream(peer, CONTENT_PROTOCOL) as stream:
                async def get(cids: list[bytes]) -> dict[bytes, bytes]:
                    got: dict[bytes, bytes] = {}
                    for i in range(0, len(cids), MAX_WANT):
                        part = cids[i:i + MAX_WANT]
                        await stream.write_frame(encode_want(Want(root, part)))
                        for cid in part:
                            rcid, data = decode_block(await stream.read_frame())
                            if rcid != cid or data is None or not verify(cid, data):
                                raise PullError(f"peer {peer} sent a wrong or no block for {to_cid(cid)}")
                            got[cid] = data
                    return got

                dirs: list[tuple[str, bytes]] = [("", root)]
                entries = depth = 0
                while dirs:
                    depth += 1
                    if depth > MAX_LISTED_DEPTH:
                        raise PullError(f"{to_cid(root)} from {peer} nests folders over {MAX_LISTED_DEPTH} deep")
                    await trio.lowlevel.checkpoint()
                    blocks = await get(list(dict.fromkeys(c for _, c in dirs)))
                    pb: list[tuple[str, bytes]] = []
                    for prefix, cid in dirs:
                        for child, name, tsize in decode_node(blocks[cid]).links:
                            entries += 1
                            if entries > MAX_LISTED_ENTRIES:  # names repeating one sub-folder multiply
                                raise PullError(f"{to_cid(root)} from {peer} lists over {MAX_LISTED_ENTRIES} entries")
                            path = prefix + _safe_name(name)
                            if _is_pb(child):
                                pb.append((path, child))
                            else:
                                out.append({"path": path, "size": tsize, "cid": str(to_cid(child))})
                    dirs = []
                    if pb:
                        nodes = await get(list(dict.fromkeys(c for _, c in pb)))
                        for path, cid in pb:
                            node = decode_node(nodes[cid])
                            if node.kind == _UNIXFS_DIRECTORY:
                                dirs.append((path + "/", cid))
                            else:
                                out.append({"path": path, "size": node.filesize, "cid": str(to_cid(cid))})
    except PullError:
        raise
    except Exception as exc:  # noqa: BLE001 - timeout, reset, malformed: this peer cannot describe it now
        raise PullError(f"peer {peer} could not list the files of {to_cid(root)}: {type(exc).__name__}: {exc}") from None
    return sorted(out, key=lambda f: f["path"].encode())
