"""Embedding a few texts (a search query, the texts to compare) here or on a peer.

Why: a query must be embedded by the model, with the same files, that embedded the collection,
or its cosine with the collection means nothing. The node asked may not serve that model (an
agent's laptop that submitted the work to the network's GPUs), so it asks a connected peer that
does, over ``/ipfs-accelerate/embed/1.0.0`` (``p2p.protocols.embed``).

Trust: a peer's vectors are checked for shape, finiteness and unit length (the engine
L2-normalises every embedding), not for truth; a hostile peer can skew one search's ranking,
never the stored results. Answers say who embedded (``embedded_by``).

The server side answers only for models it serves with the asked content id, at most
``SLOTS_PER_PEER`` requests at once per peer (more get a "busy" refusal at once, no queue) and
``SLOTS`` over all peers (both refuse at once: no queue of waiting payloads for peers to
fill); the texts go through the same batching executor as workflow tasks. Askers skip peers whose
consensus settings differ from theirs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import structlog
import trio

from p2p.errors import NodeError
from p2p.protocols.embed import (
    EMBED_PROTOCOL,
    EmbedRequest,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_vectors,
)

log = structlog.get_logger("p2p.embedding")

EMBEDDING = "embedding"
SLOTS_PER_PEER = 2
SLOTS = 4
REQUEST_TIMEOUT_S = 60.0  # the peer's executor may be busy with a workflow's batches
PEERS_TRIED = 3
UNIT_TOLERANCE = 1e-2


def serves(node: Any, model: str, model_cid: str | None) -> bool:
    """True when this node serves ``model`` with the files ``model_cid`` names (or either side
    has no content id yet)."""
    if model not in node.local_models():
        return False
    have = getattr(node, "model_cids", {}).get(model)
    return model_cid is None or have is None or have == model_cid


async def embed_here(node: Any, model: str, texts: list[str]) -> np.ndarray:
    """``texts`` embedded by this node's engine (batched with its other work): N x D float32."""
    from inference.errors import InferenceError

    try:
        res = await node.engine.infer(model, list(texts), EMBEDDING)
    except InferenceError as exc:
        raise NodeError(str(exc)) from None
    vecs = []
    for out in res.outputs:
        emb = out.get("embedding") if isinstance(out, dict) else getattr(out, "embedding", None)
        if emb is None:
            raise NodeError(f"model {model!r} gave no embedding")
        vecs.append(np.asarray(emb, dtype=np.float32).reshape(-1))
    return np.stack(vecs)


def _candidates(node: Any, model: str, model_cid: str | None) -> list[str]:
    """Connected live peers serving ``model`` with ``model_cid``'s files, nearest (RTT) first."""
    if model_cid is not None:
        peers = node.model_cids_known(model).get(model_cid, [])
    else:
        peers = [p for p in node.all_models().get(model, []) if p != node.peer_id]
    net = node.net

    def usable(p: str) -> bool:
        rec = node.peers.get(p)
        return (p != node.peer_id and net is not None and net.is_connected(p)
                and not (rec is not None and rec.incompatible))

    live = [p for p in dict.fromkeys(peers) if usable(p)]

    def rtt(p: str) -> float:
        rec = node.peers.get(p)
        return rec.rtt_ms if rec is not None and rec.rtt_ms is not None else float("inf")

    return sorted(live, key=rtt)


def check_embeddable(node: Any, model: str, model_cid: str | None) -> None:
    """NodeError, before any work, when neither this node nor a connected peer serves the model."""
    if serves(node, model, model_cid):
        return
    files = f" with content id {model_cid}" if model_cid else ""
    if node.net is None:
        have = getattr(node, "model_cids", {}).get(model)
        other = f" with other files (content id {have})" if model in node.local_models() and have else ""
        raise NodeError(f"this node does not serve model {model!r}{other}, runs without networking, so no peer can "
                        f"embed for it; it serves: {', '.join(node.local_models()) or 'none'}")
    if not _candidates(node, model, model_cid):
        known = [p for p in node.all_models().get(model, []) if p != node.peer_id]
        raise NodeError(f"this node does not serve model {model!r}{files}, and no connected peer does"
                        + (f" (peers that advertised it: {', '.join(known[:5])})" if known else "")
                        + "; pull_model fetches it from a peer that serves it")


