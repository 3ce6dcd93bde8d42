"""The ``search_workflow`` and ``compare_texts`` MCP tools: use what the network embedded.

Kept apart from ``mcp_server.server`` (and importing nothing of it) so the server adds them with
one call, ``register_search_tools(server, node)``, in ``build_server``. The work itself is
``p2p.search``; this module types the calls and the replies.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.answers import compare_text, reply, search_text
from p2p import search as p2p_search
from p2p.errors import NodeError

READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)


class SearchHit(BaseModel):
    """One task of the workflow, with its cosine similarity to the query."""

    task_id: str
    input: str = Field(description="The task's input text (its first 1,000 characters; get_workflow_status has it all).")
    score: float = Field(description="Cosine similarity of the task's embedding and the query's, -1 to 1.")
    input_truncated: bool = Field(False, description="True when input was cut to 1,000 characters.")


class SearchResult(BaseModel):
    """The nearest tasks to a query, best first, and what the search used."""

    workflow_id: str
    model: str = Field(description="The workflow's model, which embedded the query too.")
    state: str = Field(description="The workflow's state.")
    partial: bool
    k: int
    vectors: int = Field(description="Embeddings searched: the workflow's tasks with a result here.")
    dim: int
    index: Literal["built", "loaded", "memory"] = Field(description=(
        "Where the index came from: built now from the results, loaded from the node's disk, or held in memory."))
    index_seconds: float
    embed_seconds: float
    embedded_by: str = Field(description="Peer id that embedded the query: this node's, or a peer's that serves the model.")
    search_seconds: float
    results: list[SearchHit] = Field(description="Up to k tasks, highest score first.")


class CompareResult(BaseModel):
    """Pairwise cosine similarities of the texts given."""

    model: str
    texts: int
    dim: int
    embedded_by: str = Field(description="Peer id that embedded the texts: this node's, or a peer's that serves the model.")
    matrix: list[list[float]] = Field(description="matrix[i][j]: cosine similarity of texts[i] and texts[j] (1 on the diagonal).")
    seconds: float


def register_search_tools(server: MCPServer, node: Any) -> None:
    """Add ``search_workflow`` and ``compare_texts`` to ``server``, over ``node`` (a ``p2p.node.Node``)."""
    indexes = p2p_search.node_indexes(node)

    @server.tool(annotations=READ_ONLY)
    async def search_workflow(
        workflow_id: Annotated[str, Field(min_length=1, description="The workflow_id of an embedding workflow.")],
        query: Annotated[str, Field(min_length=1, description="Text to look for; embedded with the workflow's model.")],
        k: Annotated[int, Field(ge=1, le=p2p_search.MAX_K, description="How many tasks to return (1 to 100).")] = 5,
        partial: Annotated[bool, Field(description=(
            "Search a workflow that is not completed: only the tasks with a result so far."))] = False,
    ) -> SearchResult:
        """Find the tasks of an embedding workflow whose inputs are nearest in meaning to a query.

        Embeds the query with the workflow's model (the same files): on this node when it
        serves that model, else on a connected peer that does (embedded_by says which).
        Returns the top k tasks by cosine similarity, best first, as {task_id, input, score}.
        Exact search; the index is built on first use and kept on the node across restarts.
        The workflow must be completed unless partial=true.
        """
        try:
            raw = await p2p_search.search_workflow(node, indexes, workflow_id, query, k, partial)
        except NodeError as exc:
            raise ToolError(str(exc)) from None
        return reply(SearchResult.model_validate(raw), search_text(raw))

    @server.tool(annotations=READ_ONLY)
    async def compare_texts(
        texts: Annotated[list[str], Field(min_length=p2p_search.MIN_TEXTS, max_length=p2p_search.MAX_TEXTS,
                                          description="2 to 64 texts to compare, each non-empty.")],
        model: Annotated[str | None, Field(min_length=1, description=(
            "An embedding model this node or a connected peer serves; default: the node's default model."))] = None,
    ) -> CompareResult:
        """Cosine similarity matrix of a handful of texts (2 to 64), embedded on this node, or on a
        connected peer when this node does not serve the model (embedded_by says which)."""
        try:
            raw = await p2p_search.compare_texts(node, texts, model)
        except NodeError as exc:
            raise ToolError(str(exc)) from None
        return reply(CompareResult.model_validate(raw), compare_text(raw))
