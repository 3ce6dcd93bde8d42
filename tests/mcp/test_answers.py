"""Tool answers sized for an agent's context (issue 13, items 1 and 3): compact embeddings with a
ref that gives the whole vector, a short text summary instead of a second copy of the JSON,
results as resources (JSON pages and .npy), and completion of resource-template arguments.

Every answer goes through the SDK's in-memory Client (which checks structuredContent against
the tool's outputSchema) on a real node running the real default model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcp import Client
from mcp.types import ResourceTemplateReference

from mcp_server.answers import HEAD, MAX_TEXT, TOP, shape_output
from mcp_server.resources import NPY_MIME, RESULTS_TEMPLATE, RecentOutputs
from mcp_server.server import build_server
from tests.answer_sizes import RUN_INFERENCE_BUDGET, assert_summary, assert_within_budget, content_chars, text_of
from tests.conftest import DEFAULT_MODEL

pytestmark = pytest.mark.timeout(600)

SENTENCE = "A cat sat quietly on the warm mat by the window."
_size, _text, _not_a_copy = content_chars, text_of, assert_summary


async def _ok(client: Client, name: str, /, **args: Any) -> Any:
    res = await client.call_tool(name, args)
    assert not res.is_error, (name, res.content)
    return res


async def _err(client: Client, name: str, /, **args: Any) -> str:
    res = await client.call_tool(name, args)
    assert res.is_error, (name, res.structured_content)
    return _text(res)


async def test_every_default_answer_is_small_and_summarised(node: Any, tmp_path: Path) -> None:
    """Each tool's default answer: a short readable text, structured content that matches the
    schema, and a size within its budget (tests/answer_sizes.py; the sizes the note reports).
    run_inference of one sentence stays under 1,500. pull_model and connect_peer need a peer:
    tests/network/test_pull.py sizes them."""
    sizes: dict[str, int] = {}
    async with Client(build_server(node)) as client:
        res = await _ok(client, "run_inference", model=DEFAULT_MODEL, inputs=[SENTENCE])
        sizes["run_inference"] = _size(res)
        assert sizes["run_inference"] <= RUN_INFERENCE_BUDGET, (sizes, res.content)
        out = res.structured_content["outputs"][0]
        assert out["dim"] == 384 and len(out["head"]) == HEAD and abs(out["norm"] - 1.0) < 1e-3
        assert "embedding" not in out and out["ref"].startswith("inference://")
        _not_a_copy(res)

        sub = await _ok(client, "submit_workflow", name="sizes",
                        tasks=[{"model": DEFAULT_MODEL, "input": f"Sentence {i} about a cat."} for i in range(20)])
        sizes["submit_workflow"] = assert_within_budget("submit_workflow", sub)
        wid = sub.structured_content["workflow_id"]
        for name, args in [("wait_for_workflow", {"workflow_id": wid, "timeout_s": 300}),
                           ("get_workflow_status", {"workflow_id": wid}),
                           ("get_workflow_status", {"workflow_id": wid, "include_results": True}),
                           ("get_workflow_status", {"workflow_id": wid, "limit": 0}),
                           ("list_workflows", {}), ("list_models", {}), ("list_peers", {}), ("get_node_info", {}),
                           ("set_workflow_priority", {"workflow_id": wid, "priority": 3}),
                           ("search_workflow", {"workflow_id": wid, "query": "a cat", "k": 5}),
                           ("compare_texts", {"texts": ["a cat", "a dog", "an engine"]}),
                           ("export_workflow_results", {"workflow_id": wid, "path": str(tmp_path / "r.npy")}),
                           ("cancel_workflow", {"workflow_id": wid})]:
            res = await _ok(client, name, **args)
            key = name + ("+results" if args.get("include_results") else "") + ("(limit=0)" if args.get("limit") == 0 else "")
            sizes[key] = assert_within_budget(key, res, len((res.structured_content or {}).get("tasks") or []))
        inputs = tmp_path / "in.txt"
        inputs.write_text("one\ntwo\nthree\n")
        res = await _ok(client, "submit_workflow_file", path=str(inputs), model=DEFAULT_MODEL)
        sizes["submit_workflow_file"] = assert_within_budget("submit_workflow_file", res)

        page = await _ok(client, "get_workflow_status", workflow_id=wid, include_results=True)
        floats = await _ok(client, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    # 20 compact results cost a fraction of 20 full vectors
    assert sizes["get_workflow_status+results"] * 4 < _size(floats), (sizes, _size(floats))
    assert all("head" in t["result"] for t in page.structured_content["tasks"])
    # a status answer links the workflow's results as a resource, beside the summary
    links = [c for c in page.content if getattr(c, "type", None) == "resource_link"]
    assert len(links) == 1 and str(links[0].uri).startswith(f"workflow://{wid}/results"), page.content
    print("default answer sizes (characters of content):", json.dumps(sizes, indent=1))


async def test_formats_and_refs_give_the_same_vector(node: Any) -> None:
    async with Client(build_server(node)) as client:
        full = (await _ok(client, "run_inference", model=DEFAULT_MODEL, inputs=[SENTENCE, "A dog."], format="floats")).structured_content
        vecs = [np.asarray(o["embedding"], dtype="<f4") for o in full["outputs"]]
        b64 = (await _ok(client, "run_inference", model=DEFAULT_MODEL, inputs=[SENTENCE, "A dog."], format="base64")).structured_content
        for o, v in zip(b64["outputs"], vecs):
            assert o["dtype"] == "<f4" and o["dim"] == 384
            assert np.allclose(np.frombuffer(base64.b64decode(o["embedding_base64"]), dtype="<f4"), v, atol=1e-6)
        compact = (await _ok(client, "run_inference", model=DEFAULT_MODEL, inputs=[SENTENCE, "A dog."])).structured_content
        for i, (o, v) in enumerate(zip(compact["outputs"], vecs)):
            assert np.allclose(o["head"], v[:HEAD], atol=1e-5) and abs(o["norm"] - float(np.linalg.norm(v))) < 1e-5
            got = await client.read_resource(o["ref"])
            assert got.contents[0].mime_type == "application/json"
            assert np.allclose(json.loads(got.contents[0].text)["embedding"], v, atol=1e-6), i
        whole = json.loads((await client.read_resource(o["ref"].rsplit("/", 1)[0])).contents[0].text)
        assert len(whole["outputs"]) == 2

        # a workflow's compact results point at the results resource, which gives the same vectors
        sub = await _ok(client, "submit_workflow", name="refs",
                        tasks=[{"model": DEFAULT_MODEL, "input": t} for t in (SENTENCE, "A dog.", "Engines.")])
        wid = sub.structured_content["workflow_id"]
        st = (await _ok(client, "wait_for_workflow", workflow_id=wid, timeout_s=300, include_results=True)).structured_content
        assert st["state"] == "completed"
        full_st = (await _ok(client, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")).structured_content
        want = np.array([t["result"]["embedding"] for t in full_st["tasks"]], dtype="<f4")
        assert np.allclose(want[:2], np.stack(vecs), atol=1e-5)
        for i, t in enumerate(st["tasks"]):
            assert t["result"]["ref"] == f"workflow://{wid}/results?offset={i}&limit=1"
            one = json.loads((await client.read_resource(t["result"]["ref"])).contents[0].text)
            assert one["offset"] == i and np.array_equal(np.asarray(one["tasks"][0]["result"]["embedding"], dtype="<f4"), want[i])
        npy = (await client.read_resource(f"workflow://{wid}/results?format=npy")).contents[0]
        assert npy.mime_type == NPY_MIME
        mat = np.load(io.BytesIO(base64.b64decode(npy.blob)), allow_pickle=False)
        assert mat.dtype == np.dtype("<f4") and np.array_equal(mat, want)
        part = (await client.read_resource(f"workflow://{wid}/results?offset=1&limit=1&format=npy")).contents[0]
        assert np.array_equal(np.load(io.BytesIO(base64.b64decode(part.blob))), want[1:2])
        page = json.loads((await client.read_resource(f"workflow://{wid}/results")).contents[0].text)
        assert page["has_more"] is False and [t["task_id"] for t in page["tasks"]] == [f"{wid}/{i}" for i in range(3)]


async def test_resources_and_completion_are_listed_and_refuse_bad_input(node: Any) -> None:
    async with Client(build_server(node)) as client:
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        assert {RESULTS_TEMPLATE, "workflow://{workflow_id}", "inference://{call_id}", "model://{+model}"} <= templates
        sub = await _ok(client, "submit_workflow", name="c", tasks=[{"model": DEFAULT_MODEL, "input": "x"}])
        wid = sub.structured_content["workflow_id"]
        ref = ResourceTemplateReference(type="ref/resource", uri=RESULTS_TEMPLATE)
        got = (await client.complete(ref, {"name": "workflow_id", "value": wid[:4]})).completion
        assert wid in got.values and all(v.startswith(wid[:4]) for v in got.values)
        assert (await client.complete(ref, {"name": "workflow_id", "value": "zz"})).completion.values == []
        assert (await client.complete(ref, {"name": "format", "value": "n"})).completion.values == ["npy"]
        mref = ResourceTemplateReference(type="ref/resource", uri="model://{+model}")
        assert DEFAULT_MODEL in (await client.complete(mref, {"name": "model", "value": DEFAULT_MODEL[:8]})).completion.values
        model = json.loads((await client.read_resource(f"model://{DEFAULT_MODEL}")).contents[0].text)
        assert model["model"] == DEFAULT_MODEL and model["rows"][0]["local"] is True
        await _ok(client, "wait_for_workflow", workflow_id=wid, timeout_s=300)

        # bad input: a clear error, nothing changes
        assert "format" in await _err(client, "run_inference", model=DEFAULT_MODEL, inputs=["x"], format="xml")
        assert "format" in await _err(client, "get_workflow_status", workflow_id=wid, include_results=True, format="npy")
        for uri, words in [(f"workflow://{wid}/results?format=csv", "format"),
                           (f"workflow://{wid}/results?limit=0", "limit"),
                           (f"workflow://{'0' * 32}/results", "unknown workflow"),
                           ("inference://0123456789abcdef", "no longer held"),
                           ("model://no-such/model", "no live peer serves")]:
            with pytest.raises(Exception) as exc:
                await client.read_resource(uri)
            assert words in str(exc.value), (uri, str(exc.value))


async def test_an_npy_read_that_cannot_fit_one_reply_says_how_to_page(node: Any) -> None:
    async with Client(build_server(node)) as client:
        sub = await _ok(client, "submit_workflow", name="many", tag="local-only",
                        tasks=[{"model": DEFAULT_MODEL, "input": f"s{i}"} for i in range(700)])
        wid = sub.structured_content["workflow_id"]
        await _ok(client, "wait_for_workflow", workflow_id=wid, timeout_s=300)
        with pytest.raises(Exception) as exc:
            await client.read_resource(f"workflow://{wid}/results?format=npy")
        assert "do not fit one reply" in str(exc.value) and "limit=" in str(exc.value)
        most = int(str(exc.value).split("read at most ")[1].split()[0])
        got = (await client.read_resource(f"workflow://{wid}/results?offset=0&limit={most}&format=npy")).contents[0]
        mat = np.load(io.BytesIO(base64.b64decode(got.blob)))
        assert mat.shape == (most, 384) and not np.isnan(mat).any()


def test_long_score_lists_keep_their_best() -> None:
    scores = {f"L{i}": i / 100 for i in range(30)}
    out = shape_output({"label": "L29", "score": 0.29, "scores": scores}, "compact", "ref://x")
    assert out["scores"] == {f"L{i}": i / 100 for i in range(29, 24, -1)} and out["labels"] == 30 and out["ref"] == "ref://x"
    assert shape_output({"label": "a", "score": 1.0, "scores": {"a": 1.0, "b": 0.0}}, "compact", "r") == \
        {"label": "a", "score": 1.0, "scores": {"a": 1.0, "b": 0.0}}
    preds = [{"token": f"t{i}", "score": 1 / (i + 1)} for i in range(12)]
    out = shape_output({"predictions": preds}, "compact", None)
    assert out["predictions"] == preds[:TOP] and out["predictions_total"] == 12 and "ref" not in out
    assert shape_output({"predictions": preds}, "floats", None) == {"predictions": preds}


def test_recent_outputs_are_bounded() -> None:
    recent = RecentOutputs(max_calls=3, max_bytes=10_000)
    ids = [recent.put([{"embedding": [0.5] * 10}]) for _ in range(5)]
    for old in ids[:2]:
        with pytest.raises(Exception, match="no longer held"):
            recent.get(old)
    assert all(recent.get(i) for i in ids[2:])
    big = recent.put([{"embedding": [0.5] * 5000}])  # over max_bytes alone: never kept
    with pytest.raises(Exception, match="no longer held"):
        recent.get(big)
    assert all(recent.get(i) for i in ids[2:])


async def test_list_workflows_is_cut_to_fit_one_reply(node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 summaries are ~3.5 MB; the list is cut like a status page (the budget made small
    here so a handful of workflows show it) and has_more says so."""
    import mcp_server.server as server_mod

    async with Client(build_server(node)) as client:
        for i in range(6):
            await _ok(client, "submit_workflow", name=f"w{i}", tasks=[{"model": DEFAULT_MODEL, "input": f"x{i}"}])
        whole = (await _ok(client, "list_workflows")).structured_content
        assert len(whole["workflows"]) == 6 and whole["has_more"] is False
        one = len(json.dumps(whole["workflows"][0], separators=(",", ":"))) + 10
        monkeypatch.setattr(server_mod, "REPLY_BUDGET", 3 * one)
        res = await _ok(client, "list_workflows")
        cut = res.structured_content
        assert cut["has_more"] is True and 1 <= len(cut["workflows"]) < 6, cut
        assert [w["workflow_id"] for w in cut["workflows"]] == [w["workflow_id"] for w in whole["workflows"][:len(cut["workflows"])]]
        assert "cut to fit one reply" in _text(res)
