"""The ``submit_workflow_file`` MCP tool: a workflow from a file of inputs on the node.

Kept apart from ``mcp_server.server`` (and importing nothing of it) so the server adds it with
one call, ``register_file_submit_tool(server, node)``, in ``build_server``. The file is parsed
by ``p2p.workflow_file.read_inputs`` in a worker thread (the event loop never waits on disk),
then the tasks take the node's ordinary submit path, ``Node.submit_workflow``: the same checks,
the same single clock event, the same limits (``scheduler.max_tasks_per_workflow``,
``clock.max_block_bytes``) as ``submit_workflow``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import trio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_server.answers import reply, summary_text
from mcp_server.schemas import Tag, WorkflowSummary
from p2p.errors import NodeError
from p2p.workflow_file import FileInputs, ReadProgress, read_inputs

FileFormat = Literal["jsonl", "csv", "parquet", "text"]
PROGRESS_EVERY_S = 0.25


class FileSubmitResult(WorkflowSummary):
    """The submitted workflow's summary, and what was read: from where, how, how much."""

    path: str = Field(description="The file read, on the node's machine.")
    format: FileFormat
    column: str | None = Field(description="The JSONL field or CSV/Parquet column read; null for text.")
    rows: int = Field(description="Inputs read: one task each, in file order (task i is the i-th input).")
    bytes: int = Field(description="Size of the file.")
    read_s: float = Field(description="Seconds spent reading and checking the file.")


def register_file_submit_tool(server: MCPServer, node: Any) -> None:
    """Add ``submit_workflow_file`` to ``server``, over ``node`` (a ``p2p.node.Node``)."""

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False))
    async def submit_workflow_file(
        path: Annotated[str, Field(min_length=1, max_length=4096, description=(
            "Absolute path of the input file, on the node's machine. One input per row: .jsonl/.ndjson (an 'input' "
            "field, else 'text'), .csv (a header row; the column named, default 'input' then 'text'), .parquet "
            "(same column rule; needs pyarrow on the node), .txt (one input per non-blank line)."))],
        model: Annotated[str, Field(min_length=1, max_length=512, description="The model every task runs; list_models shows them.")],
        ctx: Context,
        task: Annotated[Literal["embedding", "text-classification", "fill-mask"] | None, Field(
            description="What to compute; inferred from the model when omitted.")] = None,
        name: Annotated[str | None, Field(max_length=512, description="A label for the workflow (default: the file's name).")] = None,
        priority: Annotated[int, Field(ge=1, le=10, description="1 is the highest priority, 10 the lowest.")] = 5,
        tag: Annotated[Tag, Field(description="p2p-eligible: any peer, this one included; p2p-only: never this peer; local-only: only this peer.")] = "p2p-eligible",
        replicas: Annotated[int, Field(ge=1, le=5, description="Run each task on this many distinct peers and accept a result only when they agree.")] = 1,
        column: Annotated[str | None, Field(min_length=1, max_length=512, description=(
            "The CSV or Parquet column, or the JSONL field, holding the inputs (default: 'input', else 'text')."))] = None,
        format: Annotated[FileFormat | None, Field(description="The file's format (default: from the extension).")] = None,
        cache: Annotated[bool, Field(description="false: run every task afresh, never answering from the network's result cache.")] = True,
    ) -> FileSubmitResult:
        """Submit a workflow with one task per row of a file on the node, and return at once.

        Use it for a corpus too large to pass inline (e.g. embedding documents listed in a JSONL
        file): the node reads the file itself, checks every row first and submits nothing when
        any row is bad (the error names the row), or when the file has more rows than a workflow
        may hold. Tasks keep the file's order. Sends progress notifications while reading.
        Follow up with wait_for_workflow, get_workflow_status or export_workflow_results.
        """
        cfg = node.config.scheduler
        prog = ReadProgress()
        read = partial(read_inputs, Path(path), format, column, max_rows=cfg.max_tasks_per_workflow,
                       max_input_chars=cfg.max_input_chars, protected=Path(node.config.data_dir).expanduser(),
                       progress=prog)

        async def report() -> None:
            while True:
                await trio.sleep(PROGRESS_EVERY_S)
                if prog.total:
                    await ctx.report_progress(prog.done, prog.total, f"{prog.rows} rows read")

        got: FileInputs | None = None
        failed: Exception | None = None
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            try:
                got = await trio.to_thread.run_sync(read)
            except Exception as exc:  # raised below, outside the nursery (which would wrap it in a group)
                failed = exc
            nursery.cancel_scope.cancel()
        if isinstance(failed, NodeError):
            raise ToolError(str(failed)) from None
        if failed is not None:
            raise failed
        assert got is not None
        read_s = time.perf_counter() - started
        await ctx.report_progress(prog.total, prog.total, f"{prog.rows} rows read")
        spec: dict[str, Any] = {"model": model, **({"task": task} if task else {})}
        try:
            raw = await node.submit_inputs(name or got.path.name, spec, got.inputs, priority, tag, replicas, cache)
        except NodeError as exc:
            raise ToolError(str(exc)) from None
        out = FileSubmitResult.model_validate({**raw, "path": str(got.path), "format": got.format, "column": got.column,
                                               "rows": len(got.inputs), "bytes": got.bytes, "read_s": round(read_s, 6)})
        return reply(out, summary_text(raw, f"submitted from {got.path} ({len(got.inputs)} {got.format} rows):")
                     + " Follow it with wait_for_workflow or get_workflow_status.")
