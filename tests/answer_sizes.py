"""What a tool's default answer may cost an agent's context (issue 13, item 1), shared by the
tests that call every tool: tests/mcp/test_answers.py (one node) and tests/network/test_pull.py
(``pull_model`` and ``connect_peer``, which need a peer).

A budget is about twice what the answer measured when it was set, so a test fails when an answer
grows by a new field copied per task or a second copy of the data, not on a changed figure.
Pages are budgeted per task on the page."""

from __future__ import annotations

import json
from typing import Any

from mcp_server.answers import MAX_TEXT

RUN_INFERENCE_BUDGET = 1500  # the goal: one sentence through run_inference, all content

BUDGETS: dict[str, int] = {
    "run_inference": RUN_INFERENCE_BUDGET,
    "submit_workflow": 1500,
    "get_workflow_status(limit=0)": 1500,
    "list_workflows": 1500,
    "list_models": 4000,
    "list_peers": 3000,
    "get_node_info": 4000,
    "set_workflow_priority": 1500,
    "search_workflow": 3000,
    "compare_texts": 1500,
    "export_workflow_results": 1500,
    "cancel_workflow": 1500,
    "submit_workflow_file": 2000,
    "pull_model": 3000,
    "connect_peer": 1500,
}
# a status page (get_workflow_status, wait_for_workflow): a fixed part plus so much per task
PAGE_BASE, PER_TASK, PER_TASK_WITH_RESULTS = 1000, 400, 700


def content_chars(res: Any) -> int:
    """Characters an agent's context takes in: every text block (and link URI) plus the
    structured content."""
    text = sum(len(getattr(c, "text", "") or "") + len(getattr(c, "uri", "") or "") for c in res.content)
    return text + len(json.dumps(res.structured_content, separators=(",", ":")))


def text_of(res: Any) -> str:
    return "\n".join(c.text for c in res.content if getattr(c, "type", None) == "text")


def assert_summary(res: Any) -> None:
    """The text block is a short summary, never the structured JSON again."""
    text = text_of(res)
    assert text and len(text) <= MAX_TEXT, text
    try:
        parsed = json.loads(text)
    except ValueError:
        return
    assert parsed != res.structured_content, "the text block repeats the structured content"


def budget(key: str, tasks_on_page: int = 0) -> int:
    """The budget of one answer; ``key`` as the size tests name it."""
    if key.startswith(("get_workflow_status", "wait_for_workflow")) and "limit=0" not in key:
        return PAGE_BASE + tasks_on_page * (PER_TASK_WITH_RESULTS if "+results" in key else PER_TASK)
    return BUDGETS[key]


def assert_within_budget(key: str, res: Any, tasks_on_page: int = 0) -> int:
    size = content_chars(res)
    assert size <= budget(key, tasks_on_page), f"{key}: {size} characters of content, budget {budget(key, tasks_on_page)}"
    assert_summary(res)
    return size
