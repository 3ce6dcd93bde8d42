"""Wire format of inference between peers (``/ipfs-accelerate/infer/1.0.0``).

Why: an agent's node may not serve the model it is asked for (``run_inference`` on a model only
a peer has), and a search query must be embedded by the very model and files that embedded the
collection. The node then asks a peer that serves it. One request frame per stream
(``NetHost.request``), one reply frame:

    request = CBOR {"t": "infer", "model": <str>, "cid": <str | null>, "task": <str | null>,
                    "texts": [<str>, ...]}
    reply   = CBOR {"t": "out", "task": <str>, "backend": <str>, "device": <str>,
                    "outputs": [<output>, ...]}        (one per text, in order)
            | CBOR {"t": "err", "error": <str>}

An output is what the engine gives (``inference.tasks``), except that an embedding travels as
its little-endian float32 bytes (a quarter of a float list's CBOR):

    embedding            {"embedding": <D*4 bytes>, "truncated"?: true}
    text-classification  {"label": <str>, "score": <float>, "scores": {<str>: <float>}, "truncated"?: true}
    fill-mask            {"predictions": [{"token": <str>, "score": <float>}, ...], "truncated"?: true}

``cid`` names the model's files (the folder's content id); the server refuses a model it does
not serve with exactly those files. An ``err`` reply is a refusal the asker repeats to its user
(unknown model, a text too long, busy); a malformed request gets no reply (the stream is reset).
Everything is bounded both ways: texts per request, characters per text, name lengths, the
dimension, labels and predictions per output, and every score is a finite number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cbor2

from p2p.protocols.wire import WireError

INFER_PROTOCOL = "/ipfs-accelerate/infer/1.0.0"
TASKS = ("embedding", "text-classification", "fill-mask")
MAX_TEXTS = 64  # compare_texts' own cap; run_inference's inputs are a handful
MAX_TEXT_CHARS = 100_000  # the wire bound; the server applies its own scheduler.max_input_chars
MAX_MODEL_CHARS = 512
MAX_CID_CHARS = 256
MAX_NAME_CHARS = 128  # task, backend, device
MAX_DIM = 16_384
MAX_LABELS = 4_096
MAX_PREDICTIONS = 100
MAX_LABEL_CHARS = 256
MAX_ERROR_CHARS = 1_000


@dataclass(frozen=True)
class InferRequest:
    model: str
    cid: str | None
    task: str | None
    texts: list[str]


@dataclass(frozen=True)
class InferReply:
    task: str
    backend: str
    device: str
    outputs: list[dict[str, Any]]  # as the engine's to_json gives them (embeddings as float lists)


def _loads(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise WireError(f"malformed infer {what}: not CBOR ({type(exc).__name__})") from None


def _short(value: Any, most: int, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > most or (not empty and not value):
        raise WireError(f"malformed infer {what}: expected a string of {0 if empty else 1} to {most} characters")
    return value


def encode_request(req: InferRequest) -> bytes:
    return cbor2.dumps({"t": "infer", "model": req.model, "cid": req.cid, "task": req.task, "texts": list(req.texts)})


def decode_request(data: bytes) -> InferRequest:
    raw = _loads(data, "request")
    if not isinstance(raw, dict) or raw.get("t") != "infer" or set(raw) != {"t", "model", "cid", "task", "texts"}:
        raise WireError("malformed infer request: expected {t: 'infer', model, cid, task, texts}")
    model = _short(raw["model"], MAX_MODEL_CHARS, "request: model")
    cid = None if raw["cid"] is None else _short(raw["cid"], MAX_CID_CHARS, "request: cid")
    task = raw["task"]
    if task is not None and task not in TASKS:
        raise WireError(f"malformed infer request: task must be null or one of {', '.join(TASKS)}")
    texts = raw["texts"]
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_TEXTS:
        raise WireError(f"malformed infer request: texts must be a list of 1 to {MAX_TEXTS} strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not 1 <= len(t) <= MAX_TEXT_CHARS:
            raise WireError(f"malformed infer request: texts[{i}] is not a string of 1 to {MAX_TEXT_CHARS} characters")
    return InferRequest(model, cid, task, texts)


def _wire_output(out: dict[str, Any]) -> dict[str, Any]:
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    vec = out.get("embedding")
    if vec is None:
        return out
    return {**out, "embedding": np.ascontiguousarray(vec, dtype="<f4").tobytes()}


def encode_reply(reply: InferReply) -> bytes:
    return cbor2.dumps({"t": "out", "task": reply.task, "backend": reply.backend, "device": reply.device,
                        "outputs": [_wire_output(o) for o in reply.outputs]})


def encode_error(message: str) -> bytes:
    return cbor2.dumps({"t": "err", "error": message[:MAX_ERROR_CHARS]})


def _score(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not -1e6 <= v <= 1e6:
        raise WireError(f"malformed infer reply: {what} is not a finite number")
    return float(v)


def _output(task: str, out: Any, i: int) -> dict[str, Any]:
    """One output, checked for its task's shape and bounds; embeddings as float lists."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    if not isinstance(out, dict):
        raise WireError(f"malformed infer reply: outputs[{i}] is not a map")
    truncated = out.get("truncated", False)
    if not isinstance(truncated, bool):
        raise WireError(f"malformed infer reply: outputs[{i}].truncated is not a boolean")
    extra = {"truncated": True} if truncated else {}
    if task == "embedding":
        if set(out) - {"embedding", "truncated"} or not isinstance(out.get("embedding"), bytes):
            raise WireError(f"malformed infer reply: outputs[{i}] is not {{embedding: bytes}}")
        buf = out["embedding"]
        if not buf or len(buf) % 4 or len(buf) > 4 * MAX_DIM:
            raise WireError(f"malformed infer reply: outputs[{i}].embedding is not 1 to {MAX_DIM} float32 values")
        vec = np.frombuffer(buf, dtype="<f4")
        if not np.isfinite(vec).all():
            raise WireError(f"malformed infer reply: outputs[{i}].embedding holds a value that is not finite")
        return {"embedding": vec.astype(np.float32).tolist(), **extra}
    if task == "text-classification":
        if set(out) - {"label", "score", "scores", "truncated"}:
            raise WireError(f"malformed infer reply: outputs[{i}] is not {{label, score, scores}}")
        scores = out.get("scores")
        if not isinstance(scores, dict) or not 1 <= len(scores) <= MAX_LABELS:
            raise WireError(f"malformed infer reply: outputs[{i}].scores must map 1 to {MAX_LABELS} labels")
        clean = {_short(k, MAX_LABEL_CHARS, "reply: a label"): _score(v, "a score") for k, v in scores.items()}
        label = _short(out.get("label"), MAX_LABEL_CHARS, "reply: label")
        return {"label": label, "score": _score(out.get("score"), "score"), "scores": clean, **extra}
    if set(out) - {"predictions", "truncated"} or not isinstance(out.get("predictions"), list) \
            or len(out["predictions"]) > MAX_PREDICTIONS:
        raise WireError(f"malformed infer reply: outputs[{i}] is not {{predictions: [≤ {MAX_PREDICTIONS}]}}")
    preds = []
    for p in out["predictions"]:
        if not isinstance(p, dict) or set(p) != {"token", "score"}:
            raise WireError(f"malformed infer reply: outputs[{i}] has a prediction that is not {{token, score}}")
        preds.append({"token": _short(p["token"], MAX_LABEL_CHARS, "reply: token", empty=True),
                      "score": _score(p["score"], "a prediction's score")})
    return {"predictions": preds, **extra}


