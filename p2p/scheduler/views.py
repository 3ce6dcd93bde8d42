"""Read-only pictures of the state, shaped for the tools (plain dicts; the MCP layer types them)."""

from __future__ import annotations

from typing import Any, Callable

from p2p.scheduler.results import unpack_result
from p2p.scheduler.state import State, TaskState, TaskStatus, WorkflowState

# Loads a result stored as its own block; None when the block has not arrived yet.
BlockLoader = Callable[[Any], dict[str, Any] | None]


def workflow_summary(state: State, wf: WorkflowState) -> dict[str, Any]:
    counts = state.counts(wf)
    return {
        "workflow_id": wf.workflow_id,
        "name": wf.name,
        "state": state.workflow_status(wf).value,
        "priority": wf.priority,
        "tag": wf.tag.value,
        "submitter": wf.submitter,
        "created_at": wf.created_at,
        "total": len(wf.task_ids),
        "completed": counts[TaskStatus.DONE],
        "failed": counts[TaskStatus.FAILED],
        "cancelled": counts[TaskStatus.CANCELLED],
        "running": counts[TaskStatus.RUNNING],
        "pending": counts[TaskStatus.QUEUED] + counts[TaskStatus.CLAIMED],
    }


def task_view(state: State, task: TaskState, include_result: bool, load_block: BlockLoader) -> dict[str, Any]:
    status = state.task_status(task)
    result = task.result
    owner = task.owner()
    view: dict[str, Any] = {"task_id": task.task_id, "state": status.value, "attempts": task.attempt}
    peer = result.peer if result else (owner.peer if owner else None)
    if peer is not None:  # absent while queued: keys that don't apply are left out
        view["peer"] = peer
    errors = task.errors()
    if errors:
        view["errors"] = errors
    if status is TaskStatus.FAILED and errors:
        view["error"] = errors[-1]["error"]
    late = task.late_results if status is TaskStatus.FAILED else []
    if late:  # results written after the task had failed for good: shown, the state stays failed
        view["late_results"] = [{"peer": o.peer, "attempt": o.attempt} for o in late]
    if result is not None:
        view["stats"] = _json_safe(result.stats)
        if include_result:
            try:
                if result.result is not None:
                    view["result"] = _json_safe(unpack_result(result.result))
                else:
                    stored = load_block(result.result_cid)
                    if stored is not None:
                        view["result"] = _json_safe(unpack_result(stored))
                    else:
                        view["result_cid"] = str(result.result_cid)
            except Exception as exc:  # a peer's malformed result breaks its own task only
                view["error"] = f"unreadable result from {result.peer}: {type(exc).__name__}: {exc}"
    return view


def _json_safe(value: Any) -> Any:
    """Results and stats come from peers: keep what JSON can carry, stringify the rest."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def workflow_status(
    state: State,
    wf: WorkflowState,
    *,
    include_results: bool,
    offset: int,
    limit: int,
    load_block: BlockLoader,
) -> dict[str, Any]:
    out = workflow_summary(state, wf)
    page = wf.task_ids[offset : offset + limit]
    out["offset"] = offset
    out["limit"] = limit
    out["tasks"] = [task_view(state, state.tasks[tid], include_results, load_block) for tid in page]
    out["has_more"] = offset + len(page) < len(wf.task_ids)
    return out
