"""The MCP server: thin tools over a running ``p2p.node.Node``.

Each tool validates its arguments (pydantic, from the signature), calls one Node method and
shapes the answer. Bad input becomes a ``ToolError`` the agent can act on; nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, Any, Callable, TypeVar

import structlog
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import AfterValidator, Field

from mcp_server import answers
from mcp_server.answers import Format, reply, shape_output
from mcp_server.export_tool import register_export_tool
from mcp_server.file_submit_tool import register_file_submit_tool
from mcp_server.schemas import (
    ConnectResult,
    InferenceOut,
    ModelList,
    ModelOut,
    NodeInfo,
    PeerList,
    PullResult,
    Tag,
    TaskInput,
    WorkflowList,
    WorkflowState,
    WorkflowStatusOut,
    WorkflowSummary,
)
from mcp_server.pages import MAX_REPLY_BYTES, REPLY_BUDGET, build_page, fit_page, reply_cost  # noqa: F401 (re-exported)
from mcp_server.resources import RecentOutputs, inference_uri, mime_type_of, register_resources, results_uri
from mcp_server.search_tool import register_search_tools
from p2p.errors import NodeError
from p2p.node import VERSION, Node

log = structlog.get_logger("mcp_server")
T = TypeVar("T")

INSTRUCTIONS = """\
This server is one peer of an ipfs-accelerate network: machines that run inference models
(embeddings, text classification, fill-mask) for each other. Use run_inference for a few
texts you need now. For many texts, submit_workflow (one task per text) returns a workflow id
at once; the peers share the work (submit_workflow_file does the same for a .jsonl, .csv,
.parquet or .txt file of inputs on this node). Follow it with wait_for_workflow (progress notifications,
returns at completion or timeout) or get_workflow_status, and read results with
include_results=true, paging large workflows with offset/limit (limit=0: counts only), or write
them all to a file on this node with export_workflow_results (.jsonl, .npy, .parquet).
Embeddings come compact by default (dim, norm, first values, and a ref: a resource URI with the
full vector); pass format="floats" (or "base64") for whole vectors in the answer. Results are
also resources: workflow://{id}/results{?offset,limit,format} (format=npy for a float32 matrix). list_models shows which models
the network serves (with content ids); pull_model fetches one from peers; list_peers and get_node_info show the peers and this node's clock.
With an embedding workflow done, search_workflow finds its tasks nearest a query, and compare_texts gives the similarity of a few texts."""

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)


def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except NodeError as exc:
        raise ToolError(str(exc)) from None


async def _acall(coro: Any) -> Any:
    try:
        return await coro
    except NodeError as exc:
        raise ToolError(str(exc)) from None


WorkflowId = Annotated[str, Field(min_length=1, description="The workflow_id returned by submit_workflow.")]
Priority = Annotated[int, Field(ge=1, le=10, description="1 is the highest priority, 10 the lowest.")]
IncludeResults = Annotated[bool, Field(description="Include each done task's result (outputs can be large).")]
Offset = Annotated[int, Field(ge=0, description="First task of the page, in submission order.")]
ResultFormat = Annotated[Format, Field(description=(
    "How embeddings come back: compact (default: dim, norm, the first 8 values and ref, a resource URI that "
    "gives the whole vector), floats (the full list), base64 (little-endian float32 bytes, embedding_base64). "
    "compact also keeps the best 5 of a long classification or fill-mask score list."))]
Limit = Annotated[int | None, Field(ge=0, le=10_000, description=(
    "Most tasks in the page; default: the server's page size (100); 0: the counts and state only, "
    "no tasks (the cheapest call, whatever the workflow's size: use it to poll progress). A page "
    "is also cut to fit one reply (under 1 MiB); then limit says how many it holds and has_more is true."))]

MAX_WAIT_S = 3600.0


def _check_timeout(value: float) -> float:
    if math.isnan(value):
        raise ValueError("timeout_s is NaN (not a number): give a number of seconds from 0 to 3600")
    if math.isinf(value):
        raise ValueError(f"timeout_s is {'-' if value < 0 else ''}infinite: give a number of seconds from 0 to 3600")
    if not 0 <= value <= MAX_WAIT_S:
        raise ValueError(f"timeout_s is {value:g}: give a number of seconds from 0 to 3600")
    return value


TimeoutS = Annotated[float, AfterValidator(_check_timeout),
                     Field(description="Longest to wait, in seconds (0 to 3600).", json_schema_extra={"minimum": 0, "maximum": MAX_WAIT_S})]


class AccelerateServer(MCPServer):
    """The SDK's server with one change: a resource read's MIME type may depend on what was read
    (``workflow://…/results?format=npy`` gives ``application/x-npy``, its template's default
    format JSON), which a template's single declared type cannot say."""

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        got = await super().read_resource(uri, context)
        if not isinstance(got, list):
            return got
        return [replace(c, mime_type=mime_type_of(str(uri), c.content, c.mime_type)) for c in got]