def decode_reply(data: bytes, n: int, task: str | None = None) -> InferReply | str:
    """The ``n`` outputs of an ``out`` reply (of ``task``, when the asker named one), or the text
    of an ``err`` reply; WireError on anything else."""
    raw = _loads(data, "reply")
    if isinstance(raw, dict) and raw.get("t") == "err" and set(raw) == {"t", "error"}:
        if not isinstance(raw["error"], str):
            raise WireError("malformed infer reply: error is not a string")
        return raw["error"][:MAX_ERROR_CHARS]
    if not isinstance(raw, dict) or raw.get("t") != "out" or set(raw) != {"t", "task", "backend", "device", "outputs"}:
        raise WireError("malformed infer reply: expected {t: 'out', task, backend, device, outputs} or {t: 'err', error}")
    got = raw["task"]
    if got not in TASKS or (task is not None and got != task):
        raise WireError(f"malformed infer reply: task {got!r} where {task or 'one of ' + ', '.join(TASKS)} was asked")
    outputs = raw["outputs"]
    if not isinstance(outputs, list) or len(outputs) != n:
        raise WireError(f"malformed infer reply: expected {n} outputs")
    parsed = [_output(got, o, i) for i, o in enumerate(outputs)]
    if got == "embedding" and len({len(o["embedding"]) for o in parsed}) > 1:
        raise WireError("malformed infer reply: embeddings of different dimensions")
    return InferReply(got, _short(raw["backend"], MAX_NAME_CHARS, "reply: backend"),
                      _short(raw["device"], MAX_NAME_CHARS, "reply: device"), parsed)
