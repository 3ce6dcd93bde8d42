"""A workflow's results out to a file: ``.jsonl``, ``.npy`` or ``.parquet`` (issue 12, item 2).

Why a file and not more status pages: a 100,000-document embedding job is 150 MB of float32;
as JSON status pages it is ~1 GB of text through MCP, a page at a time. The export walks the
workflow a page of tasks at a time (``PAGE`` tasks), so it holds one page of results in memory,
never the workflow's; results stored as their own clock blocks are read a page at a time on a
worker thread's read-only connection. Encoding and writing run in a worker thread too
(``trio.to_thread``): the event loop never waits on the disk.

Nothing is written on bad input, and nothing half-written is ever seen at the target path: the
rows go to a temporary file in the target directory (``.<name>.<random>.part``), fsynced, then
moved into place in one step (a hard link when the target must not be replaced, so two exports
racing for one path cannot both win; ``os.replace`` with ``overwrite``). Any error on the way
(a non-embedding result in an ``.npy`` export, a full disk, a cancelled call) removes the
temporary file.

Formats (rows always in task order, ``<workflow_id>/<index>``):

- ``jsonl``: one JSON object per task, ``{"task_id", "input", "output"}``; ``output`` is what
  ``get_workflow_status`` returns as ``result``. With ``partial``, a task without a result has
  ``"output": null`` plus ``"state"`` and, when there is one, ``"error"``.
- ``npy``: the embeddings as one N x D little-endian float32 matrix (``np.load`` reads it), N the
  workflow's task count and D the first result's dimension. Every exported result must be an
  embedding of dimension D, else the export fails (nothing written). With ``partial``, the row
  of a task without a result is all NaN (a real embedding is never NaN, and the row numbers stay
  the task indexes); the reply counts them (``without_output``).
- ``parquet`` (needs ``pyarrow``): columns ``task_id``, ``input``, ``state``, ``error`` (strings;
  ``error`` null unless the task has none), ``embedding`` (list<float32>, null when the output
  has none) and ``output`` (the rest of the output as a JSON string, null when nothing is left:
  an embedding output is all in ``embedding``). One row group per page. With ``partial``, a task
  without a result has both output columns null and its state and error set.

"Finished" means every task done (a completed workflow, or one cancelled after it completed).
A workflow with a task not done (pending, running, failed or cancelled) is refused unless
``partial`` is true — a failed workflow's export would otherwise look complete while rows are
missing.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import structlog
import trio

from p2p.clock import codec
from p2p.clock.cids import cid_raw
from p2p.compaction.pages import SnapshotPages
from p2p.compaction.snapshot import SnapshotError
from p2p.errors import NodeError
from p2p.fsutil import fsync_dir_best_effort
from p2p.scheduler.results import unpack_result
from p2p.scheduler.state import State, TaskStatus
from p2p.scheduler.views import _json_safe, task_view

log = structlog.get_logger("p2p.export")

FORMATS = ("jsonl", "npy", "parquet")
SUFFIXES = {".jsonl": "jsonl", ".npy": "npy", ".parquet": "parquet"}
PAGE = 512  # tasks per page: one page of results in memory, one worker-thread write
_PACKED = "embedding_f32"  # how p2p.scheduler.results stores an embedding

# Reads result blocks by binary CID, on the calling (worker) thread: binary CID -> block bytes,
# the blocks not held here left out.
BlocksLoader = Callable[[list[bytes]], dict[bytes, bytes]]
ProgressFn = Callable[[int, int], Awaitable[None]]


@dataclass(slots=True)
class ExportRow:
    """One task as read from the state on the event loop: cheap references, no decoding."""

    index: int
    task_id: str
    input: str
    state: str
    error: str | None
    stored: dict[str, Any] | None = None  # the result as stored inline in the clock
    cid: Any = None  # the result's own block, when stored apart
    ref: Any = None  # (chunk CID, position) of a chunked submit's input, until resolved


@dataclass(slots=True)
class Resolved:
    """A row with its result decoded (stored form: embeddings still packed float32 bytes)."""

    row: ExportRow
    stored: dict[str, Any] | None
    note: str | None  # why a done task has no output here (block missing, unreadable)


class RowWriter(Protocol):
    def write(self, rows: list[Resolved]) -> None: ...
    def finish(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------ checks


def infer_format(path: Path, fmt: str | None) -> str:
    """The format asked for, else the one the path's extension names. The file name must end in
    its format's extension either way: the node writes result files, never a file of another
    kind (an export named ``~/.bashrc`` would put chosen text where a shell runs it)."""
    if fmt is not None:
        name = fmt.strip().lower().lstrip(".")
        if name not in FORMATS:
            raise NodeError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
        if SUFFIXES.get(path.suffix.lower()) != name:
            raise NodeError(f"the file name must end in .{name} for format {name!r}, got {path.name!r} "
                            "(the node writes only result files)")
        return name
    got = SUFFIXES.get(path.suffix.lower())
    if got is None:
        raise NodeError(f"cannot tell the format from the extension {path.suffix or '(none)'!r} of {str(path)!r}; "
                        f"name the file .jsonl, .npy or .parquet, or give the format")
    return got


def check_target(path: Path, overwrite: bool, protected: Path | None = None) -> None:
    """Refuse, before any work, a target that cannot be written, or one inside ``protected``
    (the node's data directory: its clock, keys and caches are never an export's target), both
    compared after resolving links (stat calls: run it in a thread)."""
    if not path.is_absolute():
        raise NodeError(f"the path must be absolute (it is a path on the node's machine), got {str(path)!r}")
    if protected is not None:
        real, guard = Path(os.path.realpath(path)), Path(os.path.realpath(protected))
        if real == guard or guard in real.parents:
            raise NodeError(f"{str(path)!r} is inside the node's data directory {str(protected)!r}; export elsewhere")
    parent = path.parent
    if not parent.exists():
        raise NodeError(f"the directory {str(parent)!r} does not exist; create it first")
    if not parent.is_dir():
        raise NodeError(f"{str(parent)!r} is not a directory")
    if path.is_dir():
        raise NodeError(f"{str(path)!r} is a directory; give a file path")
    if path.exists() and not overwrite:
        raise NodeError(f"{str(path)!r} already exists; pass overwrite=true to replace it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NodeError(f"the directory {str(parent)!r} is not writable by the node")


def need_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise NodeError("the parquet format needs the pyarrow package, which is not installed on the node: "
                        "pip install pyarrow (or export .jsonl / .npy)") from None
    return pyarrow


def unfinished_error(state: State, wf: Any) -> NodeError:
    counts = state.counts(wf)
    total = len(wf.task_ids)
    status = state.workflow_status(wf).value
    parts = [f"{counts[TaskStatus.DONE]} of {total} tasks done"]
    for label, st in (("failed", TaskStatus.FAILED), ("cancelled", TaskStatus.CANCELLED)):
        if counts[st]:
            parts.append(f"{counts[st]} {label}")
    return NodeError(f"workflow {wf.workflow_id} is {status}, not completed ({', '.join(parts)}); "
                     f"wait for it, or pass partial=true to export the results there are")


# ------------------------------------------------------------------ reading


def page_rows(state: State, wf: Any, offset: int, limit: int) -> list[ExportRow]:
    """Tasks ``offset`` .. ``offset + limit`` of ``wf`` as rows (synchronous: one consistent
    view of the state). The state and error are what ``get_workflow_status`` shows; the result
    is the task's standing one (for a replicated task, the accepted replica's)."""
    out = []
    for index in range(offset, min(offset + limit, len(wf.task_ids))):
        task = state.task(wf.task_ids[index])
        status = state.logical_status(task)  # what task_view shows (the verdict's, when replicated)
        if status is TaskStatus.DONE:
            row = ExportRow(index, task.task_id, task.spec.input, status.value, None, ref=task.spec.ref)
        else:  # the full view only for a row that needs its error
            view = task_view(state, task, False, lambda cid: None)
            row = ExportRow(index, task.task_id, task.spec.input, view["state"], view.get("error"), ref=task.spec.ref)
        if row.state == TaskStatus.DONE.value:
            result = _standing_result(state, wf, task, index)
            if result is not None:
                if result.result is not None:
                    row.stored = result.result
                else:
                    row.cid = result.result_cid
        out.append(row)
    return out


def record_rows(records: list[dict[str, Any]], offset: int) -> list[ExportRow]:
    """``page_rows`` of a dropped workflow: rows from its snapshot's task records (which hold
    what the tool view showed, the input, and the standing result in its stored form)."""
    out = []
    for i, r in enumerate(records):
        done = r["state"] == TaskStatus.DONE.value
        ref = r.get("input_ref")
        row = ExportRow(offset + i, r["task_id"], r.get("input", ""), r["state"], None if done else r.get("error"),
                        ref=(ref[0], ref[1]) if ref is not None else None)
        if done:
            row.stored, row.cid = r.get("result"), r.get("result_cid")
        out.append(row)
    return out


class PageReader:
    """Pages of rows of one workflow, from the live state or, once the workflow's records are
    dropped after compaction, from its snapshot's chunks (read on a worker thread). A chunked
    submit's inputs are read through ``inputs`` (``p2p.content.inputs.InputChunks``: held
    chunks, else fetched from peers)."""

    def __init__(self, get_state: Callable[[], State], workflow_id: str, load_blocks: BlocksLoader,
                 inputs: Any = None, *, with_inputs: bool = True) -> None:
        self.get_state = get_state
        self.workflow_id = workflow_id
        self.pages = SnapshotPages(lambda raw: load_blocks([raw]).get(raw), keep=2)
        self.inputs = inputs
        # False: the caller reads results only (an index, an .npy): chunked inputs stay unread
        self.with_inputs = with_inputs

    async def rows(self, offset: int, limit: int) -> list[ExportRow]:
        state = self.get_state()
        wf = state.workflows[self.workflow_id]
        gone = state.dropped.get(self.workflow_id)
        if gone is None:
            out = page_rows(state, wf, offset, limit)
        else:
            try:
                records = await trio.to_thread.run_sync(self.pages.records, gone, offset, limit)
            except SnapshotError as exc:
                raise NodeError(f"workflow {self.workflow_id} is compacted and its snapshot cannot be read here: {exc}; "
                                f"nothing was written") from None
            out = record_rows(records, offset)
        for row in out:
            if row.ref is None or not self.with_inputs:
                continue
            if self.inputs is None:
                raise NodeError(f"workflow {self.workflow_id} keeps its inputs in chunks, which this reader cannot fetch")
            try:
                row.input = await self.inputs.input_of(row.ref, wf.submitter)
            except NodeError as exc:
                if not getattr(exc, "permanent", False):  # unreachable now: try again later
                    raise NodeError(f"task {row.task_id}: its input cannot be read now: {exc}; nothing was written") from None
                row.input = ""  # the submitter's chunk lacks it (its task failed for that, on every peer)
            row.ref = None
        return out


def _standing_result(state: State, wf: Any, task: Any, index: int) -> Any:
    if wf.replicas <= 1:
        return task.result
    v = state.verdict(wf, index)
    return state.slots_of(wf, index)[v.accepted.slot].result if v.accepted is not None else None


def resolve(rows: list[ExportRow], load_blocks: BlocksLoader, expired: bool = False) -> list[Resolved]:
    """Decode each row's result, reading those stored as blocks (worker thread). ``expired``:
    the rows' workflow had its result blocks deleted here (results.retention_s)."""
    wanted = []
    for r in rows:
        if r.stored is None and r.cid is not None:
            try:
                wanted.append(cid_raw(r.cid))
            except Exception:  # noqa: BLE001 - a peer's malformed CID breaks its own row only
                pass
    blocks = load_blocks(wanted) if wanted else {}
    out = []
    for r in rows:
        stored, note = r.stored, None
        if stored is None and r.cid is not None:
            try:
                data = blocks.get(cid_raw(r.cid))
            except Exception:  # noqa: BLE001
                data, note = None, f"malformed result CID {str(r.cid)[:100]!r}"
            if data is None:
                note = note or (f"the result block {r.cid} expired on this peer (results.retention_s after the "
                                f"workflow was compacted)" if expired else
                                f"the result block {r.cid} has not reached this peer yet")
            else:
                try:
                    stored = codec.decode(data)
                except Exception as exc:  # noqa: BLE001
                    note = f"unreadable result block: {type(exc).__name__}: {exc}"
            if stored is not None and not isinstance(stored, dict):
                stored, note = None, "unreadable result block: not a map"
        elif r.state == TaskStatus.DONE.value and stored is None:
            note = "no result stands for this task"
        out.append(Resolved(r, stored, note))
    return out


