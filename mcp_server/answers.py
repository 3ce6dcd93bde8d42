"""What an agent reads: tool answers sized for a context window.

Why this module: left to itself, the SDK puts a tool's structured output into the reply twice,
as ``structuredContent`` and, for clients that read only text, as the same JSON pretty-printed
into a text block. One 384-dimensional embedding from ``run_inference`` cost about 20,000
characters (some 7,000 tokens) of an agent's context, for numbers it cannot use as text. So:

- the text block is a short, readable summary (what happened, the figures an agent acts on,
  where to read more), never a copy of the JSON; ``structuredContent`` alone carries the data
  and always matches the tool's outputSchema (the SDK validates it);
- vectors are compact by default: ``dim``, ``norm``, the first 8 values (rounded, a preview),
  and ``ref``, a resource URI that gives the whole vector. ``format="floats"`` gives the full
  list as before; ``format="base64"`` the little-endian float32 bytes, a quarter of the size;
- long score lists (classification over many labels, fill-mask with a large ``top_k``) keep
  their best few, with the count and the same ``ref``.

Pure functions over plain dicts: the tools call them on what the node returned.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar

from mcp.types import CallToolResult, ResourceLink, TextContent
from pydantic import BaseModel

Format = Literal["compact", "floats", "base64"]
FORMATS: tuple[str, ...] = ("compact", "floats", "base64")
HEAD = 8  # values of a vector shown in the compact form
TOP = 5  # scores or predictions kept in the compact form
MAX_TEXT = 1200  # characters of a summary; a list in it stops early and says how many more
LIST_LINES = 12  # items of a list named in a summary

M = TypeVar("M", bound=BaseModel)


def reply(out: M, text: str, links: Sequence[ResourceLink] = ()) -> M:
    """``out`` as the tool's answer, with ``text`` (cut to ``MAX_TEXT``) as its only text block
    and ``links`` as resource links. Typed as ``out`` so a tool keeps its return annotation
    (which gives its outputSchema); the SDK validates the structured content against it."""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT - 1] + "…"
    content: list[Any] = [TextContent(type="text", text=text), *links]
    return CallToolResult(content=content, structured_content=out.model_dump(mode="json", by_alias=True))  # type: ignore[return-value]


def link(uri: str, name: str, mime_type: str, description: str) -> ResourceLink:
    return ResourceLink(type="resource_link", uri=uri, name=name, mime_type=mime_type, description=description)


# ---------------------------------------------------------------- outputs


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def shape_output(output: dict[str, Any], fmt: Format, ref: str | None) -> dict[str, Any]:
    """One model output (an embedding, a classification or fill-mask predictions) in ``fmt``.
    Anything else, and every output in ``"floats"``, comes back as it is."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    if fmt == "floats" or not isinstance(output, dict):
        return output
    vec = output.get("embedding")
    if isinstance(vec, list):
        rest = {k: v for k, v in output.items() if k != "embedding"}
        arr = np.asarray(vec, dtype="<f4")
        if fmt == "base64":
            return {**rest, "dim": int(arr.size), "dtype": "<f4",
                    "embedding_base64": base64.b64encode(arr.tobytes()).decode("ascii")}
        shaped = {**rest, "dim": int(arr.size), "norm": _round(float(np.linalg.norm(arr.astype(np.float64)))),
                  "head": [_round(float(x)) for x in arr[:HEAD]]}
        return {**shaped, "ref": ref} if ref else shaped
    if fmt != "compact":  # base64 changes vectors only
        return output
    scores = output.get("scores")
    if isinstance(scores, dict) and len(scores) > TOP:
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        shaped = {**output, "scores": dict(best), "labels": len(scores)}
        return {**shaped, "ref": ref} if ref else shaped
    preds = output.get("predictions")
    if isinstance(preds, list) and len(preds) > TOP:
        shaped = {**output, "predictions": preds[:TOP], "predictions_total": len(preds)}
        return {**shaped, "ref": ref} if ref else shaped
    return output


