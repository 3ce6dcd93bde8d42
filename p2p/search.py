"""Search over what the network embedded (issue 13, item 2): ``search_workflow`` and ``compare_texts``.

Why: an agent that embedded a collection across the network had no way to use the result — the
vectors are useless to it as text. ``search_workflow`` embeds a query with the workflow's own
model and returns the tasks whose embeddings are nearest by cosine; ``compare_texts`` gives the
cosine matrix of a handful of texts. The texts are embedded here when this node serves the model
(with the same files), else by a connected peer that does (``p2p.remote_infer``).

The search is exact: one L2-normalised N x D float32 matrix times the normalised query. A
workflow holds at most ``scheduler.max_tasks_per_workflow`` tasks (25,000), and at 100,000
random 384-d vectors one query is a few milliseconds of numpy (``bench/bench_search.py``), so an
approximate index (hnswlib, faiss) would buy nothing worth a dependency.

The index of a workflow — the matrix, the task positions of its rows, and a small JSON file that
names what it was built from — is built once, from the workflow's results as this node holds them
(inline in the clock or as result blocks, read as the export reads them), and saved under
``<data_dir>/search/<workflow_id>.npy`` and ``.json``. Later calls use it from memory; after a
restart it is read back from disk. It is built again when it is missing, unreadable, does not
match its checksum, or was built from a different number of done tasks (a ``partial`` index of
a workflow that has since moved on). Reading, building, saving and searching all run in worker
threads (``trio.to_thread``): the event loop never waits on the disk or on numpy.

Nothing here imports the MCP layer: the tool (``mcp_server.search_tool``) types the call and the
reply; a bad call raises ``NodeError`` with one clear line and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import structlog
import trio

from p2p.remote_infer import check_served_somewhere, embed_texts
from p2p.errors import NodeError
from p2p.fsutil import fsync_dir_best_effort
from p2p.export import PAGE, BlocksLoader, ExportRow, PageReader, node_blocks_loader, resolve, unfinished_error
from p2p.scheduler.state import State, TaskStatus

if TYPE_CHECKING:
    import numpy as np

log = structlog.get_logger("p2p.search")

MAX_K = 100
MIN_TEXTS, MAX_TEXTS = 2, 64
INPUT_SHOWN = 1000  # characters of a task's input shown in a hit; get_workflow_status has it all
INDEX_FORMAT = 1
MEMORY_BYTES = 256 << 20  # indexes kept in memory, least recently used dropped first
_PACKED = "embedding_f32"  # how p2p.scheduler.results stores an embedding
_EMBEDDING = "embedding"


# ------------------------------------------------------------------ pure numpy


def normalise_rows(mat: np.ndarray) -> np.ndarray:
    """A float32 copy of ``mat`` (N x D) with every row of unit length; an all-zero row stays zero
    (it scores 0 against everything rather than NaN)."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    out = np.array(mat, dtype=np.float32, copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of the normalised ``matrix`` nearest to ``query`` by cosine: (row numbers,
    scores), best first, equal scores in row order. Fewer than ``k`` when the matrix has fewer rows."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    if norm > 0:
        q = q / norm
    n = matrix.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = matrix @ q
    cand = np.arange(n) if k >= n else np.argpartition(-scores, k - 1)[:k]
    order = cand[np.lexsort((cand, -scores[cand]))]
    return order.astype(np.int64), scores[order]


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``vectors`` (float32), clipped to [-1, 1]."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    v = normalise_rows(vectors)
    return np.clip(v @ v.T, -1.0, 1.0)


# ------------------------------------------------------------------ the index


@dataclass(slots=True)
class Index:
    """One workflow's searchable embeddings, as built from its results.

    ``rows[i]`` is the position in the workflow's task list of ``matrix[i]``; tasks without a
    result (``partial``) have no row. ``done`` is how many tasks were done when it was built: a
    different count now means results have arrived since, and the index is built again; so is
    one that left out done tasks whose result blocks had not reached this node (``missing``).
    ``key`` names the workflow it belongs to (id, creation time, task count, submitter)."""

    workflow_id: str
    model: str
    matrix: np.ndarray  # N x D float32, rows of unit length
    rows: np.ndarray  # N int64
    done: int
    key: dict[str, Any]
    missing: int = 0  # done tasks whose result was not held here (partial): built again next call

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.rows.nbytes)


