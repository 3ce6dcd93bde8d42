"""Pages cut by ``mcp_server.pages`` fit one reply as the SDK puts it on the wire (under 1 MiB,
what its streamable-HTTP client accepts as one event), for tool answers and resource reads,
with wide vectors and non-ASCII text, and they are not cut far below the limit either.

The wire size is measured on the SDK's own types: the JSON-RPC response the server writes
(``model_dump_json(by_alias=True, exclude_unset=True)``), not an estimate."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.types import CallToolResult, JSONRPCResponse, ReadResourceResult, TextContent, TextResourceContents

from mcp_server.answers import reply, status_text
from mcp_server.pages import MAX_REPLY_BYTES, REPLY_BUDGET, build_page, text_cost
from mcp_server.resources import _json
from mcp_server.schemas import WorkflowStatusOut

WID = "ab" * 16
N = 4000


def _task(i: int, dim: int, text: str) -> dict[str, Any]:
    return {"task_id": f"{WID}/{i}", "state": "done", "attempts": 1, "peer": "12D3KooW" + "x" * 44,
            "result": {"embedding": [((i * 7919 + j) % 1000) / 997.0 - 0.5 for j in range(dim)], "note": text},
            "stats": {"ms": 1.5, "backend": "onnx", "device": "cpu", "task": "embedding"}}


def _fetch(dim: int, text: str) -> Any:
    head = {"workflow_id": WID, "name": "wide ✓ 名前", "state": "completed", "priority": 5, "tag": "p2p-eligible",
            "submitter": "12D3KooW" + "y" * 44, "created_at": 1.0, "replicas": 1, "cache": True, "total": N,
            "completed": N, "failed": 0, "cancelled": 0, "running": 0, "pending": 0, "offset": 0}

    def fetch(at: int, count: int) -> dict[str, Any]:
        return {**head, "offset": at, "limit": count, "tasks": [_task(i, dim, text) for i in range(at, min(N, at + count))]}

    return fetch


def _wire(result: Any) -> int:
    msg = JSONRPCResponse(jsonrpc="2.0", id=12345, result=result.model_dump(by_alias=True, exclude_none=True))
    return len(msg.model_dump_json(by_alias=True, exclude_unset=True).encode())


CASES = [(384, "ascii only"), (768, "ascii only"), (768, "非ASCII テキスト ✓ — “quoted” \\ back\\slash\n" * 3)]


@pytest.mark.parametrize("dim,text", CASES)
def test_a_resource_page_fits_one_reply(dim: int, text: str) -> None:
    page = build_page(_fetch(dim, text), 0, 10_000, cost=text_cost)
    assert page["has_more"] and 0 < page["limit"] == len(page["tasks"]) < N
    size = _wire(ReadResourceResult(contents=[TextResourceContents(uri=f"workflow://{WID}/results", mime_type="application/json",
                                                                   text=_json(page))]))
    assert size < MAX_REPLY_BYTES, size
    assert size > REPLY_BUDGET * 0.9, f"cut far below the limit: {size} bytes"


@pytest.mark.parametrize("dim,text", CASES)
def test_a_tool_page_fits_one_reply(dim: int, text: str) -> None:
    page = build_page(_fetch(dim, text), 0, 10_000)
    answer = reply(WorkflowStatusOut.model_validate(page), status_text(page))
    assert isinstance(answer, CallToolResult) and isinstance(answer.content[0], TextContent)
    size = _wire(answer)
    assert size < MAX_REPLY_BYTES, size
    assert size > REPLY_BUDGET * 0.9, f"cut far below the limit: {size} bytes"