def describe_output(output: dict[str, Any]) -> str:
    """A few words for one output (full or shaped), for a summary."""
    if not isinstance(output, dict):
        return "?"
    if "embedding" in output or "embedding_base64" in output or "head" in output:
        dim = output.get("dim") or len(output.get("embedding") or [])
        norm = output.get("norm")
        if norm is None and isinstance(output.get("embedding"), list):
            norm = math.sqrt(sum(x * x for x in output["embedding"]))
        return f"vector of {dim}" + (f", norm {norm:.3f}" if norm is not None else "")
    if "label" in output:
        return f"{output['label']} ({float(output.get('score', 0.0)):.3f})"
    preds = output.get("predictions")
    if isinstance(preds, list):
        return ", ".join(f"{p.get('token', '?')!s} ({float(p.get('score', 0.0)):.3f})" for p in preds[:3]) or "no predictions"
    return ", ".join(sorted(output))[:80]


def _lines(items: Iterable[str], total: int) -> str:
    out = []
    for i, line in enumerate(items):
        if i == LIST_LINES:
            break
        out.append(f"- {line}")
    if total > len(out):
        out.append(f"- … and {total - len(out)} more (in the structured content)")
    return "\n".join(out)


# ---------------------------------------------------------------- summaries


def inference_text(out: dict[str, Any], ref: str | None) -> str:
    outputs = out.get("outputs", [])
    head = (f"{out.get('task')} of {len(outputs)} text{'s' if len(outputs) != 1 else ''} with {out.get('model')} "
            f"({out.get('backend')}, {out.get('device')}" + (f", on peer {out['peer']}" if out.get("remote") else "") + "):")
    body = _lines((f"[{i}] {describe_output(o)}" for i, o in enumerate(outputs)), len(outputs))
    tail = f"\nFull outputs: read {ref}, or call again with format=\"floats\" (or \"base64\")." if ref else ""
    return f"{head}\n{body}{tail}"


def counts(w: dict[str, Any]) -> str:
    return (f"{w.get('completed', 0)}/{w.get('total', 0)} done, {w.get('failed', 0)} failed, "
            f"{w.get('cancelled', 0)} cancelled, {w.get('running', 0)} running, {w.get('pending', 0)} pending")


def workflow_line(w: dict[str, Any]) -> str:
    return f"{w.get('workflow_id')} \"{w.get('name')}\": {w.get('state')}, {counts(w)}, priority {w.get('priority')}"


def summary_text(w: dict[str, Any], verb: str = "") -> str:
    lead = f"Workflow {verb} " if verb else "Workflow "
    return f"{lead}{workflow_line(w)}."


def status_text(page: dict[str, Any]) -> str:
    text = summary_text(page)
    tasks = page.get("tasks") or []
    if tasks:
        first = page.get("offset", 0)
        text += f"\nThis page: tasks {first}–{first + len(tasks) - 1} of {page.get('total')}"
        text += "; more follow (offset=offset+limit)." if page.get("has_more") else "."
        failed = [t for t in tasks if t.get("state") == "failed"]
        if failed:
            text += "\nFailed on this page:\n" + _lines((f"{t['task_id']}: {t.get('error', '?')}" for t in failed), len(failed))
    elif page.get("limit") == 0:
        text += "\nCounts only (limit=0)."
    return text


def workflows_text(ws: list[dict[str, Any]]) -> str:
    if not ws:
        return "No workflows."
    return f"{len(ws)} workflow{'s' if len(ws) != 1 else ''}, newest first:\n" + _lines(map(workflow_line, ws), len(ws))


def models_text(models: list[dict[str, Any]]) -> str:
    if not models:
        return "No model is served by this node or its live peers."
    def line(m: dict[str, Any]) -> str:
        where = ["this node"] if m.get("local") else []
        peers = m.get("peers") or []
        if peers:
            where.append(f"{len(peers)} peer{'s' if len(peers) != 1 else ''}")
        return f"{m.get('model')} (cid {str(m.get('cid'))[:16]}…): {', '.join(where) or 'no live server'}"
    return f"{len(models)} model row{'s' if len(models) != 1 else ''}:\n" + _lines(map(line, models), len(models))