def workflow_key(wf: Any) -> dict[str, Any]:
    return {"workflow_id": wf.workflow_id, "created_at": wf.created_at, "tasks": len(wf.task_ids), "submitter": wf.submitter}


def index_paths(directory: Path, workflow_id: str) -> tuple[Path, Path]:
    if not workflow_id or any(c in workflow_id for c in "/\\\0") or workflow_id.startswith("."):
        raise NodeError(f"workflow id {workflow_id!r} cannot name an index file")  # ids are hex: never reached
    return directory / f"{workflow_id}.npy", directory / f"{workflow_id}.json"


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.part"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_index(directory: Path, index: Index) -> None:
    """Write ``index`` under ``directory`` (worker thread): the matrix first, then the JSON that
    names it with its checksum, each written beside its path and renamed into place, so a crash
    leaves either the old pair, or a matrix the JSON's checksum no longer matches (rebuilt)."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    directory.mkdir(parents=True, exist_ok=True)
    npy, meta = index_paths(directory, index.workflow_id)
    matrix = np.ascontiguousarray(index.matrix, dtype="<f4")
    _write_atomic(npy, lambda fh: np.save(fh, matrix, allow_pickle=False))
    body = {
        "format": INDEX_FORMAT, "key": index.key, "model": index.model, "done": index.done, "missing": index.missing,
        "shape": list(matrix.shape), "sha256": _sha256(npy), "rows": [int(r) for r in index.rows],
    }
    _write_atomic(meta, lambda fh: fh.write(json.dumps(body, separators=(",", ":")).encode()))
    fsync_dir_best_effort(directory)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_index(directory: Path, workflow_id: str, key: dict[str, Any]) -> tuple[Index | None, str | None]:
    """The saved index of ``workflow_id`` (worker thread), or (None, why not): missing, not
    this workflow's (``key`` differs), or damaged in any way (unreadable, checksum, shape)."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    npy, meta = index_paths(directory, workflow_id)
    if not meta.exists() and not npy.exists():
        return None, None
    try:
        body = json.loads(meta.read_text(encoding="utf-8"))
        if not isinstance(body, dict) or body.get("format") != INDEX_FORMAT:
            return None, "unknown index format"
        if body.get("key") != key:
            return None, "built for another workflow of that id"
        if body.get("sha256") != _sha256(npy):
            return None, "checksum mismatch"
        matrix = np.load(npy, allow_pickle=False)
        rows = np.asarray(body["rows"], dtype=np.int64)
        n, d = body["shape"]
        if matrix.dtype != np.float32 or matrix.shape != (n, d) or rows.shape != (n,):
            return None, "shape mismatch"
        if n and (rows.min() < 0 or rows.max() >= key["tasks"] or len(np.unique(rows)) != n):
            return None, "row numbers out of range"
        if not np.isfinite(matrix).all():
            return None, "non-finite values"
        model, done, missing = body["model"], body["done"], body["missing"]
        if not isinstance(model, str) or not isinstance(done, int) or not isinstance(missing, int):
            return None, "malformed metadata"
        return Index(workflow_id, model, matrix, rows, done, key, missing), None
    except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"


def _page_vectors(rows: list[ExportRow], load_blocks: BlocksLoader, partial: bool,
                  dim: int | None) -> tuple[list[bytes], list[int], int | None, int]:
    """The packed embeddings of one page of tasks (worker thread): (bytes, task positions, D,
    done tasks left out).
    A done task whose result is not held here is an error without ``partial``, skipped with it;
    a result that is not an embedding, or of another dimension, is always an error."""
    packed, where, missing = [], [], 0
    for res in resolve(rows, load_blocks):
        row = res.row
        if res.stored is None:
            if row.state == TaskStatus.DONE.value and not partial:
                raise NodeError(f"task {row.task_id}: {res.note or 'no result'}; try again shortly, or pass partial=true "
                                f"to search the results there are")
            missing += row.state == TaskStatus.DONE.value
            continue
        vec = res.stored.get(_PACKED)
        if not isinstance(vec, (bytes, bytearray)) or not vec or len(vec) % 4:
            keys = ", ".join(sorted(str(k) for k in res.stored)) or "nothing"
            raise NodeError(f"workflow {row.task_id.split('/')[0]} is not an embedding workflow: task {row.task_id}'s "
                            f"output has {keys}, not an embedding; search works on embedding workflows only")
        if dim is None:
            dim = len(vec) // 4
        elif len(vec) != 4 * dim:
            raise NodeError(f"task {row.task_id}: its embedding has {len(vec) // 4} dimensions, the others {dim}; "
                            f"one index needs one dimension")
        packed.append(bytes(vec))
        where.append(row.index)
    return packed, where, dim, missing


