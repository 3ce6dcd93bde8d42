"""Status pages that fit one MCP reply.

Why: the SDK's streamable-HTTP client refuses a server event over 1 MiB
(``DEFAULT_MAX_SSE_EVENT_SIZE``), and one tools/call reply or resources/read answer is one event.
A 10,000-task status page with results is far larger, so a page is filled a chunk of tasks at a
time and cut where the next task would not fit; ``has_more`` and ``limit`` tell the reader where
to go on. Pure functions over what the node returns.
"""

from __future__ import annotations

from typing import Any, Callable

import pydantic_core
import structlog

log = structlog.get_logger("mcp_server")

# Pages are cut to leave room for the JSON-RPC envelope and the answer's short text summary.
MAX_REPLY_BYTES = 1 << 20
REPLY_BUDGET = MAX_REPLY_BYTES - 16 * 1024


def reply_cost(obj: Any) -> int:
    """Bytes ``obj`` adds to a reply: its compact JSON. A tool's answer carries its data once,
    as structuredContent (``mcp_server.answers.reply``; the text block is a short summary), and a
    resource's JSON text once; the JSON-RPC envelope escapes nothing in an object it embeds. The
    +8 covers the separators around it. The SDK writes JSON-RPC messages as UTF-8 without
    escaping, as ``to_json`` does, so bytes here are bytes on the wire."""
    return len(pydantic_core.to_json(obj)) + 8


def text_cost(obj: Any) -> int:
    """Bytes ``obj`` adds to a reply as JSON text inside a JSON string (a resource's text): its
    compact JSON with each quote and backslash escaped once more."""
    raw = pydantic_core.to_json(obj)
    return len(raw) + raw.count(b'"') + raw.count(b"\\") + 8


Cost = Callable[[Any], int]

PAGE_CHUNK = 128  # tasks asked of the node at a time while filling a page


def build_page(fetch: Callable[[int, int], dict[str, Any]], offset: int, limit: int,
               budget: int = REPLY_BUDGET, cost: Cost = reply_cost) -> dict[str, Any]:
    """A status page of up to ``limit`` tasks from ``offset`` that fits one reply (by ``cost``:
    ``reply_cost`` for a tool's answer, ``text_cost`` for a resource's text), read from
    ``fetch(offset, count)`` (the node's ``workflow_status``) a chunk at a time, so a page costs
    what it holds, not what was asked. When the size cuts the page, ``limit`` says how many tasks
    it holds and ``has_more`` is true: the next page starts at offset + limit. A single task whose result alone is too large comes without it
    (``result_omitted``), so paging always moves on. ``fetch`` must not yield to other tasks
    (the node's calls are synchronous), so every chunk sees the same state."""
    raw = fetch(offset, min(limit, PAGE_CHUNK))
    head = {k: v for k, v in raw.items() if k != "tasks"}
    left = budget - cost(head)
    kept: list[dict[str, Any]] = []
    chunk = raw["tasks"]
    cut = False
    while chunk:
        for task in chunk:
            left -= cost(task) + 2
            if left < 0:
                cut = True
                break
            kept.append(task)
        if cut or len(kept) >= limit:
            break
        chunk = fetch(offset + len(kept), min(limit - len(kept), PAGE_CHUNK))["tasks"]
    if not cut:
        return {**head, "limit": limit, "has_more": offset + len(kept) < head["total"], "tasks": kept}
    if not kept:
        first = {k: v for k, v in chunk[0].items() if k != "result"}
        first["result_omitted"] = True
        kept = [first]
    log.info("status page cut to fit one reply", workflow_id=head.get("workflow_id"), asked=limit, sent=len(kept))
    return {**head, "limit": len(kept), "has_more": True, "tasks": kept}


def fit_page(raw: dict[str, Any], budget: int = REPLY_BUDGET, cost: Cost = reply_cost) -> dict[str, Any]:
    """``build_page`` over a page already read (all of ``raw["tasks"]`` from ``raw["offset"]``)."""
    tasks, offset = raw["tasks"], raw["offset"]
    total = raw.get("total", offset + len(tasks))

    def fetch(at: int, count: int) -> dict[str, Any]:
        return {**raw, "total": total, "tasks": tasks[at - offset:at - offset + count]}

    page = build_page(fetch, offset, max(1, len(tasks)), budget, cost)
    if "total" not in raw:
        page.pop("total")
    if len(page["tasks"]) == len(tasks):
        return raw
    return page
