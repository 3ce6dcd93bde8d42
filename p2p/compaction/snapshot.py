"""A finished workflow's snapshot: every field a tool shows of it, as content-addressed blocks.

Why: compaction (docs/compaction.md) replaces a finished workflow's history by a summary that
any peer can check. The check is a comparison of CIDs, so the summary must be a pure function of
the events it summarises: two peers that folded the same events, in any causal order, must
build byte-identical blocks. Everything here is pure — no clock, no network, no disk — and is
tested with the fold's hypothesis generators (``tests/compaction``).

A snapshot is one root block and its chunks, all DAG-CBOR (canonical: one value, one encoding):

- root: ``{"v": 1, "t": "workflow-snapshot", "workflow": <workflow_summary>, "tasks": N,
  "chunks": [CID, ...]}``;
- chunk: ``{"v": 1, "t": "tasks", "first": i, "tasks": [<task record>, ...]}``, each encoded
  chunk at most ``max_chunk_bytes`` (a chunk travels as one block: ``clock.max_block_bytes``).

A task record holds the fields :data:`RECORD_FIELDS` of the task's tool view
(``p2p.scheduler.views.task_view``: state, attempts, peer, errors and their order, error, late
results, stats, cached; for a replicated workflow the verdict's peers and disputes), a fixed
list, so a field a later version adds to the tool view does not change snapshot bytes (that
takes a new :data:`SNAPSHOT_VERSION`); plus its ``input`` and its result in the form the event
carried it: ``result`` (the stored dict, embeddings as packed float32 bytes) or ``result_cid``
(the CID of a result block). Nothing is unpacked or re-rounded, so nothing platform-dependent
enters the bytes.

Verification has three answers, not two: the same CID (verified), another CID (forged, or made
from another cut), and :class:`SnapshotError` when this peer cannot build one (the workflow is
not finished at the cut, or a task record is larger than a chunk): then it abstains, it does
not accuse.

``snapshot_at`` folds exactly the given events into a fresh state (the events of a cut, parents
first) and builds the snapshot from it; ``verify_snapshot`` does that and compares root CIDs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from p2p.clock import codec
from p2p.clock.cids import block_cid
from p2p.scheduler import views
from p2p.scheduler.state import TERMINAL_WORKFLOW, State, WorkflowState, apply_event

SNAPSHOT_VERSION = 1
# The tool-view fields a task record keeps (version 1), besides input and result.
RECORD_FIELDS = ("task_id", "state", "attempts", "peer", "peers", "disputed_by", "errors", "error", "late_results",
                 "stats", "cached")
# A chunk's fixed part ({"v", "t", "first", "tasks"} and the array header) stays below this.
_CHUNK_OVERHEAD = 64


class SnapshotError(ValueError):
    """A snapshot that cannot be built: an unknown or unfinished workflow, or a task record
    larger than a chunk may be."""


@dataclass(frozen=True, slots=True)
class FoldInput:
    """One event as the fold takes it (a clock ``Event`` has these fields too)."""

    cid: bytes
    author: str
    height: int
    ops: Sequence[Any]
    parents: Sequence[Any]
    seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A built snapshot: the root's CID and bytes, and every chunk as (CID, bytes), in order."""

    root_cid: Any
    root: bytes
    chunks: tuple[tuple[Any, bytes], ...]
    firsts: tuple[int, ...] = ()  # the index of each chunk's first task (what a status page seeks by)

    def blocks(self) -> list[tuple[Any, bytes]]:
        """Every block, root first: what a peer stores and serves."""
        return [(self.root_cid, self.root), *self.chunks]


def fold_events(events: Iterable[Any], *, max_attempts: int) -> State:
    """A fresh state folded from exactly ``events`` (parents before children)."""
    state = State(max_attempts=max_attempts)
    for ev in events:
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops,
                    parents=[bytes(p) for p in ev.parents], seq=ev.seq)
    return state


def _no_block(_cid: Any) -> None:
    return None  # results are kept in their stored form (below), never loaded


def _raw_outcome(state: State, wf: WorkflowState, task_id: str) -> Any:
    """The Outcome whose result a tool shows for this task (None when there is none)."""
    task = state.task(task_id)
    if wf.replicas > 1:
        index = task.index % len(wf.task_ids)
        verdict = state.verdict(wf, index)
        if verdict.accepted is None:
            return None
        return state.slots_of(wf, index)[verdict.accepted.slot].result
    return task.result


def task_record(state: State, wf: WorkflowState, task_id: str) -> dict[str, Any]:
    """One task as the snapshot keeps it (see the module doc)."""
    task = state.task(task_id)
    view = views.task_view(state, task, False, _no_block)  # without ``waiting``: it depends on the reader
    record = {k: view[k] for k in RECORD_FIELDS if k in view}
    if task.spec.ref is None:
        record["input"] = task.spec.input
    else:  # a chunked submit's input stays in its chunk: the snapshot names it, as the op did
        record["input_ref"] = [task.spec.ref[0], task.spec.ref[1]]
    outcome = _raw_outcome(state, wf, task_id)
    if outcome is not None:
        if outcome.result is not None:
            record["result"] = outcome.result
        elif outcome.result_cid is not None:
            record["result_cid"] = outcome.result_cid
    return record