async def embed_on_peer(node: Any, model: str, model_cid: str | None, texts: list[str], dim: int | None = None,
                        timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[np.ndarray, str]:
    """``texts`` embedded by the first of up to ``PEERS_TRIED`` connected peers serving the model
    that answers well (``dim`` values a vector, when given): (N x D float32, its peer id).
    NodeError naming each peer's failure when none does."""
    from p2p.net.errors import NetError
    from p2p.protocols.wire import WireError

    check_embeddable(node, model, model_cid)
    peers = _candidates(node, model, model_cid)
    files = f" with content id {model_cid}" if model_cid else ""
    payload = encode_request(EmbedRequest(model, model_cid, list(texts)))
    failures: list[str] = []
    for peer in peers[:PEERS_TRIED]:
        try:
            got = decode_reply(await node.net.request(peer, EMBED_PROTOCOL, payload, timeout=timeout_s), len(texts))
        except (NetError, WireError) as exc:
            failures.append(f"{peer}: {exc}")
            continue
        if isinstance(got, str):
            failures.append(f"{peer} refused: {got}")
            continue
        if dim is not None and got.shape[1] != dim:
            failures.append(f"{peer}: its vectors have {got.shape[1]} dimensions, the collection's {dim}")
            continue
        norms = np.linalg.norm(got.astype(np.float64), axis=1)
        if np.any(np.abs(norms - 1.0) > UNIT_TOLERANCE):
            failures.append(f"{peer}: its vectors are not unit length (norms {', '.join(f'{n:.3g}' for n in norms[:4])})")
            continue
        return got, peer
    log.info("no peer embedded the texts", model=model, failures=failures)
    raise NodeError(f"this node does not serve model {model!r}{files}, and no peer that does could embed the text: "
                    + "; ".join(failures))


async def embed_texts(node: Any, model: str, model_cid: str | None, texts: list[str],
                      dim: int | None = None) -> tuple[np.ndarray, str]:
    """``texts`` embedded by ``model`` (with ``model_cid``'s files): here when this node serves
    it, else on a peer (whose vectors must have ``dim`` values, when given). Returns (N x D
    float32, the peer id that embedded them)."""
    if serves(node, model, model_cid):
        return await embed_here(node, model, texts), node.peer_id
    return await embed_on_peer(node, model, model_cid, texts, dim)


class EmbedServer:
    """Answers peers' embed requests (see the module docstring for the limits)."""

    def __init__(self, node: Any, *, slots_per_peer: int = SLOTS_PER_PEER, slots: int = SLOTS) -> None:
        self._node = node
        self._slots_per_peer = slots_per_peer
        self._per_peer: dict[str, trio.Semaphore] = {}
        self._all_slots = slots
        self._all = trio.Semaphore(slots)
        self.requests = 0
        self.refused = 0

    async def handle(self, peer: str, payload: bytes) -> bytes:
        req = decode_request(payload)  # a WireError resets the stream (the host logs it)
        self.requests += 1
        node = self._node
        cap = node.config.scheduler.max_input_chars
        too_long = next((i for i, t in enumerate(req.texts) if len(t) > cap), None)
        if too_long is not None:
            return self._refuse(f"text {too_long} is {len(req.texts[too_long])} characters; the maximum is {cap}")
        if not serves(node, req.model, req.cid):
            return self._refuse(f"this peer does not serve model {req.model!r}"
                                + (f" with content id {req.cid}" if req.cid else ""))
        slot = self._per_peer.setdefault(peer, trio.Semaphore(self._slots_per_peer))
        try:
            slot.acquire_nowait()
        except trio.WouldBlock:
            return self._refuse(f"busy: at most {self._slots_per_peer} embed requests at once per peer")
        try:
            try:
                self._all.acquire_nowait()
            except trio.WouldBlock:
                return self._refuse(f"busy: at most {self._all_slots} embed requests at once")
            try:
                return encode_vectors(await embed_here(node, req.model, req.texts))
            except NodeError as exc:
                return self._refuse(str(exc))
            finally:
                self._all.release()
        finally:
            slot.release()
            if slot.value == self._slots_per_peer and not slot.statistics().tasks_waiting:
                self._per_peer.pop(peer, None)  # nothing of this peer in flight: no record kept

    def _refuse(self, why: str) -> bytes:
        self.refused += 1
        return encode_error(why)
