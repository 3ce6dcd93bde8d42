"""Task inputs in content-addressed chunks (issue 12 item 1).

Why: an inline submit carries every input in its event, and every peer of the network stores
and gossips that event, whether or not it ever runs one of the tasks. A 25,000-row file of
short sentences is ~2 MiB in every peer's history, for good. A chunked submit
(``SubmitOp.chunks``) names blocks of at most ``MAX_CHUNK_INPUTS`` inputs by CID instead: the
event is a few KiB, the submitter stores the chunks, and a peer fetches a chunk only when it
runs (or exports) one of its tasks. The blocks are ordinary DAG-CBOR clock blocks, served by the
blocks protocol the replicator already speaks and checked against their CID on arrival.

A chunk is ``{"t": "inputs", "v": 1, "inputs": [str, ...]}``. Packing is pure
(:func:`pack_inputs`); :class:`InputChunks` reads chunks from the local store or from peers,
verifies them, and keeps the last few decoded (one lock: the exporter reads from a worker
thread while tasks resolve on the event loop).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio

from p2p.clock import codec
from p2p.clock.cids import cid_raw, matches_sha256
from p2p.errors import NodeError
from p2p.scheduler.ops import MAX_CHUNK_INPUTS, MAX_INPUT_CHARS

log = structlog.get_logger("p2p.inputs")

CHUNK_BYTES = 256 << 10  # a chunk's inputs, encoded: small enough that a worker's fetch is cheap
CHUNKS_KEPT = 16  # decoded chunks kept (16 x 256 KiB of text at most)
FETCH_TIMEOUT_S = 30.0
FAILED_MEMORY_S = 5.0  # a chunk no peer served is not asked for again this soon (its tasks wait)


class InputUnavailableError(NodeError):
    """No peer served a chunk a task needs (the submitter is away and nobody else holds it):
    the task may wait and try again (the scheduler reads ``retry_later``)."""

    retry_later = True


class BadChunkError(NodeError):
    """A block is not a chunk of inputs, or lacks the position a task names: the submitter's
    doing, the same on every peer, so a task failed by it is not retried elsewhere."""

    permanent = True


def chunk_block(inputs: Sequence[str]) -> dict[str, Any]:
    """The DAG-CBOR block of one chunk."""
    return {"t": "inputs", "v": 1, "inputs": list(inputs)}


def pack_inputs(inputs: Sequence[str], max_bytes: int = CHUNK_BYTES, max_count: int = MAX_CHUNK_INPUTS) -> list[list[str]]:
    """Split ``inputs`` in order into chunks of at most ``max_count`` inputs and about
    ``max_bytes`` encoded (an input larger than that is a chunk of its own)."""
    out: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for text in inputs:
        n = len(text.encode("utf-8")) + 5  # CBOR text header, at most 5 bytes below 4 GiB
        if cur and (size + n > max_bytes or len(cur) >= max_count):
            out.append(cur)
            cur, size = [], 0
        cur.append(text)
        size += n
    if cur:
        out.append(cur)
    return out


def decode_chunk(data: bytes) -> list[str]:
    """A chunk's inputs, or :class:`BadChunkError` (the CID was checked by whoever stored it)."""
    try:
        obj = codec.decode(data)
    except Exception as exc:  # noqa: BLE001 - any decode fault is a bad chunk
        raise BadChunkError(f"not a DAG-CBOR block: {exc}") from None
    if not isinstance(obj, dict) or obj.get("t") != "inputs" or obj.get("v") != 1:
        raise BadChunkError("not an input chunk (t must be 'inputs', v 1)")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_CHUNK_INPUTS:
        raise BadChunkError(f"an input chunk holds 1 to {MAX_CHUNK_INPUTS} inputs")
    for s in inputs:
        if not isinstance(s, str) or not 1 <= len(s) <= MAX_INPUT_CHARS:
            raise BadChunkError(f"an input chunk's inputs are strings of 1 to {MAX_INPUT_CHARS} characters")
    return inputs