def _stack(packed: list[bytes], dim: int | None) -> np.ndarray:
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    if not packed:
        return np.zeros((0, dim or 0), dtype=np.float32)
    mat = np.frombuffer(b"".join(packed), dtype="<f4").reshape(len(packed), -1)
    if not np.isfinite(mat).all():
        raise NodeError("a result holds a non-finite embedding value; it cannot be searched")
    return normalise_rows(mat)


async def build_index(get_state: Callable[[], State], workflow_id: str, model: str, load_blocks: BlocksLoader,
                      partial: bool, page: int = PAGE) -> Index:
    """Read the workflow's embeddings a page of tasks at a time (the state on the loop, the
    result blocks and the numpy in worker threads) into one normalised matrix."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    state = get_state()
    wf = state.workflows[workflow_id]
    done, key, total = state.counts(wf)[TaskStatus.DONE], workflow_key(wf), len(wf.task_ids)
    packed: list[bytes] = []
    where: list[int] = []
    dim: int | None = None
    missing = 0
    reader = PageReader(get_state, workflow_id, load_blocks, with_inputs=False)  # vectors only
    for offset in range(0, total, page):
        rows = await reader.rows(offset, page)
        got, at, dim, left = await trio.to_thread.run_sync(_page_vectors, rows, load_blocks, partial, dim)
        missing += left
        packed += got
        where += at
    matrix = await trio.to_thread.run_sync(_stack, packed, dim)
    return Index(workflow_id, model, matrix, np.asarray(where, dtype=np.int64), done, key, missing)


# ------------------------------------------------------------------ the workflow's model


@dataclass(frozen=True, slots=True)
class WorkflowModel:
    model: str
    model_cid: str | None


def workflow_model(state: State, wf: Any) -> WorkflowModel:
    """The one model an embedding workflow's tasks name (specs never change after the submit).
    Refused: tasks that ask for another task than embedding, or several models (their vectors
    live in different spaces, so one index cannot hold them)."""
    from inference.errors import InferenceError
    from inference.tasks import normalize_task

    models: set[tuple[str, str | None]] = set()
    gone = state.dropped.get(wf.workflow_id)  # compacted, records dropped: the specs it kept
    if gone is not None and not gone.specs_complete:
        raise NodeError(f"workflow {wf.workflow_id} names over {len(gone.specs)} distinct models and tasks; search needs "
                        f"one embedding model")
    if gone is not None:
        specs: Any = gone.specs
    elif wf.lazy:  # a chunked submit: one template for every task
        t = wf.submits[0].op.template
        specs = [(t.model, t.model_cid, t.task)]
    else:
        specs = ((t.spec.model, t.spec.model_cid, t.spec.task) for t in (state.tasks[tid] for tid in wf.task_ids))
    for model, model_cid, task in specs:
        if task is not None:
            try:
                name = normalize_task(task)
            except InferenceError:
                name = task
            if name != _EMBEDDING:
                raise NodeError(f"workflow {wf.workflow_id} is not an embedding workflow (its tasks ask for {task!r}); "
                                f"search works on embedding workflows only")
        models.add((model, model_cid))
    if len({m for m, _ in models}) > 1:
        names = ", ".join(sorted({m for m, _ in models})[:5])
        raise NodeError(f"workflow {wf.workflow_id} embeds with several models ({names}); their vectors cannot share "
                        f"one index")
    if len(models) > 1:
        raise NodeError(f"workflow {wf.workflow_id} ran {next(iter(models))[0]!r} with several sets of model files "
                        f"(content ids); their vectors cannot share one index")
    model, cid = next(iter(models))
    return WorkflowModel(model, cid)


# ------------------------------------------------------------------ the indexes of one node


class SearchIndexes:
    """The search indexes of one node: on disk under ``directory``, the recently used ones in
    memory (at most ``max_bytes``). Why a class: one lock per workflow, so two calls that find
    the index missing build it once, and the memory cache shared by every call of the node."""

    def __init__(self, directory: Path, max_bytes: int = MEMORY_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._mem: OrderedDict[str, Index] = OrderedDict()
        self._locks: dict[str, trio.Lock] = {}
        self._models: dict[str, WorkflowModel] = {}

    def model_of(self, state: State, wf: Any) -> WorkflowModel:
        got = self._models.get(wf.workflow_id)
        if got is None:
            got = self._models[wf.workflow_id] = workflow_model(state, wf)
        return got

    async def get(self, get_state: Callable[[], State], workflow_id: str, model: str, load_blocks: BlocksLoader,
                  partial: bool) -> tuple[Index, str, float]:
        """(index, where it came from: ``memory``, ``loaded`` from disk or ``built``, seconds)."""
        lock = self._locks.setdefault(workflow_id, trio.Lock())
        async with lock:
            t0 = time.perf_counter()
            state = get_state()
            wf = state.workflows[workflow_id]
            key, done = workflow_key(wf), state.counts(wf)[TaskStatus.DONE]
            index = self._mem.get(workflow_id)
            if index is not None and index.key == key and index.done == done and not index.missing:
                self._mem.move_to_end(workflow_id)
                return index, "memory", time.perf_counter() - t0
            index, why = await trio.to_thread.run_sync(load_index, self.directory, workflow_id, key)
            how = "loaded"
            if why is not None:  # damaged, or another workflow's: said loudly
                log.warning("search index unusable; building it again", workflow_id=workflow_id, reason=why)
            if index is not None and (index.done != done or index.missing):  # results arrived since: expected
                log.info("search index out of date; building it again", workflow_id=workflow_id,
                         built_from=index.done, missing=index.missing, done=done)
                index = None
            if index is None:
                index = await build_index(get_state, workflow_id, model, load_blocks, partial)
                how = "built"
                try:
                    await trio.to_thread.run_sync(save_index, self.directory, index)
                except OSError as exc:  # still answers; built again next time
                    log.warning("search index not saved", workflow_id=workflow_id, error=str(exc))
            self._remember(index)
            seconds = time.perf_counter() - t0
            log.info("search index ready", workflow_id=workflow_id, how=how, vectors=index.matrix.shape[0],
                     dim=index.dim, seconds=round(seconds, 3))
            return index, how, seconds

    def _remember(self, index: Index) -> None:
        self._mem[index.workflow_id] = index
        self._mem.move_to_end(index.workflow_id)
        while len(self._mem) > 1 and sum(i.nbytes for i in self._mem.values()) > self.max_bytes:
            self._mem.popitem(last=False)


def node_indexes(node: Any) -> SearchIndexes:
    """The indexes of a running ``p2p.node.Node``, kept under ``<data_dir>/search``."""
    return SearchIndexes(Path(node.config.data_dir).expanduser() / "search")


# ------------------------------------------------------------------ the verbs


def _check_text(text: Any, what: str, cap: int) -> str:
    if not isinstance(text, str):
        raise NodeError(f"{what} must be a string")
    if not text.strip():
        raise NodeError(f"{what} is empty; give some text")
    if len(text) > cap:
        raise NodeError(f"{what} is {len(text)} characters; the maximum is {cap}")
    return text


async def search_workflow(node: Any, indexes: SearchIndexes, workflow_id: str, query: str, k: int = 5,
                          partial: bool = False) -> dict[str, Any]:
    """The ``k`` tasks of an embedding workflow nearest to ``query`` by cosine, best first.

    The query is embedded by the workflow's model (the same files): here when this node serves
    it, else by a connected peer that does (``p2p.remote_infer``). The workflow must be completed
    unless ``partial`` (then the tasks with a result here are searched). Returns {workflow_id,
    model, state, partial, k, vectors, dim, index, index_seconds, embed_seconds, embedded_by,
    search_seconds, results: [{task_id, input, score, input_truncated}]}."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise NodeError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if not isinstance(partial, bool):
        raise NodeError("partial must be true or false")
    cap = node.config.scheduler.max_input_chars
    _check_text(query, "the query", cap)
    state = node.scheduler.state
    wf = state.workflows.get(workflow_id) if isinstance(workflow_id, str) else None
    if wf is None:
        raise NodeError(f"unknown workflow id {workflow_id!r}; list_workflows shows the known ones")
    wm = indexes.model_of(state, wf)
    if state.counts(wf)[TaskStatus.DONE] != len(wf.task_ids) and not partial:
        err = unfinished_error(state, wf)
        raise NodeError(str(err).replace("to export the results there are", "to search the results there are"))
    wstate = state.workflow_status(wf).value
    try:  # refused before the index is built when nobody can embed the query
        check_served_somewhere(node, wm.model, wm.model_cid)
    except NodeError as exc:
        raise NodeError(f"cannot embed the query with {wm.model!r}, which workflow {workflow_id} was embedded with: "
                        f"{exc}") from None

    index, how, index_s = await indexes.get(lambda: node.scheduler.state, workflow_id, wm.model,
                                            node_blocks_loader(node.clock), partial)
    t0 = time.perf_counter()
    try:
        qmat, embedded_by = await embed_texts(node, wm.model, wm.model_cid, [query],
                                              index.dim if index.matrix.shape[0] else None)
    except NodeError as exc:
        raise NodeError(f"cannot embed the query with {wm.model!r}, which workflow {workflow_id} was embedded with: "
                        f"{exc}") from None
    qvec = qmat[0]
    embed_s = time.perf_counter() - t0
    if index.matrix.shape[0] and qvec.shape[0] != index.dim:
        raise NodeError(f"the query embedding has {qvec.shape[0]} dimensions, the workflow's {index.dim}")
    t0 = time.perf_counter()
    rows, scores = await trio.to_thread.run_sync(top_k, index.matrix, qvec, k)
    search_s = time.perf_counter() - t0

    state = node.scheduler.state
    wf = state.workflows[workflow_id]
    results = []
    reader = PageReader(lambda: node.scheduler.state, workflow_id, node_blocks_loader(node.clock), node.inputs)
    for r, score in zip(rows.tolist(), scores.tolist()):
        at = int(index.rows[r])
        if workflow_id in state.dropped:  # compacted, records dropped: the input from its snapshot
            row = (await reader.rows(at, 1))[0]
            task_id, text = row.task_id, row.input
        else:
            task = state.task(wf.task_ids[at])
            task_id, text = task.task_id, task.spec.input
            if task.spec.ref is not None:  # a chunked submit: the input from its chunk
                text = await node.inputs.input_of(task.spec.ref, wf.submitter)
        results.append({"task_id": task_id, "input": text[:INPUT_SHOWN], "score": round(float(score), 6),
                        "input_truncated": len(text) > INPUT_SHOWN})
    return {
        "workflow_id": workflow_id, "model": wm.model, "state": wstate, "partial": partial, "k": k,
        "vectors": int(index.matrix.shape[0]), "dim": index.dim, "index": how,
        "index_seconds": round(index_s, 4), "embed_seconds": round(embed_s, 4), "embedded_by": embedded_by,
        "search_seconds": round(search_s, 6),
        "results": results,
    }


