"""Inference here or on a peer: ``run_inference`` for a model only a peer serves, and a search
query (or ``compare_texts``' texts) embedded by the model that embedded the collection.

Why: an agent's node may not serve what it is asked for (a laptop that hands the work to the
network's bigger machines), and a query's vector is comparable with a collection's only when the
same model and files made both. The node then asks a connected peer that serves the model (with
the asked content id, when there is one), nearest by RTT first, up to ``PEERS_TRIED``, over
``/ipfs-accelerate/infer/1.0.0`` (``p2p.protocols.infer``).

Trust: a peer's outputs are checked for shape, bounds and finiteness (the wire decoder), and
embeddings for unit length (the engine L2-normalises every one) and, for a search, the
collection's dimension; not for truth. A hostile peer can give one wrong answer, never change a
stored result; answers name who computed them (``peer``, ``embedded_by``). Askers skip peers
whose consensus settings differ from theirs.

The server answers only for models it serves (with the asked content id), at most
``SLOTS_PER_PEER`` requests at once per peer and ``SLOTS`` over all peers; beyond either it
refuses at once ("busy"), so peers cannot fill a queue of waiting payloads. The texts go through
the same batching executor as workflow tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from p2p.errors import NodeError
from p2p.protocols.infer import (
    INFER_PROTOCOL,
    InferReply,
    InferRequest,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
)

if TYPE_CHECKING:
    import numpy as np

log = structlog.get_logger("p2p.remote_infer")

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


async def infer_here(node: Any, model: str, texts: list[str], task: str | None) -> InferReply:
    """``texts`` run by this node's engine (batched with its other work)."""
    from inference.errors import InferenceError

    try:
        res = await node.engine.infer(model, list(texts), task)
    except InferenceError as exc:
        raise NodeError(str(exc)) from None
    return InferReply(res.task, res.backend, res.device,
                      [o.to_json() if hasattr(o, "to_json") else o for o in res.outputs])


