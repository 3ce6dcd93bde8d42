"""What the server offers as MCP resources, and completion of their arguments.

Why resources: results are data an agent (or its host application) may want whole, as a file
would be, without spending a tool call's context on them. A compact tool answer names them by
URI (``ref`` in each compact output, resource links in status answers); the client reads them
when it needs the numbers.

- ``workflow://{workflow_id}/results{?offset,limit,format}``: the tasks' full results in
  submission order. ``format=json`` (the default) is a status page with every result in full
  (``application/json``), cut to fit one reply like a tool's page (``has_more``);
  ``format=npy`` is the embeddings as an N×D float32 ``.npy`` matrix (``application/x-npy``; a
  task without a result is a row of NaN), at most what fits one reply.
- ``workflow://{workflow_id}``: the workflow's status with the first page of results.
- ``inference://{call_id}`` and ``inference://{call_id}/{index}``: the full outputs of a recent
  ``run_inference`` call, kept in memory (the last ``RecentOutputs.max_calls`` calls, up to
  ``max_bytes``); a reference to an evicted call says so.
- ``model://{+model}``: a model's rows from ``list_models`` (content id, files, peers).
- ``node://info``: this node's info and clock.

Completion (``completion/complete``) offers workflow ids (newest first), model names and the
formats, for clients that complete resource-template arguments.

Every handler is async and reads the node on the event loop: the node is trio-owned, so a sync
handler (which the SDK runs in a worker thread) must not touch it.
"""

from __future__ import annotations

import io
import secrets
from collections import OrderedDict
from typing import Any

import pydantic_core
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from mcp_server.pages import REPLY_BUDGET, build_page, fit_page, text_cost
from p2p.errors import NodeError

log = structlog.get_logger("mcp_server.resources")

RESULTS_TEMPLATE = "workflow://{workflow_id}/results{?offset,limit,format}"
WORKFLOW_TEMPLATE = "workflow://{workflow_id}"
NPY_MIME = "application/x-npy"
RESULT_FORMATS = ("json", "npy")
MAX_COMPLETIONS = 100  # the most values completion/complete may return (MCP)
PROBE = 64  # tasks read to learn an .npy read's dimension
# A resource's bytes travel base64-encoded in one reply: 3 bytes of .npy take 4 on the wire.
NPY_BUDGET = REPLY_BUDGET * 3 // 4 - 1024


def _json(obj: Any) -> str:
    """``obj`` as the JSON text a resource returns: exactly what ``text_cost`` measures (compact,
    UTF-8; ``json.dumps`` would add spaces and write non-ASCII as 6-byte escapes)."""
    return pydantic_core.to_json(obj).decode()


def _fitting(obj: Any, what: str, hint: str) -> str:
    """``obj`` as resource text, refused when it cannot fit one reply."""
    if text_cost(obj) > REPLY_BUDGET:
        raise ResourceError(f"{what} does not fit one reply (1 MiB): {hint}")
    return _json(obj)


def results_uri(workflow_id: str, offset: int | None = None, limit: int | None = None, fmt: str | None = None) -> str:
    query = [f"{k}={v}" for k, v in (("offset", offset), ("limit", limit), ("format", fmt)) if v is not None]
    return f"workflow://{workflow_id}/results" + ("?" + "&".join(query) if query else "")


def inference_uri(call_id: str, index: int | None = None) -> str:
    return f"inference://{call_id}" + (f"/{index}" if index is not None else "")


class RecentOutputs:
    """The full outputs of the last ``run_inference`` calls, so a compact answer can point at
    them. Bounded by count and bytes (oldest evicted first); memory only, so a restart or an
    eviction makes a reference unreadable, and reading it says so."""

    def __init__(self, max_calls: int = 256, max_bytes: int = 32 << 20) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self._calls: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._bytes = 0

    def put(self, outputs: list[dict[str, Any]]) -> str:
        size = sum(len(pydantic_core.to_json(o)) for o in outputs)
        call_id = secrets.token_hex(8)
        if size > self.max_bytes:
            return call_id  # too big to keep: the reference will say it expired
        self._calls[call_id] = (outputs, size)
        self._bytes += size
        while len(self._calls) > self.max_calls or self._bytes > self.max_bytes:
            _, (_, dropped) = self._calls.popitem(last=False)
            self._bytes -= dropped
        return call_id

    def get(self, call_id: str) -> list[dict[str, Any]]:
        got = self._calls.get(call_id)
        if got is None:
            raise ResourceError(f"inference://{call_id} is no longer held (this node keeps the outputs of its last "
                                f"{self.max_calls} run_inference calls, in memory): call run_inference again with "
                                "format=\"floats\"")
        return got[0]


def _node_call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except NodeError as exc:
        raise ResourceError(str(exc)) from None


