"""The ``export_workflow_results`` MCP tool: a workflow's results to a file on the node.

Kept apart from ``mcp_server.server`` (and importing nothing of it) so the server adds it with
one call, ``register_export_tool(server, node)``, in ``build_server``. The work itself is
``p2p.export.export_workflow_results``; this module types the call and the reply.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.answers import export_text, reply
from p2p.errors import NodeError

ExportFormat = Literal["jsonl", "npy", "parquet"]


class ExportResult(BaseModel):
    """What an export wrote: where, in which format, how many rows and bytes."""

    workflow_id: str
    path: str = Field(description="The file written, on the node's machine (absolute).")
    format: ExportFormat
    state: str = Field(description="The workflow's state when the export began.")
    partial: bool
    rows: int = Field(description="Rows written: one per task, in task order.")
    with_output: int = Field(description="Rows holding a task's result.")
    without_output: int = Field(description="Rows of tasks without a result (partial only): in .npy all NaN; "
                                            "in .jsonl and .parquet output null, with state and error.")
    bytes: int = Field(description="Size of the file written.")
    shape: list[int] | None = Field(None, description="[N, D] of the .npy matrix; null for other formats.")
    seconds: float


def register_export_tool(server: MCPServer, node: Any) -> None:
    """Add ``export_workflow_results`` to ``server``, over ``node`` (a ``p2p.node.Node``)."""

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False))
    async def export_workflow_results(
        workflow_id: Annotated[str, Field(min_length=1, description="The workflow_id returned by submit_workflow.")],
        path: Annotated[str, Field(min_length=1, max_length=4096, description=(
            "Absolute path of the file to write, on the node's machine; its directory must exist. "
            "The format comes from the extension (.jsonl, .npy, .parquet) unless given."))],
        ctx: Context,
        format: Annotated[ExportFormat | None, Field(description=(
            "jsonl: {task_id, input, output} per line; npy: embeddings as an N x D float32 matrix; "
            "parquet: task_id, input, state, error, embedding, output columns (needs pyarrow on the node)."))] = None,
        partial: Annotated[bool, Field(description=(
            "Export a workflow that is not completed (pending, running, failed or cancelled): tasks without a "
            "result get output null with their state and error (.npy: a NaN row)."))] = False,
        overwrite: Annotated[bool, Field(description="Replace the file if it exists (otherwise that is an error).")] = False,
    ) -> ExportResult:
        """Write a workflow's results to a file on the node, streaming, one row per task in task order.

        Use it for large workflows instead of paging get_workflow_status: .npy gives the embeddings
        as one float32 matrix for numpy, .parquet a table, .jsonl one JSON object per task. The
        workflow must be completed unless partial=true. The file appears whole or not at all
        (written beside it, then renamed). Sends progress notifications (tasks written/total).
        """
        async def progress(done: int, total: int) -> None:
            await ctx.report_progress(done, total, f"{done}/{total} rows written")

        try:
            from p2p import export as p2p_export  # lazily: numpy and the writers only when exporting

            raw = await p2p_export.export_workflow_results(node, workflow_id, path, format, partial, overwrite, progress)
        except NodeError as exc:
            raise ToolError(str(exc)) from None
        return reply(ExportResult.model_validate(raw), export_text(raw))