async def compare_texts(node: Any, texts: list[str], model: str | None = None) -> dict[str, Any]:
    """The cosine similarity matrix of 2 to 64 texts, embedded by ``model`` (default: the node's
    default model), here or by a peer that serves it. ``matrix[i][j]`` compares ``texts[i]`` with
    ``texts[j]``."""
    if not isinstance(texts, list) or not MIN_TEXTS <= len(texts) <= MAX_TEXTS:
        got = len(texts) if isinstance(texts, list) else type(texts).__name__
        raise NodeError(f"give from {MIN_TEXTS} to {MAX_TEXTS} texts, got {got}")
    cap = node.config.scheduler.max_input_chars
    for i, t in enumerate(texts):
        _check_text(t, f"text {i}", cap)
    if model is None:
        model = node.engine.config.default_model
    if not isinstance(model, str) or not model.strip():
        raise NodeError("model is empty; name a model this node serves")
    t0 = time.perf_counter()
    vecs, embedded_by = await embed_texts(node, model, None, texts)
    matrix = await trio.to_thread.run_sync(cosine_matrix, vecs)
    return {
        "model": model, "texts": len(texts), "dim": int(vecs.shape[1]), "embedded_by": embedded_by,
        "matrix": [[round(float(x), 6) for x in row] for row in matrix.tolist()],
        "seconds": round(time.perf_counter() - t0, 4),
    }
