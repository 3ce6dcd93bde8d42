"""Status pages of a dropped workflow, read from its snapshot's chunks (docs/compaction.md §5).

Why: once a peer drops a compacted workflow's records (``State.drop``), the verified snapshot is
the workflow. A status page must still cost O(page), not a decode of every chunk, and show every
field ``get_workflow_status`` showed before the drop: the snapshot's task records are those fields
(``snapshot.RECORD_FIELDS``), plus the input and the result in its stored form, which is turned
into the tool's form here exactly as ``views`` does it.

``SnapshotPages`` keeps the last few decoded chunks (a chunk is up to ``clock.max_block_bytes``;
paging through a workflow reads each chunk once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from p2p.clock import codec
from p2p.clock.cids import block_cid, cid_raw
from p2p.compaction.snapshot import RECORD_FIELDS, Snapshot, SnapshotError
from p2p.scheduler.dropped import MAX_SPECS, Dropped
from p2p.scheduler import views
from p2p.scheduler.views import BlockLoader

# Reads a stored block by its raw CID bytes (None when it is not here).
ChunkLoader = Callable[[bytes], bytes | None]


class SnapshotPages:
    """Task records of dropped workflows, by index, a chunk at a time (an LRU of decoded chunks)."""

    def __init__(self, load: ChunkLoader, keep: int = 4) -> None:
        import threading

        self._load = load
        self.keep = keep
        self._decoded: OrderedDict[bytes, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()  # a worker thread may warm it (``Node.warm_status``) while the loop reads

    def chunks_for(self, gone: Dropped, offset: int, limit: int) -> int:
        """How many chunks records(offset, limit) reads."""
        end = min(gone.total, offset + limit)
        return 0 if end <= offset else gone.chunk_for(end - 1) - gone.chunk_for(offset) + 1

    def _chunk(self, gone: Dropped, pos: int) -> list[dict[str, Any]]:
        first, cid = gone.chunks[pos]
        with self._lock:
            got = self._decoded.get(cid)
            if got is not None:
                self._decoded.move_to_end(cid)
                return got
        data = self._load(cid)
        if data is None:
            raise SnapshotError(f"chunk {pos} of the snapshot of workflow {gone.workflow_id} is missing from this node")
        if cid_raw(block_cid(data)) != cid:
            raise SnapshotError(f"chunk {pos} of the snapshot of workflow {gone.workflow_id} does not match its CID")
        part = codec.decode(data)
        if not isinstance(part, dict) or part.get("first") != first or not isinstance(part.get("tasks"), list):
            raise SnapshotError(f"chunk {pos} of the snapshot of workflow {gone.workflow_id} is out of place")
        with self._lock:
            self._decoded[cid] = part["tasks"]
            while len(self._decoded) > self.keep:
                self._decoded.popitem(last=False)
        return part["tasks"]

    def records(self, gone: Dropped, offset: int, limit: int) -> list[dict[str, Any]]:
        """Task records ``offset`` .. ``offset + limit`` (fewer at the end), in task order."""
        out: list[dict[str, Any]] = []
        end = min(gone.total, offset + limit)
        index = offset
        while index < end:
            pos = gone.chunk_for(index)
            first = gone.chunks[pos][0]
            tasks = self._chunk(gone, pos)
            take = tasks[index - first: end - first]
            if not take:
                raise SnapshotError(f"the snapshot of workflow {gone.workflow_id} has no task {index}")
            out.extend(take)
            index += len(take)
        return out


def task_view(record: dict[str, Any], include_result: bool, load_block: BlockLoader) -> dict[str, Any]:
    """The tool view of one task record (``views.task_view``'s fields, in its order)."""
    view = {k: record[k] for k in RECORD_FIELDS if k in record}
    if include_result and ("result" in record or "result_cid" in record):
        views.result_field(view, record.get("result"), record.get("result_cid"), record.get("peer"), load_block)
    return view


def workflow_status(gone: Dropped, pages: SnapshotPages, *, include_results: bool, offset: int, limit: int,
                    load_block: BlockLoader) -> dict[str, Any]:
    """``views.workflow_status`` of a dropped workflow: its summary and one page of tasks."""
    out = gone.view()
    records = pages.records(gone, offset, limit) if limit > 0 and offset < gone.total else []
    out["offset"] = offset
    out["limit"] = limit
    out["tasks"] = [task_view(r, include_results, load_block) for r in records]
    out["has_more"] = offset + len(records) < gone.total
    return out


def status_of(state: Any, wf: Any, pages: SnapshotPages, *, include_results: bool, offset: int, limit: int,
              load_block: BlockLoader, waiting: Any = None) -> dict[str, Any]:
    """``get_workflow_status`` of any workflow: from the fold, or from the snapshot of one whose
    records were dropped (raises ``SnapshotError`` when a chunk it needs is not here)."""
    gone = state.dropped.get(wf.workflow_id)
    if gone is None:
        return views.workflow_status(state, wf, include_results=include_results, offset=offset, limit=limit,
                                     load_block=load_block, waiting=waiting)
    out = workflow_status(gone, pages, include_results=include_results, offset=offset, limit=limit,
                          load_block=load_block)
    if wf.workflow_id in state.expired:  # its result blocks were deleted here (p2p.compaction.expiry)
        out["compacted"] = {**out["compacted"], "results_expired": True}
    return out


def dropped_from_snapshot(state: Any, workflow_id: str, snap: Snapshot) -> Dropped:
    """The record ``State.drop`` keeps of ``workflow_id``, from its snapshot (which the caller
    built and found to be the one the compaction in force names)."""
    wf = state.workflows[workflow_id]
    head = codec.decode(snap.root)
    specs: dict[tuple[str, str | None, str | None], None] = {}
    complete = True
    for tid in (wf.task_ids[:1] if wf.lazy else wf.task_ids):  # a lazy workflow's tasks share one template
        spec = state.task(tid).spec
        specs[(spec.model, spec.model_cid, _task_name(spec.task))] = None
        if len(specs) > MAX_SPECS:
            complete = False
            break
    return Dropped(workflow_id, dict(head["workflow"]), str(wf.compacted.snapshot), wf.compacted.where.who,
                   wf.compacted.stamp, tuple((first, cid_raw(cid)) for first, (cid, _) in zip(snap.firsts, snap.chunks)),
                   state.outvoted_share(workflow_id), tuple(specs)[:MAX_SPECS], complete)


def _task_name(task: str | None) -> str | None:
    """A task name as inference reads it (its spellings are one task); an unknown one as given."""
    if task is None:
        return None
    from inference.errors import InferenceError
    from inference.tasks import normalize_task

    try:
        return normalize_task(task)
    except InferenceError:
        return task


_RESULT_CID_KEY = b"\x6aresult_cid"  # the map key "result_cid" as DAG-CBOR writes it (text of 10 bytes)


def chunk_result_cids(datas: Iterable[bytes | None]) -> list[Any]:
    """The result blocks snapshot chunks' task records name (results too large to inline). A
    chunk whose bytes do not hold the key is not decoded: most results travel inline."""
    out = []
    for data in datas:
        if data is None or _RESULT_CID_KEY not in data:
            continue
        for record in codec.decode(data)["tasks"]:
            cid = record.get("result_cid")
            if cid is not None:
                out.append(cid)
    return out


def result_cids(snap: Snapshot) -> list[Any]:
    """The result blocks a snapshot's task records name (they are kept apart from it)."""
    return chunk_result_cids(data for _, data in snap.chunks)


__all__ = ["ChunkLoader", "SnapshotPages", "chunk_result_cids", "dropped_from_snapshot", "result_cids", "status_of", "task_view",
           "workflow_status"]
