"""Query embedding between peers (``/ipfs-accelerate/embed/1.0.0``, p2p.embedding): the wire
format's bounds, the server's refusals, and an asker facing hostile servers.

The server tests use a real node and its real engine; the hostile tests run two real libp2p
nodes in this process, one of which answers embed requests with forged replies built from the
project's own wire module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
import trio

from p2p.config import NodeConfig
from p2p.embedding import EmbedServer, embed_here, embed_texts
from p2p.errors import NodeError
from p2p.node import Node
from p2p.protocols.embed import (
    EMBED_PROTOCOL,
    MAX_TEXTS,
    EmbedRequest,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_vectors,
)
from p2p.protocols.wire import WireError
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)


def test_the_wire_format_round_trips_and_refuses_what_is_malformed() -> None:
    req = EmbedRequest(DEFAULT_MODEL, "bafy", ["a", "b"])
    assert decode_request(encode_request(req)) == req
    mat = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(decode_reply(encode_vectors(mat), 2), mat)
    assert decode_reply(encode_error("nope"), 2) == "nope"
    bad_requests = [
        b"\xff\x00junk",
        cbor2.dumps([1, 2]),
        cbor2.dumps({"t": "embed", "model": DEFAULT_MODEL, "cid": None}),
        cbor2.dumps({"t": "embed", "model": "", "cid": None, "texts": ["a"]}),
        cbor2.dumps({"t": "embed", "model": "m" * 513, "cid": None, "texts": ["a"]}),
        cbor2.dumps({"t": "embed", "model": "m", "cid": 7, "texts": ["a"]}),
        cbor2.dumps({"t": "embed", "model": "m", "cid": None, "texts": []}),
        cbor2.dumps({"t": "embed", "model": "m", "cid": None, "texts": ["a"] * (MAX_TEXTS + 1)}),
        cbor2.dumps({"t": "embed", "model": "m", "cid": None, "texts": ["a", b"bytes"]}),
        cbor2.dumps({"t": "embed", "model": "m", "cid": None, "texts": [""]}),
        cbor2.dumps({"t": "embed", "model": "m", "cid": None, "texts": ["a"], "extra": 1}),
    ]
    for raw in bad_requests:
        with pytest.raises(WireError):
            decode_request(raw)
    bad_replies = [
        cbor2.dumps({"t": "vecs", "dim": 3, "data": mat.tobytes()[:-4]}),
        cbor2.dumps({"t": "vecs", "dim": 0, "data": b""}),
        cbor2.dumps({"t": "vecs", "dim": True, "data": mat.tobytes()}),
        cbor2.dumps({"t": "vecs", "dim": 3, "data": np.full((2, 3), np.nan, dtype="<f4").tobytes()}),
        cbor2.dumps({"t": "err", "error": 5}),
        cbor2.dumps({"t": "vecs", "dim": 3}),
        b"",
    ]
    for raw in bad_replies:
        with pytest.raises(WireError):
            decode_reply(raw, 2)


async def test_the_server_embeds_what_it_serves_and_refuses_the_rest(node: Any) -> None:
    await node.hash_models()  # as at start (in the background there): the content id to check against
    server = EmbedServer(node, slots_per_peer=1)
    texts = ["a cat on a mat", "a dog in the fog"]
    got = decode_reply(await server.handle("peer-a", encode_request(EmbedRequest(DEFAULT_MODEL, None, texts))), 2)
    assert isinstance(got, np.ndarray) and np.allclose(got, await embed_here(node, DEFAULT_MODEL, texts), atol=1e-6)

    refusals = [
        (EmbedRequest("no/such-model", None, ["x"]), "does not serve model 'no/such-model'"),
        (EmbedRequest(DEFAULT_MODEL, "bafy-other-files", ["x"]), "with content id bafy-other-files"),
        (EmbedRequest(DEFAULT_MODEL, None, ["x" * (node.config.scheduler.max_input_chars + 1)]), "the maximum is"),
    ]
    assert node.model_cids.get(DEFAULT_MODEL), "the node content-addresses its model at start"
    for req, words in refusals:
        reply = decode_reply(await server.handle("peer-a", encode_request(req)), len(req.texts))
        assert isinstance(reply, str) and words in reply, (req, reply)
    with pytest.raises(WireError):
        await server.handle("peer-a", b"\x00garbage")

    # over its slots, a peer is refused at once, not queued; so is anyone when every slot is taken
    # (a peer's slot held as a request in flight would hold it)
    server._per_peer["peer-b"] = trio.Semaphore(0)
    busy = decode_reply(await server.handle("peer-b", encode_request(EmbedRequest(DEFAULT_MODEL, None, ["two"]))), 1)
    assert isinstance(busy, str) and busy.startswith("busy: at most 1 embed requests at once per peer"), busy
    ok = decode_reply(await server.handle("peer-c", encode_request(EmbedRequest(DEFAULT_MODEL, None, ["x"]))), 1)
    assert isinstance(ok, np.ndarray)  # another peer is not refused for peer-b's load
    full, server._all = server._all, trio.Semaphore(0)
    busy = decode_reply(await server.handle("peer-d", encode_request(EmbedRequest(DEFAULT_MODEL, None, ["x"]))), 1)
    assert isinstance(busy, str) and busy.startswith("busy: at most 4 embed requests at once"), busy
    server._all = full
    del server._per_peer["peer-b"]
    assert server._per_peer == {}  # nothing in flight: no per-peer record kept


def _net_config(tmp: Path, cache: Path, name: str, serve: list[str] | None = None) -> NodeConfig:
    cfg = make_node_config(tmp / name, cache, name=name, network=True)
    raw = cfg.model_dump()
    raw["network"]["heartbeat_s"] = 0.2
    if serve is not None:
        raw["inference"]["serve"] = serve
    return NodeConfig.model_validate(raw)


async def _wait_for(pred: Any, timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_an_asker_refuses_forged_vectors_and_says_which_peer_sent_them(tmp_path: Path, shared_cache_dir: Path) -> None:
    async with Node.open(_net_config(tmp_path, shared_cache_dir, "asker", serve=[])) as asker, \
            Node.open(_net_config(tmp_path, shared_cache_dir, "server")) as server:
        await asker.connect(server.listen_addrs()[0])
        await _wait_for(lambda: server.peer_id in asker.all_models().get(DEFAULT_MODEL, []))
        texts = ["a cat", "a kitten"]
        honest, by = await embed_texts(asker, DEFAULT_MODEL, None, texts)
        assert by == server.peer_id and np.allclose(honest, await embed_here(server, DEFAULT_MODEL, texts), atol=1e-6)

        forgeries = {
            "scaled": lambda n: encode_vectors(np.full((n, 384), 0.5, dtype=np.float32)),
            "short": lambda n: encode_vectors(np.ones((n - 1, 384), dtype=np.float32) / np.sqrt(384)),
            "junk": lambda n: b"\xa1\x61t\x61x",
            "refusal": lambda n: encode_error("I will not"),
        }
        for what, forge in forgeries.items():
            async def handler(peer: str, payload: bytes, forge: Any = forge) -> bytes:
                return forge(len(decode_request(payload).texts))

            server.net.set_request_handler(EMBED_PROTOCOL, handler)
            with pytest.raises(NodeError) as exc:
                await embed_texts(asker, DEFAULT_MODEL, None, texts)
            assert server.peer_id in str(exc.value), (what, str(exc.value))
            assert ("not unit length" if what == "scaled" else "refused: I will not" if what == "refusal"
                    else "malformed embed reply") in str(exc.value), (what, str(exc.value))
        # unit vectors of another dimension than the collection's: refused when the asker knows it
        async def other_dim(peer: str, payload: bytes) -> bytes:
            n = len(decode_request(payload).texts)
            return encode_vectors(np.ones((n, 768), dtype=np.float32) / np.sqrt(768))

        server.net.set_request_handler(EMBED_PROTOCOL, other_dim)
        with pytest.raises(NodeError, match="768 dimensions, the collection's 384"):
            await embed_texts(asker, DEFAULT_MODEL, None, texts, dim=384)
        # the honest handler back: the asker recovers at once
        server.net.set_request_handler(EMBED_PROTOCOL, server.embed_server.handle)
        again, _ = await embed_texts(asker, DEFAULT_MODEL, None, texts)
        assert np.allclose(again, honest, atol=1e-6)