async def embed_here(node: Any, model: str, texts: list[str]) -> np.ndarray:
    """``texts`` embedded by this node's engine: N x D float32."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
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
    """Connected, compatible peers serving ``model`` (with ``model_cid``'s files), nearest first."""
    if model_cid is not None:
        peers = node.model_cids_known(model).get(model_cid, [])
    else:
        peers = [p for p in node.all_models().get(model, []) if p != node.peer_id]
    def rtt(p: str) -> float:
        rec = node.peers.get(p)
        return rec.rtt_ms if rec is not None and rec.rtt_ms is not None else float("inf")

    return sorted((p for p in dict.fromkeys(peers) if _usable(node, p)), key=rtt)


def _usable(node: Any, peer: str) -> bool:
    """A peer we may ask: connected, not this node, and sharing our consensus settings."""
    rec = node.peers.get(peer)
    net = node.net
    return (peer != node.peer_id and net is not None and net.is_connected(peer)
            and not (rec is not None and rec.incompatible))


def served_cid(node: Any, model: str) -> str | None:
    """The content id of ``model`` that most usable peers serve now (ties: the smallest), or
    None when none of them content-addressed it: what a call without a pinned id asks for."""
    counts = {cid: sum(1 for p in set(peers) if _usable(node, p)) for cid, peers in node.model_cids_known(model).items()}
    best = [c for c in counts if counts[c]]
    return min(best, key=lambda c: (-counts[c], c)) if best else None


def check_served_somewhere(node: Any, model: str, model_cid: str | None) -> None:
    """NodeError, before any work, when neither this node nor a connected peer serves the model."""
    if serves(node, model, model_cid):
        return
    files = f" with content id {model_cid}" if model_cid else ""
    if node.net is None:
        have = getattr(node, "model_cids", {}).get(model)
        other = f" with other files (content id {have})" if model in node.local_models() and have else ""
        raise NodeError(f"this node does not serve model {model!r}{other}, runs without networking, so no peer can "
                        f"run it for it; it serves: {', '.join(node.local_models()) or 'none'}")
    if not _candidates(node, model, model_cid):
        known = [p for p in node.all_models().get(model, []) if p != node.peer_id]
        raise NodeError(f"this node does not serve model {model!r}{files}, and no connected peer does"
                        + (f" (peers that advertised it: {', '.join(known[:5])})" if known else "")
                        + f"; this node serves: {', '.join(node.local_models()) or 'none'}; "
                        "pull_model fetches a model from a peer that serves it")


Check = Callable[[InferReply], str | None]  # why a well-formed reply is still unacceptable, or None


async def infer_on_peer(node: Any, model: str, model_cid: str | None, texts: list[str], task: str | None,
                        check: Check | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[InferReply, str]:
    """``texts`` run by the first of up to ``PEERS_TRIED`` connected peers serving the model that
    answers well (and passes ``check``): (its reply, its peer id). NodeError naming each peer's
    failure when none does."""
    from p2p.net.errors import NetError
    from p2p.protocols.wire import WireError

    check_served_somewhere(node, model, model_cid)
    payload = encode_request(InferRequest(model, model_cid, task, list(texts)))
    failures: list[str] = []
    for peer in _candidates(node, model, model_cid)[:PEERS_TRIED]:
        try:
            got = decode_reply(await node.net.request(peer, INFER_PROTOCOL, payload, timeout=timeout_s), len(texts), task)
        except (NetError, WireError) as exc:
            failures.append(f"{peer}: {exc}")
            continue
        if isinstance(got, str):
            failures.append(f"{peer} refused: {got}")
            continue
        why = check(got) if check is not None else None
        if why is not None:
            failures.append(f"{peer}: {why}")
            continue
        return got, peer
    log.info("no peer ran the texts", model=model, failures=failures)
    files = f" with content id {model_cid}" if model_cid else ""
    raise NodeError(f"this node does not serve model {model!r}{files}, and no peer that does could run it: "
                    + "; ".join(failures))


def _unit_vectors(dim: int | None) -> Check:
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    def check(reply: InferReply) -> str | None:
        mat = np.asarray([o["embedding"] for o in reply.outputs], dtype=np.float64)
        if dim is not None and mat.shape[1] != dim:
            return f"its vectors have {mat.shape[1]} dimensions, the collection's {dim}"
        norms = np.linalg.norm(mat, axis=1)
        if np.any(np.abs(norms - 1.0) > UNIT_TOLERANCE):
            return f"its vectors are not unit length (norms {', '.join(f'{n:.3g}' for n in norms[:4])})"
        return None

    return check


def check_outputs(reply: InferReply) -> str | None:
    """What ``run_inference`` accepts from a peer beyond the wire's shape: unit-length embeddings."""
    return _unit_vectors(None)(reply) if reply.task == EMBEDDING else None


async def embed_texts(node: Any, model: str, model_cid: str | None, texts: list[str],
                      dim: int | None = None) -> tuple[np.ndarray, str]:
    """``texts`` embedded by ``model`` (with ``model_cid``'s files): here when this node serves
    it, else on a peer (whose vectors must have ``dim`` values, when given). Returns (N x D
    float32, the peer id that embedded them)."""
    import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
    if serves(node, model, model_cid):
        return await embed_here(node, model, texts), node.peer_id
    reply, peer = await infer_on_peer(node, model, model_cid, texts, EMBEDDING, _unit_vectors(dim))
    return np.asarray([o["embedding"] for o in reply.outputs], dtype=np.float32), peer


class InferServer:
    """Answers peers' infer requests (see the module docstring for the limits)."""

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
            return self._refuse(f"busy: at most {self._slots_per_peer} infer requests at once per peer")
        try:
            try:
                self._all.acquire_nowait()
            except trio.WouldBlock:
                return self._refuse(f"busy: at most {self._all_slots} infer requests at once")
            try:
                return encode_reply(await infer_here(node, req.model, req.texts, req.task))
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