class InputChunks:
    """Resolves a chunked task's input: from this peer's block store, else from peers (the
    submitter first), each block checked against its CID before it is stored or used.

    ``dag`` is the replicator's :class:`p2p.replication.dagservice.DAGService` (None without
    networking: only local chunks resolve); ``peers`` gives the peers to ask after the
    submitter (the connected ones)."""

    def __init__(self, clock: Any, dag: Any = None, peers: Callable[[], Sequence[str]] = lambda: (),
                 *, kept: int = CHUNKS_KEPT, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.clock = clock
        self.dag = dag
        self.peers = peers
        self.kept = kept
        self.timeout_s = timeout_s
        self._lru: OrderedDict[bytes, list[str]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[bytes, trio.Event] = {}
        self._failed: dict[bytes, tuple[float, InputUnavailableError]] = {}  # recent fetches no peer served
        self.fetched = 0  # chunks fetched from peers
        self.refused = 0  # blocks from peers that failed their CID or were not chunks

    # ------------------------------------------------------------ local reads

    def _remember(self, key: bytes, inputs: list[str]) -> None:
        with self._lock:
            self._lru[key] = inputs
            self._lru.move_to_end(key)
            while len(self._lru) > self.kept:
                self._lru.popitem(last=False)

    def local(self, cid: Any) -> list[str] | None:
        """The chunk's inputs if this peer holds the block (blocking on a miss: a SQLite read
        through a reader connection, so any thread may call it; queued writes are seen too)."""
        key = cid_raw(cid)
        with self._lock:
            hit = self._lru.get(key)
            if hit is not None:
                self._lru.move_to_end(key)
                return hit
        data = dict(self.clock.collect_blocks_sync([key], 0, 1, 1 << 62)).get(key)
        if data is None:
            return None
        inputs = decode_chunk(data)
        self._remember(key, inputs)
        return inputs

    def input_local(self, ref: tuple[Any, int]) -> str | None:
        """The input at ``ref`` = (chunk CID, position), if the chunk is here."""
        inputs = self.local(ref[0])
        return None if inputs is None else _at(inputs, ref)

    # ------------------------------------------------------------ from peers

    async def input_of(self, ref: tuple[Any, int], submitter: str) -> str:
        """The input at ``ref``, fetched from the submitter or another peer if need be."""
        hit = await self._held(ref[0])
        if hit is None:
            hit = await self._fetch(ref[0], submitter)
        return _at(hit, ref)

    async def _held(self, cid: Any) -> list[str] | None:
        """The chunk's inputs if this peer holds it (decoded ones first; a store read on a
        worker thread otherwise), without asking peers."""
        with self._lock:
            hit = self._lru.get(cid_raw(cid))
        if hit is None and self.clock.has(cid):
            hit = await trio.to_thread.run_sync(self.local, cid)
        return hit

    async def _fetch(self, cid: Any, submitter: str) -> list[str]:
        key = cid_raw(cid)
        while True:
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < FAILED_MEMORY_S:
                raise failed[1]  # the fetch just failed: the tasks waiting on it share the answer
            if key not in self._fetching:
                break
            await self._fetching[key].wait()  # one fetch per chunk: the others wait for it
            hit = await self._held(cid)  # (fetched and stored, perhaps evicted since)
            if hit is not None:
                return hit
        done = self._fetching[key] = trio.Event()
        try:
            got = await self._fetch_from_peers(cid, key, submitter)
            self._failed.pop(key, None)
            return got
        except InputUnavailableError as exc:
            now = time.monotonic()
            for k in [k for k, (t, _) in self._failed.items() if now - t >= FAILED_MEMORY_S]:
                del self._failed[k]
            self._failed[key] = (now, exc)
            raise
        finally:
            del self._fetching[key]
            done.set()

    async def _fetch_from_peers(self, cid: Any, key: bytes, submitter: str) -> list[str]:
        if self.dag is None:
            raise InputUnavailableError(f"input chunk {cid} is not held here and the node runs without networking")
        asked: list[str] = []
        for peer in dict.fromkeys([submitter, *self.peers()]):
            if peer == getattr(self.clock, "peer_id", None):
                continue
            asked.append(peer)
            try:
                with trio.fail_after(self.timeout_s):
                    blocks = await self.dag.get_blocks(peer, [key])
            except Exception as exc:  # noqa: BLE001 - the next peer is asked
                log.info("input chunk fetch failed", peer=peer, cid=str(cid), error=str(exc))
                continue
            for raw, data in blocks:
                if raw != key:
                    continue
                try:
                    if not matches_sha256(cid, data):
                        raise BadChunkError(f"the bytes do not hash to {cid}")
                    inputs = decode_chunk(data)
                    self.clock.add_raw_block(cid, data)  # kept for exports and the chunk's other tasks
                except Exception as exc:  # noqa: BLE001 - a wrong block: counted, the next peer is asked
                    self.refused += 1
                    log.warning("refused an input chunk from a peer", peer=peer, cid=str(cid), error=str(exc))
                    break
                self.fetched += 1
                self._remember(key, inputs)
                return inputs
        raise InputUnavailableError(f"input chunk {cid} was served by none of the peers asked "
                                    f"({', '.join(asked) or 'none connected'}); its submitter keeps it")


def _at(inputs: list[str], ref: tuple[Any, int]) -> str:
    pos = ref[1]
    if not 0 <= pos < len(inputs):
        raise BadChunkError(f"input chunk {ref[0]} holds {len(inputs)} inputs; the task names position {pos}")
    return inputs[pos]