def _peer_line(p: dict[str, Any], me: bool = False) -> str:
    rtt = p.get("rtt_ms")
    bits = [f"{p.get('name')} ({str(p.get('peer_id'))[:12]}…)", f"models {', '.join(p.get('models') or []) or 'none'}",
            f"queue {p.get('queue')}"]
    w = p.get("workers")
    if isinstance(w, dict) and w:
        bits.append(f"workers {w.get('live', 0)}/{w.get('target', 0)} {w.get('mode', '')}".rstrip())
    if not me:
        bits.append(f"rtt {rtt:.0f} ms" if isinstance(rtt, (int, float)) else "rtt ?")
        if not p.get("compatible", True):
            bits.append("INCOMPATIBLE: " + ", ".join(p.get("incompatible_keys") or []))
    return ("self: " if me else "") + ", ".join(bits)


def peers_text(out: dict[str, Any]) -> str:
    peers = out.get("peers") or []
    head = _peer_line(out.get("self") or {}, me=True)
    return f"{head}\n{len(peers)} live peer{'s' if len(peers) != 1 else ''}" + (
        ":\n" + _lines(map(_peer_line, peers), len(peers)) if peers else ".")


def node_text(info: dict[str, Any]) -> str:
    clock = info.get("clock") or {}
    return (f"Node {info.get('name')} ({str(info.get('peer_id'))[:12]}…), version {info.get('version')}, up "
            f"{float(info.get('uptime_s', 0)):.0f} s. Clock: {clock.get('events')} events, {len(clock.get('heads') or [])} "
            f"head(s), hash {str(clock.get('hash'))[:16]}…. {info.get('workflows')} workflows, queue {info.get('queue')}. "
            f"Models: {', '.join(info.get('models') or []) or 'none'}.")


def pull_text(out: dict[str, Any]) -> str:
    if out.get("already_local"):
        return f"{out.get('model')} ({out.get('cid')}) was already served here, at {out.get('path')}."
    st = out.get("stats") or {}
    return (f"Pulled {out.get('model')} ({out.get('cid')}): {st.get('bytes_fetched', 0)} bytes in "
            f"{st.get('blocks_fetched', 0)} blocks ({st.get('blocks_reused', 0)} reused) in {float(st.get('seconds', 0)):.1f} s; "
            f"served from {out.get('path')}.")


def search_text(out: dict[str, Any]) -> str:
    hits = out.get("results") or []
    head = (f"Top {len(hits)} of {out.get('vectors')} tasks of {out.get('workflow_id')} for the query "
            f"({out.get('model')}):")
    def line(h: dict[str, Any]) -> str:
        text = str(h.get("input", ""))
        return f"{float(h.get('score', 0)):.3f} {h.get('task_id')}: {text[:80]}{'…' if len(text) > 80 else ''}"
    return f"{head}\n" + _lines(map(line, hits), len(hits))


def compare_text(out: dict[str, Any]) -> str:
    m = out.get("matrix") or []
    n = len(m)
    pairs = sorted(((m[i][j], i, j) for i in range(n) for j in range(i + 1, n)), reverse=True)
    body = _lines((f"texts {i} and {j}: {s:.3f}" for s, i, j in pairs), len(pairs))
    return f"Cosine similarity of {n} texts ({out.get('model')}, dim {out.get('dim')}); most similar pairs first:\n{body}"


def export_text(out: dict[str, Any]) -> str:
    shape = f", shape {out['shape']}" if out.get("shape") else ""
    return (f"Wrote {out.get('rows')} rows ({out.get('with_output')} with output) of {out.get('workflow_id')} to "
            f"{out.get('path')} as {out.get('format')}{shape}: {out.get('bytes')} bytes in {float(out.get('seconds', 0)):.1f} s.")
