"""Inference between peers (``/ipfs-accelerate/infer/1.0.0``, p2p.remote_infer): the wire
format's bounds, the server's refusals, and an asker facing hostile servers.

The server tests use a real node and its real engine; the hostile tests run two real libp2p
nodes in this process, one of which answers infer requests with forged replies built from the
project's own wire module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
import trio

from p2p.config import NodeConfig
from p2p.errors import NodeError
from p2p.node import Node
from p2p.protocols.infer import (
    INFER_PROTOCOL,
    MAX_TEXTS,
    InferReply,
    InferRequest,
    decode_reply,
    decode_request,
    encode_error,
    encode_reply,
    encode_request,
)
from p2p.protocols.wire import WireError
from p2p.remote_infer import InferServer, embed_here, embed_texts
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)

UNIT = (np.ones(384, dtype=np.float32) / np.sqrt(384)).tolist()


def _reply(task: str, outputs: list[Any]) -> bytes:
    return cbor2.dumps({"t": "out", "task": task, "backend": "onnx", "device": "cpu", "outputs": outputs})


def test_the_wire_format_round_trips_and_refuses_what_is_malformed() -> None:
    req = InferRequest(DEFAULT_MODEL, "bafy", "embedding", ["a", "b"])
    assert decode_request(encode_request(req)) == req
    emb = InferReply("embedding", "onnx", "cpu", [{"embedding": UNIT}, {"embedding": UNIT, "truncated": True}])
    got = decode_reply(encode_reply(emb), 2, "embedding")
    assert isinstance(got, InferReply) and np.allclose(got.outputs[0]["embedding"], UNIT) and got.outputs[1]["truncated"]
    cls = InferReply("text-classification", "torch", "cpu", [{"label": "POS", "score": 0.9, "scores": {"POS": 0.9, "NEG": 0.1}}])
    assert decode_reply(encode_reply(cls), 1) == cls
    fm = InferReply("fill-mask", "onnx", "cpu", [{"predictions": [{"token": "paris", "score": 0.5}, {"token": "", "score": 0.1}]}])
    assert decode_reply(encode_reply(fm), 1, "fill-mask") == fm
    assert decode_reply(encode_error("nope"), 2) == "nope"

    base = {"t": "infer", "model": "m", "cid": None, "task": None}
    for raw in [b"\xff\x00junk", cbor2.dumps([1, 2]), cbor2.dumps({k: v for k, v in base.items() if k != "task"} | {"texts": ["a"]}),
                cbor2.dumps({**base, "model": "", "texts": ["a"]}), cbor2.dumps({**base, "model": "m" * 513, "texts": ["a"]}),
                cbor2.dumps({**base, "cid": 7, "texts": ["a"]}), cbor2.dumps({**base, "task": "translate", "texts": ["a"]}),
                cbor2.dumps({**base, "texts": []}), cbor2.dumps({**base, "texts": ["a"] * (MAX_TEXTS + 1)}),
                cbor2.dumps({**base, "texts": ["a", b"bytes"]}), cbor2.dumps({**base, "texts": [""]}),
                cbor2.dumps({**base, "texts": ["a"], "extra": 1})]:
        with pytest.raises(WireError):
            decode_request(raw)

    vec = np.asarray(UNIT, dtype="<f4").tobytes()
    bad_replies = [
        (_reply("embedding", [{"embedding": vec[:-2]}]), "embedding"),
        (_reply("embedding", [{"embedding": b""}]), "embedding"),
        (_reply("embedding", [{"embedding": np.full(3, np.nan, dtype="<f4").tobytes()}]), "embedding"),
        (_reply("embedding", [{"embedding": UNIT}]), "embedding"),  # floats, not bytes
        (_reply("embedding", [{"embedding": vec, "extra": 1}]), "embedding"),
        (_reply("embedding", [{"embedding": vec}, {"embedding": vec}]), "embedding"),  # 2 outputs for 1 text
        (_reply("fill-mask", [{"predictions": []}]), "embedding"),  # another task than asked
        (_reply("translate", [{}]), None),
        (_reply("text-classification", [{"label": "a", "score": float("inf"), "scores": {"a": 1.0}}]), None),
        (_reply("text-classification", [{"label": "a", "score": 1.0, "scores": {}}]), None),
        (_reply("text-classification", [{"label": "a", "score": True, "scores": {"a": 1.0}}]), None),
        (_reply("text-classification", [{"label": "a" * 257, "score": 1.0, "scores": {"a": 1.0}}]), None),
        (_reply("fill-mask", [{"predictions": [{"token": "x", "score": 0.1}] * 101}]), None),
        (_reply("fill-mask", [{"predictions": [{"token": "x"}]}]), None),
        (_reply("fill-mask", [{"predictions": [], "truncated": "yes"}]), None),
        (cbor2.dumps({"t": "err", "error": 5}), None),
        (cbor2.dumps({"t": "out", "task": "embedding", "backend": "x" * 129, "device": "cpu", "outputs": [{"embedding": vec}]}), None),
        (b"", None),
    ]
    for raw, task in bad_replies:
        with pytest.raises(WireError):
            decode_reply(raw, 1, task)


async def test_the_server_runs_what_it_serves_and_refuses_the_rest(node: Any) -> None:
    await node.hash_models()  # as at start (in the background there): the content id to check against
    server = InferServer(node, slots_per_peer=1)
    texts = ["a cat on a mat", "a dog in the fog"]
    got = decode_reply(await server.handle("peer-a", encode_request(InferRequest(DEFAULT_MODEL, None, "embedding", texts))), 2)
    assert isinstance(got, InferReply) and got.task == "embedding"
    assert np.allclose([o["embedding"] for o in got.outputs], await embed_here(node, DEFAULT_MODEL, texts), atol=1e-6)

    assert node.model_cids.get(DEFAULT_MODEL), "the node content-addresses its model at start"
    refusals = [
        (InferRequest("no/such-model", None, None, ["x"]), "does not serve model 'no/such-model'"),
        (InferRequest(DEFAULT_MODEL, "bafy-other-files", None, ["x"]), "with content id bafy-other-files"),
        (InferRequest(DEFAULT_MODEL, None, None, ["x" * (node.config.scheduler.max_input_chars + 1)]), "the maximum is"),
        (InferRequest(DEFAULT_MODEL, None, "fill-mask", ["no mask here"]), "fill-mask"),  # the engine's own refusal
    ]
    for req, words in refusals:
        reply = decode_reply(await server.handle("peer-a", encode_request(req)), len(req.texts))
        assert isinstance(reply, str) and words in reply, (req, reply)
    with pytest.raises(WireError):
        await server.handle("peer-a", b"\x00garbage")

    # over its slots, a peer is refused at once, not queued; so is anyone when every slot is taken
    # (a peer's slot held as a request in flight would hold it)
    server._per_peer["peer-b"] = trio.Semaphore(0)
    busy = decode_reply(await server.handle("peer-b", encode_request(InferRequest(DEFAULT_MODEL, None, None, ["two"]))), 1)
    assert isinstance(busy, str) and busy.startswith("busy: at most 1 infer requests at once per peer"), busy
    ok = decode_reply(await server.handle("peer-c", encode_request(InferRequest(DEFAULT_MODEL, None, None, ["x"]))), 1)
    assert isinstance(ok, InferReply)  # another peer is not refused for peer-b's load
    full, server._all = server._all, trio.Semaphore(0)
    busy = decode_reply(await server.handle("peer-d", encode_request(InferRequest(DEFAULT_MODEL, None, None, ["x"]))), 1)
    assert isinstance(busy, str) and busy.startswith("busy: at most 4 infer requests at once"), busy
    server._all = full
    del server._per_peer["peer-b"]
    assert server._per_peer == {}  # nothing in flight: no per-peer record kept


def _net_config(tmp: Path, cache: Path, name: str, serve: list[str] | None = None) -> NodeConfig:
    """A member of one private network (peers serve inference to members only)."""
    from p2p.net.psk import generate_swarm_key

    key = tmp / "swarm.key"
    if not key.exists():
        generate_swarm_key(key)
    cfg = make_node_config(tmp / name, cache, name=name, network=True)
    raw = cfg.model_dump()
    raw["network"]["heartbeat_s"] = 0.2
    raw["network"]["psk_file"] = str(key)
    if serve is not None:
        raw["inference"]["serve"] = serve
    return NodeConfig.model_validate(raw)


async def _wait_for(pred: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_an_asker_refuses_forged_answers_and_says_which_peer_sent_them(tmp_path: Path, shared_cache_dir: Path) -> None:
    async with Node.open(_net_config(tmp_path, shared_cache_dir, "asker", serve=[])) as asker, \
            Node.open(_net_config(tmp_path, shared_cache_dir, "server")) as server:
        await asker.connect(server.listen_addrs()[0])
        await _wait_for(lambda: server.peer_id in asker.all_models().get(DEFAULT_MODEL, []))
        texts = ["a cat", "a kitten"]
        honest, by = await embed_texts(asker, DEFAULT_MODEL, None, texts)
        assert by == server.peer_id and np.allclose(honest, await embed_here(server, DEFAULT_MODEL, texts), atol=1e-6)
        direct = await asker.run_inference(DEFAULT_MODEL, texts)
        assert direct["peer"] == server.peer_id and np.allclose([o["embedding"] for o in direct["outputs"]], honest, atol=1e-6)

        def vectors(n: int, dim: int, scale: float) -> bytes:
            return encode_reply(InferReply("embedding", "onnx", "cpu",
                                           [{"embedding": (np.ones(dim) * scale / np.sqrt(dim)).tolist()} for _ in range(n)]))

        forgeries = {
            "scaled": (lambda n: vectors(n, 384, 0.5), "not unit length"),
            "short": (lambda n: vectors(n - 1, 384, 1.0), "malformed infer reply"),
            "junk": (lambda n: b"\xa1\x61t\x61x", "malformed infer reply"),
            "other task": (lambda n: encode_reply(InferReply("fill-mask", "onnx", "cpu", [{"predictions": []}] * n)),
                           "malformed infer reply"),
            "refusal": (lambda n: encode_error("I will not"), "refused: I will not"),
        }
        for what, (forge, words) in forgeries.items():
            async def handler(peer: str, payload: bytes, forge: Any = forge) -> bytes:
                return forge(len(decode_request(payload).texts))

            server.net.set_request_handler(INFER_PROTOCOL, handler)
            for call in (lambda: embed_texts(asker, DEFAULT_MODEL, None, texts),
                         lambda: asker.run_inference(DEFAULT_MODEL, texts, "embedding")):
                with pytest.raises(NodeError) as exc:
                    await call()
                assert server.peer_id in str(exc.value) and words in str(exc.value), (what, str(exc.value))

        # unit vectors of another dimension than the collection's: refused when the asker knows it
        server.net.set_request_handler(INFER_PROTOCOL, lambda peer, payload: _async(vectors(len(decode_request(payload).texts), 768, 1.0)))
        with pytest.raises(NodeError, match="768 dimensions, the collection's 384"):
            await embed_texts(asker, DEFAULT_MODEL, None, texts, dim=384)
        # the honest handler back: the asker recovers at once
        server.net.set_request_handler(INFER_PROTOCOL, server.infer_server.handle)
        again, _ = await embed_texts(asker, DEFAULT_MODEL, None, texts)
        assert np.allclose(again, honest, atol=1e-6)


async def _async(value: bytes) -> bytes:
    return value