PEER_MAX_INPUTS = 64  # run_inference inputs per call from a peer (as the infer protocol's cap)


def build_server(node: Node, *, page_size: int = 100, for_peers: bool = False) -> MCPServer:
    """An MCPServer whose tools drive ``node``; the caller owns the node's lifetime.

    ``for_peers``: the server a member of the network gets over libp2p (mcp_server.peer_mcp).
    A peer is not this node's operator, so it gets the read-only tools alone (status, lists,
    ``run_inference`` of at most ``PEER_MAX_INPUTS`` texts, search, compare): nothing that
    submits, cancels or reprioritises as this node, pulls models onto its disk, dials addresses
    or reads or writes its files; ``get_node_info`` leaves out its data directory."""
    server = AccelerateServer(name="ipfs-accelerate", version=VERSION, instructions=INSTRUCTIONS)
    recent = RecentOutputs()

    def status(workflow_id: str, include_results: bool, offset: int, limit: int | None, fmt: Format) -> Any:
        def fetch(at: int, count: int) -> dict[str, Any]:
            raw = _call(node.workflow_status, workflow_id, include_results, at, count)
            if include_results and fmt != "floats":
                raw["tasks"] = [
                    {**t, "result": shape_output(t["result"], fmt, results_uri(workflow_id, at + i, 1))} if "result" in t else t
                    for i, t in enumerate(raw["tasks"])]
            return raw

        if limit == 0:  # counts and state only: O(1), nothing to fit into the reply
            page = fetch(offset, 0)
        else:
            page = build_page(fetch, offset, page_size if limit is None else limit)
        out = WorkflowStatusOut.model_validate(page)
        links = [answers.link(results_uri(workflow_id), "workflow-results", "application/json",
                              "Every task's full result, a page at a time (format=npy: embeddings as a float32 matrix).")]
        return reply(out, answers.status_text(page), links)

    @server.tool(
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
    )
    async def submit_workflow(
        name: Annotated[str, Field(max_length=512, description="A label for the workflow, shown in listings.")],
        tasks: Annotated[list[TaskInput], Field(description="The tasks, one text input each; at least one.")],
        priority: Priority = 5,
        tag: Annotated[Tag, Field(description="p2p-eligible: any peer, this one included; p2p-only: never this peer; local-only: only this peer.")] = "p2p-eligible",
        replicas: Annotated[int, Field(ge=1, le=5, description="Run each task on this many distinct peers and accept a result only when they agree (1 to 5; 2 or more guards against a wrong or hostile peer).")] = 1,
        cache: Annotated[bool, Field(description="false: run every task afresh, never answering from the network's result cache.")] = True,
    ) -> WorkflowSummary:
        """Submit a batch of inference tasks to the peer-to-peer network and return at once.

        Use it for many texts (e.g. embedding a document collection); for a handful, run_inference
        is quicker. The workflow is stored durably before this returns and survives restarts.
        Returns the workflow_id and counts; follow up with wait_for_workflow or get_workflow_status.
        """
        raw = await _acall(node.submit_workflow(name, [t.model_dump() for t in tasks], priority, tag, replicas, cache))
        return reply(WorkflowSummary.model_validate(raw), answers.summary_text(raw, "submitted:")
                     + " Follow it with wait_for_workflow or get_workflow_status.")

    @server.tool(annotations=READ_ONLY)
    async def get_workflow_status(
        workflow_id: WorkflowId,
        include_results: IncludeResults = False,
        offset: Offset = 0,
        limit: Limit = None,
        format: ResultFormat = "compact",
    ) -> WorkflowStatusOut:
        """Report a workflow's state and each task's state, peer and attempts (in submission order).

        Use include_results=true to read results; page large workflows with offset/limit
        (has_more tells when another page follows). completed/total is the progress.
        """
        await node.warm_status(workflow_id, offset, page_size if limit is None else limit)
        return status(workflow_id, include_results, offset, limit, format)

    @server.tool(annotations=READ_ONLY)
    async def wait_for_workflow(
        workflow_id: WorkflowId,
        ctx: Context,
        timeout_s: TimeoutS = 60.0,
        include_results: IncludeResults = False,
        offset: Offset = 0,
        limit: Limit = None,
        format: ResultFormat = "compact",
    ) -> WorkflowStatusOut:
        """Wait for a workflow to finish, sending progress notifications (completed/total).

        Returns the same shape as get_workflow_status when the workflow completes, fails or is
        cancelled — or, at the timeout, its current state (not an error); call again to keep waiting.
        """
        async def progress(done: int, total: int, message: str) -> None:
            await ctx.report_progress(done, total, message)

        await _acall(node.wait_for_workflow(workflow_id, timeout_s, progress))
        await node.warm_status(workflow_id, offset, page_size if limit is None else limit)
        return status(workflow_id, include_results, offset, limit, format)

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False))
    async def cancel_workflow(workflow_id: WorkflowId) -> WorkflowSummary:
        """Cancel a workflow: queued tasks never run; tasks already running finish, but the
        workflow stays cancelled. Returns the workflow's counts after the cancel."""
        raw = await _acall(node.cancel_workflow(workflow_id))
        return reply(WorkflowSummary.model_validate(raw), answers.summary_text(raw, "cancelled:"))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False))
    async def set_workflow_priority(workflow_id: WorkflowId, priority: Priority) -> WorkflowSummary:
        """Change a workflow's priority (1 highest … 10 lowest); its queued tasks move in every
        peer's queue. Returns the workflow's summary."""
        raw = await _acall(node.set_workflow_priority(workflow_id, priority))
        return reply(WorkflowSummary.model_validate(raw), answers.summary_text(raw, "reprioritised:"))

    @server.tool(annotations=READ_ONLY)
    async def list_workflows(
        state: Annotated[WorkflowState | None, Field(description="Only workflows in this state.")] = None,
        limit: Annotated[int, Field(ge=1, le=10_000, description="Most workflows returned, newest first.")] = 50,
    ) -> WorkflowList:
        """List known workflows (submitted on any peer), newest first, with their counts."""
        raw = _call(node.list_workflows, state, limit)
        left, kept = REPLY_BUDGET, []
        for w in raw:  # cut to fit one reply, as status pages are
            left -= reply_cost(w) + 2
            if left < 0:
                break
            kept.append(w)
        out = WorkflowList(workflows=[WorkflowSummary.model_validate(w) for w in kept], has_more=len(kept) < len(raw))
        return reply(out, answers.workflows_text(kept) + (" (cut to fit one reply: more exist)" if out.has_more else ""))

    @server.tool(annotations=READ_ONLY)
    async def run_inference(
        model: Annotated[str, Field(min_length=1, description="Model id; list_models shows what this node and its peers serve.")],
        inputs: Annotated[list[str], Field(min_length=1, description="Texts to run, returned in the same order (at most 64 when a peer runs them).")],
        task: Annotated[str | None, Field(description="embedding | text-classification | fill-mask; inferred when omitted.")] = None,
        format: ResultFormat = "compact",
    ) -> InferenceOut:
        """Run a model on a few texts now and return the outputs (synchronous): on this node when
        it serves the model, else on a connected peer that does (peer names who ran it).

        embedding gives an L2-normalised vector: by default compact ({dim, norm, head: the first 8
        values, ref}: read ref, a resource, for the whole vector), or {embedding: [floats]} with
        format="floats"; text-classification gives {label, score, scores}, fill-mask
        {predictions: [{token, score}]} (the text must contain the mask token).
        For many texts use submit_workflow so the network shares the work.
        """
        if for_peers and len(inputs) > PEER_MAX_INPUTS:
            raise ToolError(f"{len(inputs)} inputs: a peer may run at most {PEER_MAX_INPUTS} per call")
        raw = await _acall(node.run_inference(model, inputs, task))
        ref = None
        if format != "floats":
            call_id = recent.put(raw["outputs"])
            ref = inference_uri(call_id)
            raw = {**raw, "outputs": [shape_output(o, format, inference_uri(call_id, i)) for i, o in enumerate(raw["outputs"])]}
        return reply(InferenceOut.model_validate(raw), answers.inference_text({**raw, "remote": raw.get("peer") not in ("", node.peer_id)}, ref))

    @server.tool(annotations=READ_ONLY)
    async def list_models() -> ModelList:
        """List the models this node and its live peers can run, with the peers serving each."""
        raw = await node.list_models()
        return reply(ModelList(models=[ModelOut.model_validate(m) for m in raw]), answers.models_text(raw))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=True))
    async def pull_model(
        model: Annotated[str, Field(min_length=1, max_length=512, description="A model name or a model folder CID; list_models shows both.")],
        ctx: Context,
    ) -> PullResult:
        """Fetch a model's files from the peers that serve it, then serve it from this node at once.

        Every block is verified against the model's content id; an interrupted pull resumes
        without fetching again what it has. Sends progress notifications (bytes done/total).
        """
        async def progress(done: int, total: int, message: str) -> None:
            await ctx.report_progress(done, total, message)

        raw = await _acall(node.pull_model(model, progress))
        return reply(PullResult.model_validate(raw), answers.pull_text(raw))

    @server.tool(annotations=READ_ONLY)
    async def list_peers() -> PeerList:
        """List this node (self) and every live peer: id, name, addresses, hardware, models,
        queue length, last heartbeat age (last_seen_s) and round-trip time (rtt_ms)."""
        raw = node.list_peers()
        return reply(PeerList.model_validate(raw), answers.peers_text(raw))

    @server.tool(annotations=READ_ONLY)
    async def get_node_info() -> NodeInfo:
        """This node's peer id, name, listen addresses, hardware, models and Merkle clock
        (heads, hash, event count). Peers that hold the same events report the same hash."""
        raw = node.node_info()
        if for_peers:
            raw = {**raw, "data_dir": ""}  # where this node keeps its keys is not a peer's business
        return reply(NodeInfo.model_validate(raw), answers.node_text(raw))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=True))
    async def connect_peer(
        multiaddr: Annotated[str, Field(min_length=1, description="Full multiaddr ending in /p2p/<peer id>, as printed by `ipfs-accelerate p2p start`.")],
    ) -> ConnectResult:
        """Dial another peer by multiaddr and keep it as a peer (it is redialled if lost)."""
        if node.network is None:
            raise ToolError("this node runs without networking (network.enabled = false)")
        peer_id = await _acall(node.connect(multiaddr))
        return reply(ConnectResult(peer_id=peer_id, connected=True), f"Connected to {peer_id}; it is kept as a peer.")

    register_resources(server, node, recent, page_size)
    register_search_tools(server, node)
    register_export_tool(server, node)
    register_file_submit_tool(server, node)
    if for_peers:
        for tool in list(server._tool_manager.list_tools()):
            if not (tool.annotations is not None and tool.annotations.read_only_hint):
                server.remove_tool(tool.name)
    return server
