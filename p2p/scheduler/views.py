"""Read-only pictures of the state, shaped for the tools (plain dicts; the MCP layer types them)."""

from __future__ import annotations

from typing import Any, Callable

from p2p.scheduler.results import unpack_result
from p2p.scheduler.state import State, TaskState, TaskStatus, WorkflowState

# Loads a result stored as its own block; None when the block has not arrived yet.
BlockLoader = Callable[[Any], dict[str, Any] | None]


def workflow_summary(state: State, wf: WorkflowState) -> dict[str, Any]:
    gone = state.dropped.get(wf.workflow_id)
    if gone is not None:  # records dropped after compaction: the verified snapshot's summary
        return gone.view()
    counts = state.counts(wf)
    return {
        "workflow_id": wf.workflow_id,
        "name": wf.name,
        "state": state.workflow_status(wf).value,
        "priority": wf.priority,
        "tag": wf.tag.value,
        "submitter": wf.submitter,
        "created_at": wf.created_at,
        "replicas": wf.replicas,
        "cache": wf.cache,
        "total": len(wf.task_ids),
        "completed": counts[TaskStatus.DONE],
        "failed": counts[TaskStatus.FAILED],
        "cancelled": counts[TaskStatus.CANCELLED],
        "running": counts[TaskStatus.RUNNING],
        "pending": counts[TaskStatus.QUEUED] + counts[TaskStatus.CLAIMED],
        # set once its submitter compacted it: it reads as it stood at that cut (docs/compaction.md)
        # (results_expired: this node deleted its result blocks after results.retention_s)
        "compacted": None if wf.compacted is None else {"snapshot": str(wf.compacted.snapshot), "by": wf.compacted.where.who,
                                                        "results_expired": wf.workflow_id in state.expired},
    }


# Why a queued task waits, when something other than its turn holds it (None: nothing to say).
Waiting = Callable[[TaskState, WorkflowState], str | None]


def task_view(state: State, task: TaskState, include_result: bool, load_block: BlockLoader,
              waiting: Waiting | None = None) -> dict[str, Any]:
    wf = state.workflows[task.workflow_id]
    if wf.replicas > 1:
        return _replicated_view(state, wf, task, include_result, load_block, waiting)
    status = state.task_status(task)
    result = task.result
    owner = task.owner()
    view: dict[str, Any] = {"task_id": task.task_id, "state": status.value, "attempts": task.attempt}
    peer = result.peer if result else (owner.peer if owner else None)
    if peer is not None:  # absent while queued: keys that don't apply are left out
        view["peer"] = peer
    if status is TaskStatus.QUEUED and waiting is not None and (why := waiting(task, wf)):
        view["waiting"] = why
    _outcome_fields(view, status, task.errors(), task.late_results if status is TaskStatus.FAILED else [],
                    result, include_result, load_block)
    return view


def _replicated_view(state: State, wf: WorkflowState, task: TaskState, include_result: bool,
                     load_block: BlockLoader, waiting: Waiting | None) -> dict[str, Any]:
    """One task of a replicated workflow, from its slots: the verdict's state and result, the
    peers that agreed (``peers``) and those outvoted (``disputed_by``), every slot's errors."""
    index = task.index % len(wf.task_ids)
    slots = state.slots_of(wf, index)
    v = state.verdict(wf, index)
    status = state.logical_status(task)
    opened = slots[:v.open]
    view: dict[str, Any] = {"task_id": task.task_id, "state": status.value,
                            "attempts": max((t.attempt for t in opened), default=0)}
    result = slots[v.accepted.slot].result if v.accepted is not None else None
    if result is not None:
        view["peer"] = result.peer
    if v.peers:
        view["peers"] = list(v.peers)
    elif not v.decided:
        running = [o.peer for t in opened if (o := t.owner()) is not None]
        if running:
            view["peers"] = running
    if v.disputed_by:
        view["disputed_by"] = list(v.disputed_by)
    if not v.decided and not wf.cancelled and waiting is not None and (why := waiting(task, wf)):
        view["waiting"] = why
    errors = sorted((e for t in opened for e in t.errors()), key=lambda e: (e["attempt"], str(e["peer"])))
    if v.error is not None:
        errors.append({"attempt": view["attempts"], "peer": None, "error": v.error, "expired": False})
    _outcome_fields(view, status, errors, [], result, include_result, load_block)
    return view


def _outcome_fields(view: dict[str, Any], status: TaskStatus, errors: list[dict[str, Any]], late: list[Any],
                    result: Any, include_result: bool, load_block: BlockLoader) -> None:
    if errors:
        view["errors"] = errors
    if status is TaskStatus.FAILED and errors:
        view["error"] = errors[-1]["error"]
    if late:  # results written after the task had failed for good: shown, the state stays failed
        view["late_results"] = [{"peer": o.peer, "attempt": o.attempt} for o in late]
    if result is not None:
        view["stats"] = _json_safe(result.stats)
        if result.cached:
            view["cached"] = True
        if include_result:
            result_field(view, result.result, result.result_cid, result.peer, load_block)


def result_field(view: dict[str, Any], stored: Any, cid: Any, peer: Any, load_block: BlockLoader) -> None:
    """A task's ``result`` as the tool shows it, from its stored form (inline, else the block
    ``cid`` names; ``result_cid`` while that block has not arrived). Also for the task records of
    a compacted workflow's snapshot (``p2p.compaction.pages``), which keep the stored form."""
    try:
        if stored is not None:
            view["result"] = _json_safe(unpack_result(stored))
        else:
            block = load_block(cid)
            if block is not None:
                view["result"] = _json_safe(unpack_result(block))
            else:
                view["result_cid"] = str(cid)
    except Exception as exc:  # a peer's malformed result breaks its own task only
        view["error"] = f"unreadable result from {peer}: {type(exc).__name__}: {exc}"


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
    waiting: Waiting | None = None,
) -> dict[str, Any]:
    out = workflow_summary(state, wf)
    page = wf.task_ids[offset : offset + limit]
    out["offset"] = offset
    out["limit"] = limit
    out["tasks"] = [task_view(state, state.task(tid), include_results, load_block, waiting) for tid in page]
    out["has_more"] = offset + len(page) < len(wf.task_ids)
    return out