def _build(state: State, workflow_id: str, max_chunk_bytes: int, every: int) -> Generator[None, None, Snapshot]:
    """The snapshot, built a slice of ``every`` tasks at a time (it yields between slices)."""
    wf = state.workflows.get(workflow_id)
    if wf is None:
        raise SnapshotError(f"unknown workflow {workflow_id[:80]!r}")
    status = state.workflow_status(wf)
    if status not in TERMINAL_WORKFLOW:
        raise SnapshotError(f"workflow {workflow_id} is {status.value}, not finished: only a finished workflow is compacted")
    chunks: list[tuple[Any, bytes]] = []
    firsts: list[int] = []
    batch: list[Any] = []
    size = _CHUNK_OVERHEAD
    first = 0

    def close() -> None:
        nonlocal batch, size, first
        data = codec.encode({"v": SNAPSHOT_VERSION, "t": "tasks", "first": first, "tasks": batch})
        if len(data) > max_chunk_bytes:  # the estimate is exact up to the array header; never trust it blindly
            raise SnapshotError(f"a chunk of {len(batch)} tasks encodes to {len(data)} bytes, over {max_chunk_bytes}")
        chunks.append((block_cid(data), data))
        firsts.append(first)
        first += len(batch)
        batch, size = [], _CHUNK_OVERHEAD

    for index, task_id in enumerate(wf.task_ids):
        if index and index % every == 0:
            yield
        record = task_record(state, wf, task_id)
        cost = len(codec.encode(record))
        if cost + _CHUNK_OVERHEAD > max_chunk_bytes:
            raise SnapshotError(f"task {task_id} alone encodes to {cost} bytes, over a chunk's {max_chunk_bytes}")
        if batch and size + cost > max_chunk_bytes:
            close()
        batch.append(record)
        size += cost
    if batch or not chunks:
        close()
    summary = views.workflow_summary(state, wf)
    summary.pop("compacted")  # the snapshot is what the compaction names: not part of it
    root = codec.encode({
        "v": SNAPSHOT_VERSION, "t": "workflow-snapshot", "workflow": summary,
        "tasks": len(wf.task_ids), "chunks": [cid for cid, _ in chunks],
    })
    return Snapshot(block_cid(root), root, tuple(chunks), tuple(firsts))


def build_snapshot(state: State, workflow_id: str, *, max_chunk_bytes: int) -> Snapshot:
    """The snapshot of ``workflow_id`` as ``state`` holds it; the workflow must be terminal."""
    gen = _build(state, workflow_id, max_chunk_bytes, every=1 << 62)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


async def build_snapshot_async(state: State, workflow_id: str, *, max_chunk_bytes: int, every: int = 256) -> Snapshot:
    """``build_snapshot`` on the event loop, yielding to it every ``every`` tasks (a 25,000-task
    workflow is ~1 s of work). The caller checks the workflow did not change meanwhile."""
    import trio

    gen = _build(state, workflow_id, max_chunk_bytes, every)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value
        await trio.lowlevel.checkpoint()


def snapshot_at(events: Iterable[Any], workflow_id: str, *, max_attempts: int, max_chunk_bytes: int) -> Snapshot:
    """The snapshot of ``workflow_id`` at the cut ``events`` (exactly those, parents first)."""
    return build_snapshot(fold_events(events, max_attempts=max_attempts), workflow_id, max_chunk_bytes=max_chunk_bytes)


def verify_snapshot(root_cid: Any, events: Iterable[Any], workflow_id: str, *, max_attempts: int,
                    max_chunk_bytes: int) -> bool:
    """Whether ``root_cid`` is the snapshot this peer builds from the same cut: re-fold and
    compare. Raises :class:`SnapshotError` when it cannot build one (see the module doc: the
    caller abstains)."""
    mine = snapshot_at(events, workflow_id, max_attempts=max_attempts, max_chunk_bytes=max_chunk_bytes)
    return bytes(mine.root_cid) == bytes(root_cid)


def decode_snapshot(root: bytes, chunks: Sequence[bytes]) -> dict[str, Any]:
    """A snapshot's content as plain values: ``{"workflow": ..., "tasks": [...]}``. ``chunks``
    must be the root's chunks, in its order: each is checked against the CID the root names."""
    head = codec.decode(root)
    if not isinstance(head, dict) or head.get("t") != "workflow-snapshot" or head.get("v") != SNAPSHOT_VERSION:
        raise SnapshotError("not a workflow snapshot")
    named = head.get("chunks")
    if not isinstance(named, list) or len(named) != len(chunks):
        raise SnapshotError(f"{len(chunks)} chunks given, the root names {len(named) if isinstance(named, list) else 'none'}")
    tasks: list[Any] = []
    for cid, data in zip(named, chunks):
        if block_cid(data) != cid:
            raise SnapshotError("a chunk that is not the one the root names")
        part = codec.decode(data)
        if not isinstance(part, dict) or part.get("t") != "tasks" or part.get("first") != len(tasks):
            raise SnapshotError("a chunk out of place")
        tasks.extend(part["tasks"])
    if len(tasks) != head.get("tasks"):
        raise SnapshotError(f"{len(tasks)} task records, the root says {head.get('tasks')}")
    return {"workflow": head["workflow"], "tasks": tasks}


__all__ = ["FoldInput", "Snapshot", "SnapshotError", "build_snapshot", "build_snapshot_async", "decode_snapshot",
           "fold_events", "snapshot_at", "task_record", "verify_snapshot"]
