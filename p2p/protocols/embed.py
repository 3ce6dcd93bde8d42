"""Wire format of query embedding between peers (``/ipfs-accelerate/embed/1.0.0``).

Why: ``search_workflow`` must embed its query with the very model (same files) that embedded
the collection. A node that does not serve that model asks a peer that does. One request frame
per stream (``NetHost.request``), one reply frame:

    request = CBOR {"t": "embed", "model": <str>, "cid": <str | null>, "texts": [<str>, ...]}
    reply   = CBOR {"t": "vecs", "dim": D, "data": <N*D little-endian float32 bytes>}
            | CBOR {"t": "err", "error": <str>}

``cid`` names the model's files (the folder's content id); the server refuses a model it does
not serve with exactly those files, so the vectors are comparable with the collection's. An
``err`` reply is a refusal the asker can repeat to its user (unknown model, a text too long); a
malformed request gets no reply (the stream is reset). Everything is bounded: texts per request,
characters per text, model name and cid length, the reply's dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2
import numpy as np

from p2p.protocols.wire import WireError

EMBED_PROTOCOL = "/ipfs-accelerate/embed/1.0.0"
MAX_TEXTS = 64  # compare_texts' own cap; a query is one text
MAX_TEXT_CHARS = 100_000  # the wire bound; the server applies its own scheduler.max_input_chars
MAX_MODEL_CHARS = 512
MAX_CID_CHARS = 256
MAX_DIM = 16_384
MAX_ERROR_CHARS = 1_000


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    cid: str | None
    texts: list[str]


def _loads(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise WireError(f"malformed embed {what}: not CBOR ({type(exc).__name__})") from None


def encode_request(req: EmbedRequest) -> bytes:
    return cbor2.dumps({"t": "embed", "model": req.model, "cid": req.cid, "texts": list(req.texts)})


def decode_request(data: bytes) -> EmbedRequest:
    raw = _loads(data, "request")
    if not isinstance(raw, dict) or raw.get("t") != "embed" or set(raw) != {"t", "model", "cid", "texts"}:
        raise WireError("malformed embed request: expected {t: 'embed', model, cid, texts}")
    model, cid, texts = raw["model"], raw["cid"], raw["texts"]
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_MODEL_CHARS:
        raise WireError(f"malformed embed request: model must be 1 to {MAX_MODEL_CHARS} characters")
    if cid is not None and (not isinstance(cid, str) or not 1 <= len(cid) <= MAX_CID_CHARS):
        raise WireError(f"malformed embed request: cid must be null or 1 to {MAX_CID_CHARS} characters")
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_TEXTS:
        raise WireError(f"malformed embed request: texts must be a list of 1 to {MAX_TEXTS} strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not 1 <= len(t) <= MAX_TEXT_CHARS:
            raise WireError(f"malformed embed request: texts[{i}] is not a string of 1 to {MAX_TEXT_CHARS} characters")
    return EmbedRequest(model, cid, texts)


def encode_vectors(mat: np.ndarray) -> bytes:
    mat = np.ascontiguousarray(mat, dtype="<f4")
    return cbor2.dumps({"t": "vecs", "dim": int(mat.shape[1]), "data": mat.tobytes()})


def encode_error(message: str) -> bytes:
    return cbor2.dumps({"t": "err", "error": message[:MAX_ERROR_CHARS]})


def decode_reply(data: bytes, n: int) -> np.ndarray | str:
    """The ``n`` x D float32 matrix of a ``vecs`` reply, or the text of an ``err`` reply;
    WireError on anything else (including vectors that are not finite)."""
    raw = _loads(data, "reply")
    if isinstance(raw, dict) and raw.get("t") == "err" and set(raw) == {"t", "error"}:
        if not isinstance(raw["error"], str):
            raise WireError("malformed embed reply: error is not a string")
        return raw["error"][:MAX_ERROR_CHARS]
    if not isinstance(raw, dict) or raw.get("t") != "vecs" or set(raw) != {"t", "dim", "data"}:
        raise WireError("malformed embed reply: expected {t: 'vecs', dim, data} or {t: 'err', error}")
    dim, buf = raw["dim"], raw["data"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise WireError(f"malformed embed reply: dim must be 1 to {MAX_DIM}")
    if not isinstance(buf, bytes) or len(buf) != n * dim * 4:
        raise WireError(f"malformed embed reply: expected {n} x {dim} float32 values")
    mat = np.frombuffer(buf, dtype="<f4").reshape(n, dim).astype(np.float32)
    if not np.isfinite(mat).all():
        raise WireError("malformed embed reply: a value is not finite")
    return mat