def _missing(res: Resolved, partial: bool) -> bool:
    """Whether the row has no output; without ``partial`` a done task without one is an error."""
    if res.stored is not None:
        return False
    if not partial:
        raise NodeError(f"task {res.row.task_id}: {res.note or 'no result'}; nothing was written "
                        f"(try again shortly, or pass partial=true)")
    return True


def _embedding_bytes(res: Resolved, partial: bool) -> bytes | None:
    """The packed float32 embedding of a row (None when the row has no output)."""
    if _missing(res, partial):
        return None
    packed = res.stored.get(_PACKED) if res.stored is not None else None
    if not isinstance(packed, (bytes, bytearray)) or len(packed) % 4:
        keys = ", ".join(sorted(str(k) for k in (res.stored or {}))) or "nothing"
        raise NodeError(f"task {res.row.task_id}: its output is not an embedding (it has {keys}); .npy holds "
                        f"embeddings only: export .jsonl or .parquet instead; nothing was written")
    return bytes(packed)


def _json_output(res: Resolved, partial: bool) -> tuple[Any, str | None]:
    """(JSON output, error) of a row; the error of a row without output (partial)."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    if _missing(res, partial):
        return None, res.row.error or res.note
    try:
        rest = dict(res.stored)
        packed = rest.pop(_PACKED, None)
        out = _json_safe(unpack_result(rest))  # what get_workflow_status shows, the embedding aside:
        if packed is not None:  # its floats are JSON-safe as they come (no walk over 384 of them)
            out["embedding"] = np.frombuffer(packed, dtype="<f4").astype(float).tolist()
        return out, None
    except Exception as exc:  # noqa: BLE001 - a peer's malformed result
        if not partial:
            raise NodeError(f"task {res.row.task_id}: unreadable result: {type(exc).__name__}: {exc}; nothing was written") from None
        return None, f"unreadable result: {type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ writers (worker thread)


class JsonlWriter:
    """One JSON object per line, UTF-8, in task order."""

    def __init__(self, fh: Any, partial: bool) -> None:
        self.fh, self.partial = fh, partial
        self.rows = self.with_output = 0

    def write(self, rows: list[Resolved]) -> None:
        lines = []
        for res in rows:
            output, error = _json_output(res, self.partial)
            obj: dict[str, Any] = {"task_id": res.row.task_id, "input": res.row.input, "output": output}
            if output is None:
                obj["state"] = res.row.state
                if error is not None:
                    obj["error"] = error
            else:
                self.with_output += 1
            lines.append(json.dumps(obj, ensure_ascii=False, allow_nan=False))
        try:
            data = ("\n".join(lines) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in some input: that line escaped (still valid JSON)
            data = b"".join(_utf8_line(line) for line in lines)
        self.fh.write(data)
        self.rows += len(rows)

    def finish(self) -> dict[str, Any]:
        return {}


def _utf8_line(line: str) -> bytes:
    try:
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(json.loads(line), ensure_ascii=True) + "\n").encode("ascii")


class NpyWriter:
    """An N x D ``<f4`` matrix: the header first (N and D are known), then rows as raw bytes —
    the stored float32 bytes as they are, so nothing is converted."""

    def __init__(self, fh: Any, partial: bool, n: int, d: int) -> None:
        import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
        self.fh, self.partial, self.n, self.d = fh, partial, n, d
        self.rows = self.with_output = 0
        self._nan = np.full(d, np.nan, dtype="<f4").tobytes()
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})

    def write(self, rows: list[Resolved]) -> None:
        parts = []
        for res in rows:
            packed = _embedding_bytes(res, self.partial)
            if packed is None:
                parts.append(self._nan)
                continue
            if len(packed) != 4 * self.d:
                raise NodeError(f"task {res.row.task_id}: its embedding has {len(packed) // 4} dimensions, the first "
                                f"result's {self.d}; one .npy matrix needs one dimension: nothing was written")
            parts.append(packed)
            self.with_output += 1
        self.fh.write(b"".join(parts))
        self.rows += len(rows)

    def finish(self) -> dict[str, Any]:
        if self.rows != self.n:  # the header promised n rows
            raise NodeError(f"wrote {self.rows} rows where the header says {self.n}; nothing was written")
        return {"shape": [self.n, self.d]}


class ParquetWriter:
    """A Parquet file with one row group per page (pyarrow)."""

    def __init__(self, fh: Any, partial: bool) -> None:
        pa = need_pyarrow()
        import pyarrow.parquet as pq

        self.pa, self.partial = pa, partial
        self.rows = self.with_output = 0
        self.schema = pa.schema([
            ("task_id", pa.string()), ("input", pa.string()), ("state", pa.string()), ("error", pa.string()),
            ("embedding", pa.list_(pa.float32())), ("output", pa.string()),
        ])
        self._w = pq.ParquetWriter(fh, self.schema)

    def write(self, rows: list[Resolved]) -> None:
        import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
        pa = self.pa
        errors, outputs, offsets, mask, values = [], [], [0], [], []
        for res in rows:
            if _missing(res, self.partial):
                errors.append(res.row.error or res.note)
                outputs.append(None)
                mask.append(True)
                offsets.append(offsets[-1])
                continue
            try:
                rest = dict(res.stored)
                packed = rest.pop(_PACKED, None)
                emb = np.frombuffer(packed, dtype="<f4") if packed is not None else None
                tail = _json_safe(unpack_result(rest)) if rest else None
            except Exception as exc:  # noqa: BLE001 - a peer's malformed result
                if not self.partial:
                    raise NodeError(f"task {res.row.task_id}: unreadable result: {type(exc).__name__}: {exc}; "
                                    f"nothing was written") from None
                errors.append(f"unreadable result: {type(exc).__name__}: {exc}")
                outputs.append(None)
                mask.append(True)
                offsets.append(offsets[-1])
                continue
            self.with_output += 1
            errors.append(None)
            outputs.append(json.dumps(tail, ensure_ascii=False, allow_nan=False) if tail else None)
            mask.append(emb is None)
            if emb is not None:
                values.append(emb)
            offsets.append(offsets[-1] + (len(emb) if emb is not None else 0))
        flat = np.concatenate(values) if values else np.zeros(0, dtype="<f4")
        emb_col = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.float32()),
                                           mask=pa.array(mask, pa.bool_()))
        batch = pa.RecordBatch.from_arrays([
            pa.array([r.row.task_id for r in rows], pa.string()),
            pa.array([r.row.input for r in rows], pa.string()),
            pa.array([r.row.state for r in rows], pa.string()),
            pa.array(errors, pa.string()),
            emb_col,
            pa.array(outputs, pa.string()),
        ], schema=self.schema)
        self._w.write_batch(batch)
        self.rows += len(rows)

    def finish(self) -> dict[str, Any]:
        self._w.close()  # the footer; the file object stays open
        return {}


# ------------------------------------------------------------------ the file


class _Target:
    """The temporary file beside the target, and its move into place (worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
        except OSError as exc:
            raise NodeError(f"cannot write in {str(path.parent)!r}: {exc.strerror or exc}") from None
        self.fh = os.fdopen(fd, "wb", buffering=1 << 20)

    def commit(self, overwrite: bool) -> int:
        """fsync, then move into place; returns the file's size."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        size = os.fstat(self.fh.fileno()).st_size
        self.fh.close()
        if overwrite:
            os.replace(self.tmp, self.path)
        else:
            try:
                os.link(self.tmp, self.path)  # fails if the path exists: no export replaces a file unasked
            except FileExistsError:
                raise NodeError(f"{str(self.path)!r} already exists (written while exporting); pass overwrite=true "
                                f"to replace it; nothing was written") from None
            except OSError:  # a file system without hard links
                if self.path.exists():
                    raise NodeError(f"{str(self.path)!r} already exists; pass overwrite=true to replace it") from None
                os.replace(self.tmp, self.path)
            else:
                os.unlink(self.tmp)
        fsync_dir_best_effort(self.path.parent)  # the rename itself durable
        return size

    def discard(self) -> None:
        try:
            self.fh.close()
        except Exception:  # noqa: BLE001 - already failing; the file goes anyway
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------ the export


async def export_results(
    get_state: Callable[[], State], workflow_id: str, path: str | os.PathLike[str], fmt: str | None,
    partial: bool, load_blocks: BlocksLoader, *, overwrite: bool = False, page: int = PAGE,
    progress: ProgressFn | None = None, protected: Path | None = None, inputs: Any = None,
) -> dict[str, Any]:
    """Export one workflow's results to ``path`` (see the module doc). ``get_state`` returns
    the live state (looked up each page, never a stale object); ``load_blocks`` reads result
    blocks on a worker thread. Returns {workflow_id, path, format, state, partial, rows,
    with_output, without_output, bytes, shape (npy, else None), seconds}. Raises NodeError, and
    leaves nothing at ``path``, on any bad input or failure."""
    t0 = time.perf_counter()
    if not isinstance(partial, bool) or not isinstance(overwrite, bool):
        raise NodeError("partial and overwrite must be true or false")
    if not isinstance(page, int) or page < 1:
        raise NodeError("page must be an integer >= 1")
    target = Path(os.fspath(path)).expanduser()
    name = infer_format(target, fmt)
    state = get_state()
    wf = state.workflows.get(workflow_id)
    if wf is None:
        raise NodeError(f"unknown workflow id {workflow_id!r}; list_workflows shows the known ones")
    wstate = state.workflow_status(wf)
    if state.counts(wf)[TaskStatus.DONE] != len(wf.task_ids) and not partial:
        raise unfinished_error(state, wf)
    if name == "parquet":
        need_pyarrow()
    await trio.to_thread.run_sync(check_target, target, overwrite, protected)
    total = len(wf.task_ids)
    reader = PageReader(get_state, workflow_id, load_blocks, inputs, with_inputs=name != "npy")  # .npy: vectors only
    dim = await _first_dim(reader, total, load_blocks, page, partial) if name == "npy" else 0

    def open_writer() -> tuple[_Target, RowWriter]:
        tgt = _Target(target)
        try:
            if name == "jsonl":
                return tgt, JsonlWriter(tgt.fh, partial)
            if name == "npy":
                return tgt, NpyWriter(tgt.fh, partial, total, dim)
            return tgt, ParquetWriter(tgt.fh, partial)
        except BaseException:
            tgt.discard()
            raise

    expired = workflow_id in state.expired

    def write_page(writer: RowWriter, rows: list[ExportRow]) -> None:
        writer.write(resolve(rows, load_blocks, expired))

    tgt, writer = await trio.to_thread.run_sync(open_writer)
    done = False
    try:
        for offset in range(0, total, page):
            rows = await reader.rows(offset, page)
            await trio.to_thread.run_sync(write_page, writer, rows)
            if progress is not None:
                await progress(offset + len(rows), total)
        extra = await trio.to_thread.run_sync(writer.finish)
        size = await trio.to_thread.run_sync(tgt.commit, overwrite)
        done = True
    except NodeError:
        raise
    except OSError as exc:
        raise NodeError(f"writing {str(target)!r} failed: {exc.strerror or exc}; nothing was written") from None
    except Exception as exc:  # e.g. a value JSON cannot hold: one clear line, not a traceback to the caller
        log.exception("export failed", workflow_id=workflow_id, path=str(target))
        raise NodeError(f"exporting {workflow_id} to {str(target)!r} failed: {type(exc).__name__}: {exc}; "
                        f"nothing was written") from None
    finally:
        if not done:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(tgt.discard)
    rows_written = getattr(writer, "rows", 0)
    with_output = getattr(writer, "with_output", 0)
    out = {
        "workflow_id": workflow_id, "path": str(target), "format": name, "state": wstate.value, "partial": partial,
        "rows": rows_written, "with_output": with_output, "without_output": rows_written - with_output,
        "bytes": size, "shape": extra.get("shape"), "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("workflow results exported", **{k: v for k, v in out.items() if k != "partial"})
    return out


async def _first_dim(reader: PageReader, total: int, load_blocks: BlocksLoader, page: int, partial: bool) -> int:
    """D of an ``.npy`` export: the dimension of the first task's result that has one (the
    header comes first). Scans pages until a result, reading at most one block per page."""
    workflow_id = reader.workflow_id
    for offset in range(0, total, page):
        await trio.sleep(0)  # one page at a time: a long scan of unfinished tasks never holds the loop
        rows = await reader.rows(offset, page)
        first = next((r for r in rows if r.stored is not None or r.cid is not None), None)
        if first is None:
            continue
        res = (await trio.to_thread.run_sync(resolve, [first], load_blocks))[0]
        packed = _embedding_bytes(res, partial)
        if packed is None:
            continue  # its block is not here (partial): look further
        if not packed:
            raise NodeError(f"task {first.task_id}: its embedding is empty; nothing to write as .npy")
        return len(packed) // 4
    raise NodeError(f"workflow {workflow_id} has no result yet, so the embedding dimension of an .npy export is "
                    f"unknown; nothing was written")


def node_blocks_loader(clock: Any) -> BlocksLoader:
    """A ``BlocksLoader`` over a node's Merkle clock: its read-only connection pool, any thread."""

    def load(raws: list[bytes]) -> dict[bytes, bytes]:
        return dict(clock.collect_blocks_sync(raws, 0, len(raws), 1 << 62))

    return load


async def export_workflow_results(node: Any, workflow_id: str, path: str | os.PathLike[str], format: str | None = None,
                                  partial: bool = False, overwrite: bool = False,
                                  progress: ProgressFn | None = None) -> dict[str, Any]:
    """The export tool's verb on a running ``p2p.node.Node`` (the MCP tool and the CLI call
    this): its live scheduler state and its clock's result blocks."""
    return await export_results(lambda: node.scheduler.state, workflow_id, path, format, partial,
                                node_blocks_loader(node.clock), overwrite=overwrite, progress=progress,
                                protected=Path(node.config.data_dir).expanduser(), inputs=node.inputs)