def npy_page(node: Any, workflow_id: str, offset: int, limit: int | None) -> bytes:
    """Rows ``offset``… of the workflow's embeddings as a ``.npy`` float32 matrix (NaN rows for
    tasks without a result), refusing a read that would not fit one reply before reading it: the
    dimension comes from the first embedding among the first ``PROBE`` tasks, so a workflow
    without embeddings there costs one small page, not a scan of every task."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    total = _node_call(node.workflow_status, workflow_id, False, 0, 0)["total"]
    if offset > total:
        raise ResourceError(f"offset {offset} is past the workflow's {total} tasks")
    count = total - offset if limit is None else min(limit, total - offset)

    def vector(t: dict[str, Any]) -> list[float] | None:
        res = t.get("result")
        vec = res.get("embedding") if isinstance(res, dict) else None
        return vec if isinstance(vec, list) else None

    probe = _node_call(node.workflow_status, workflow_id, True, offset, min(count, PROBE))["tasks"] if count else []
    dim = next((len(v) for v in map(vector, probe) if v is not None), 0)
    if count and dim == 0:
        raise ResourceError(f"workflow {workflow_id} has no embedding among tasks {offset}–{offset + len(probe) - 1}: "
                            "format=npy holds embeddings only (use format=json)")
    most = max(1, NPY_BUDGET // (4 * dim)) if dim else 0
    if count > most:
        raise ResourceError(f"{count} rows of dimension {dim} do not fit one reply (1 MiB): read at most {most} rows "
                            f"at a time, e.g. {results_uri(workflow_id, offset, most, 'npy')}")
    mat = np.full((count, dim), np.nan, dtype="<f4")
    tasks = probe
    at = offset
    while at < offset + count:
        if not tasks:
            tasks = _node_call(node.workflow_status, workflow_id, True, at, min(256, offset + count - at))["tasks"]
            if not tasks:
                break
        for t in tasks:
            vec = vector(t)
            if vec is not None:
                if len(vec) != dim:
                    raise ResourceError(f"task {at} has an embedding of dimension {len(vec)}, not {dim}")
                mat[at - offset] = np.asarray(vec, dtype="<f4")
            at += 1
        tasks = []
    buf = io.BytesIO()
    np.save(buf, mat, allow_pickle=False)
    return buf.getvalue()


def register_resources(server: MCPServer, node: Any, recent: RecentOutputs, page_size: int) -> None:
    """Add the resources above and the completion handler to ``server``."""

    @server.resource("node://info", name="node-info", mime_type="application/json",
                     description="This node's info and Merkle clock.")
    async def node_info_resource() -> str:
        return _json(node.node_info())

    @server.resource(WORKFLOW_TEMPLATE, name="workflow", mime_type="application/json",
                     description="A workflow's status with the first page of full results.")
    async def workflow_resource(workflow_id: str) -> str:
        return _json(fit_page(_node_call(node.workflow_status, workflow_id, True, 0, page_size), cost=text_cost))

    @server.resource(RESULTS_TEMPLATE, name="workflow-results", mime_type="application/json",
                     description=("A workflow's full results in submission order. format=json (default): a status page "
                                  "(has_more says when to read on from offset+limit); format=npy: the embeddings as an "
                                  "N×D float32 .npy matrix (application/x-npy), NaN rows for tasks without a result."))
    async def results_resource(workflow_id: str, offset: int = 0, limit: int | None = None, format: str = "json") -> str | bytes:
        if format not in RESULT_FORMATS:
            raise ResourceError(f"format {format!r} is not one of: {', '.join(RESULT_FORMATS)}")
        if offset < 0 or (limit is not None and not 1 <= limit <= 10_000):
            raise ResourceError("offset must be >= 0 and limit from 1 to 10000")
        if format == "npy":
            return npy_page(node, workflow_id, offset, limit)

        def fetch(at: int, count: int) -> dict[str, Any]:
            return _node_call(node.workflow_status, workflow_id, True, at, count)

        return _json(build_page(fetch, offset, page_size if limit is None else limit, cost=text_cost))

    @server.resource("inference://{call_id}", name="inference-outputs", mime_type="application/json",
                     description="The full outputs of a recent run_inference call (the ref of its compact answer).")
    async def inference_resource(call_id: str) -> str:
        outputs = recent.get(call_id)
        return _fitting({"call_id": call_id, "outputs": outputs}, f"the {len(outputs)} outputs of call {call_id}",
                        f"read them one at a time, inference://{call_id}/0 … /{len(outputs) - 1}")

    @server.resource("inference://{call_id}/{index}", name="inference-output", mime_type="application/json",
                     description="One full output of a recent run_inference call.")
    async def inference_output_resource(call_id: str, index: int) -> str:
        outputs = recent.get(call_id)
        if not 0 <= index < len(outputs):
            raise ResourceError(f"call {call_id} has outputs 0–{len(outputs) - 1}, not {index}")
        return _fitting(outputs[index], f"output {index} of call {call_id}", "call run_inference with format=\"base64\"")

    @server.resource("model://{+model}", name="model", mime_type="application/json",
                     description="A model the network serves: its content ids, files and the peers serving each.")
    async def model_resource(model: str) -> str:
        rows = [m for m in await node.list_models() if m["model"] == model]
        if not rows:
            raise ResourceError(f"no live peer serves {model!r}; list_models shows what the network serves")
        return _fitting({"model": model, "rows": rows}, f"the listing of {model!r}", "use list_models")

    @server.completion()
    async def complete(ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument,
                       context: CompletionContext | None) -> Completion | None:
        return completion_values(node, argument.name, argument.value)


def completion_values(node: Any, name: str, prefix: str) -> Completion | None:
    """Values for a resource-template argument that start with ``prefix``."""
    if name == "workflow_id":
        # newest first, off the fold's listing index: O(shown), never a scan of every workflow
        ids = [w["workflow_id"] for w in node.list_workflows(None, 1000) if w["workflow_id"].startswith(prefix)]
    elif name == "model":
        ids = sorted(m for m in node.all_models() if m.startswith(prefix))
    elif name == "format":
        ids = [f for f in RESULT_FORMATS if f.startswith(prefix)]
    else:
        return None
    return Completion(values=ids[:MAX_COMPLETIONS], total=len(ids), has_more=len(ids) > MAX_COMPLETIONS)


def mime_type_of(uri: str, content: str | bytes, declared: str | None) -> str | None:
    """The MIME type of what a resource read returned: ``.npy`` bytes from the results template
    are ``application/x-npy`` (the template declares JSON, its default format)."""
    if isinstance(content, bytes) and uri.startswith("workflow://") and "/results" in uri:
        return NPY_MIME
    return declared
