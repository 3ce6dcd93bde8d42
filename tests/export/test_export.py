"""Results out to files (issue 12 item 2): .jsonl, .npy and .parquet read back equal to what
get_workflow_status returns; partial exports mark what is missing; bad input is refused with a
clear error and leaves nothing behind.

The writers are checked as pure logic (hypothesis, no process); the rest on a real in-process
node with the real default model (networking off), through the Python verb, the MCP tool (SDK
client against build_server + register_export_tool) and the CLI (a subprocess against the
node's MCP endpoint on loopback)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client

from mcp_server.export_tool import register_export_tool
from mcp_server.server import build_server
from p2p.errors import NodeError
from p2p.export import (
    ExportRow, JsonlWriter, NpyWriter, ParquetWriter, Resolved, check_target, export_results,
    export_workflow_results, infer_format, node_blocks_loader,
)
from p2p.node import Node
from tests.conftest import DEFAULT_MODEL, make_node_config
from tests.procs import CLI, cli_env

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------ pure logic


def _row(i: int, vec: np.ndarray | None, state: str = "done", error: str | None = None) -> Resolved:
    stored = None if vec is None else {"embedding_f32": vec.astype("<f4").tobytes()}
    return Resolved(ExportRow(i, f"w/{i}", f"text {i}", state, error), stored, None)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), d=st.integers(1, 16), page=st.integers(1, 7), seed=st.integers(0, 2**32 - 1),
       missing=st.sets(st.integers(0, 29)))
def test_writers_round_trip(n: int, d: int, page: int, seed: int, missing: set[int]) -> None:
    """Any mix of results and missing rows, written page by page, reads back as written."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, d)).astype("<f4")
    rows = [_row(i, None if i in missing else vecs[i], "done" if i not in missing else "failed",
                 None if i not in missing else f"boom {i}") for i in range(n)]
    outs = {}
    for name in ("jsonl", "npy", "parquet"):
        fh = io.BytesIO()
        w = {"jsonl": lambda: JsonlWriter(fh, True), "npy": lambda: NpyWriter(fh, True, n, d),
             "parquet": lambda: ParquetWriter(fh, True)}[name]()
        for at in range(0, n, page):
            w.write(rows[at:at + page])
        w.finish()
        assert w.rows == n and w.with_output == n - len(missing & set(range(n)))
        outs[name] = fh.getvalue()
    mat = np.load(io.BytesIO(outs["npy"]))
    lines = [json.loads(x) for x in outs["jsonl"].decode().splitlines()]
    table = pq.read_table(io.BytesIO(outs["parquet"])).to_pydict()
    assert mat.shape == (n, d) and mat.dtype == np.float32 and len(lines) == n
    assert table["task_id"] == [f"w/{i}" for i in range(n)]
    for i in range(n):
        assert lines[i]["task_id"] == f"w/{i}" and lines[i]["input"] == f"text {i}"
        if i in missing:
            assert np.isnan(mat[i]).all()
            assert lines[i] == {"task_id": f"w/{i}", "input": f"text {i}", "output": None, "state": "failed", "error": f"boom {i}"}
            assert table["embedding"][i] is None and table["error"][i] == f"boom {i}" and table["state"][i] == "failed"
        else:
            assert np.array_equal(mat[i], vecs[i])
            assert lines[i]["output"] == {"embedding": vecs[i].astype(float).tolist()} and "state" not in lines[i]
            assert np.array_equal(np.asarray(table["embedding"][i], dtype="<f4"), vecs[i])
            assert table["error"][i] is None and table["output"][i] is None


def test_writers_refuse_what_they_cannot_hold() -> None:
    fh = io.BytesIO()
    with pytest.raises(NodeError, match="not an embedding.*export .jsonl or .parquet"):
        NpyWriter(fh, False, 1, 3).write([Resolved(ExportRow(0, "w/0", "x", "done", None), {"label": "POSITIVE"}, None)])
    with pytest.raises(NodeError, match="has 4 dimensions, the first result's 3"):
        NpyWriter(io.BytesIO(), False, 2, 3).write([_row(0, np.ones(3)), _row(1, np.ones(4))])
    for w in (NpyWriter(io.BytesIO(), False, 1, 3), JsonlWriter(io.BytesIO(), False), ParquetWriter(io.BytesIO(), False)):
        with pytest.raises(NodeError, match="not reached this peer.*partial=true"):
            w.write([Resolved(ExportRow(0, "w/0", "x", "done", None), None, "the result block b has not reached this peer yet")])
    # a classification output in parquet: no embedding, the output as JSON
    fh = io.BytesIO()
    w = ParquetWriter(fh, False)
    w.write([Resolved(ExportRow(0, "w/0", "x", "done", None), {"label": "POS", "score": 0.5}, None)])
    w.finish()
    t = pq.read_table(io.BytesIO(fh.getvalue())).to_pydict()
    assert t["embedding"] == [None] and json.loads(t["output"][0]) == {"label": "POS", "score": 0.5}


def test_jsonl_lines_stay_valid_with_any_input() -> None:
    fh = io.BytesIO()
    w = JsonlWriter(fh, False)
    texts = ["héllo — ünïcode", "lone \ud800 surrogate", "new\nline"]
    w.write([Resolved(ExportRow(i, f"w/{i}", t, "done", None), {"label": "x"}, None) for i, t in enumerate(texts)])
    lines = fh.getvalue().decode("utf-8").splitlines()
    assert [json.loads(x)["input"] for x in lines] == texts


def test_parquet_without_pyarrow_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(NodeError, match="needs the pyarrow package.*pip install pyarrow"):
        ParquetWriter(io.BytesIO(), False)


def test_format_and_target_checks(tmp_path: Path) -> None:
    assert infer_format(Path("/a/b.NPY"), None) == "npy" and infer_format(Path("/a/b.parquet"), ".Parquet") == "parquet"
    with pytest.raises(NodeError, match="extension '.csv'"):
        infer_format(Path("/a/b.csv"), None)
    with pytest.raises(NodeError, match="unknown format 'xml'"):
        infer_format(Path("/a/b.jsonl"), "xml")
    for path, fmt in ((Path("/home/u/.bashrc"), "jsonl"), (Path("/a/b.npy"), "jsonl"), (Path("/a/b"), "npy")):
        with pytest.raises(NodeError, match="must end in"):
            infer_format(path, fmt)
    assert infer_format(Path("/a/B.NPY"), "npy") == "npy"
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    for path in (data / "clock.jsonl", data / "sub" / "x.npy", tmp_path / "link" / "x.jsonl"):
        with pytest.raises(NodeError, match="inside the node's data directory"):
            check_target(path, True, data)
    check_target(tmp_path / "out.jsonl", False, data)
    (tmp_path / "file").write_text("x")
    cases = [
        (Path("rel/out.jsonl"), "must be absolute"),
        (tmp_path / "nope" / "out.jsonl", "does not exist"),
        (tmp_path / "file" / "out.jsonl", "is not a directory"),
        (tmp_path, "is a directory"),
        (tmp_path / "file", "already exists; pass overwrite=true"),
    ]
    for path, needle in cases:
        with pytest.raises(NodeError, match=needle):
            check_target(path, False)
    check_target(tmp_path / "file", True)


# ------------------------------------------------------------------ a real node


async def _finish(node: Node, tasks: list[dict[str, Any]], tag: str = "p2p-eligible") -> str:
    wid = (await node.submit_workflow("export", tasks, tag=tag))["workflow_id"]
    if tag != "p2p-only":
        await node.wait_for_workflow(wid, 240)
    return wid


def _emb_tasks(n: int) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"Sentence {i}: the quick brown fox and the lazy dog."} for i in range(n)]


def _listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


async def test_exports_read_back_equal_and_bad_input_writes_nothing(tmp_path: Path, shared_cache_dir: Path) -> None:
    """12 embeddings, every result stored as its own clock block (inline_result_bytes=0), so
    the export reads them the way a large workflow's are read."""
    cfg = make_node_config(tmp_path / "node", shared_cache_dir, inline_result_bytes=0)
    out = tmp_path / "out"
    out.mkdir()
    async with Node.open(cfg) as node:
        wid = await _finish(node, _emb_tasks(12))
        st_ = node.workflow_status(wid, include_results=True)
        assert st_["state"] == "completed"
        assert all("result" in t for t in st_["tasks"])  # read from blocks, not inline
        assert all(node.scheduler.state.tasks[t["task_id"]].result.result is None for t in st_["tasks"])
        want = np.array([t["result"]["embedding"] for t in st_["tasks"]], dtype=np.float32)
        assert want.shape == (12, 384)

        replies = {}
        for name in ("jsonl", "npy", "parquet"):
            path = out / f"emb.{name}"
            # pages of 5: two full pages and a short one
            replies[name] = r = await export_results(lambda: node.scheduler.state, wid, str(path), None, False,
                                                     node_blocks_loader(node.clock), page=5)
            assert r["rows"] == 12 and r["with_output"] == 12 and r["without_output"] == 0
            assert r["format"] == name and r["path"] == str(path) and r["bytes"] == path.stat().st_size
        assert replies["npy"]["shape"] == [12, 384] and replies["jsonl"]["shape"] is None
        mat = np.load(out / "emb.npy")
        assert mat.dtype == np.float32 and np.array_equal(mat, want)
        lines = [json.loads(x) for x in (out / "emb.jsonl").read_text().splitlines()]
        assert lines == [{"task_id": t["task_id"], "input": _emb_tasks(12)[i]["input"], "output": t["result"]}
                         for i, t in enumerate(st_["tasks"])]
        table = pq.read_table(out / "emb.parquet").to_pydict()
        assert table["task_id"] == [t["task_id"] for t in st_["tasks"]] and set(table["state"]) == {"done"}
        assert np.array_equal(np.array(table["embedding"], dtype=np.float32), want)
        assert table["error"] == [None] * 12 and table["output"] == [None] * 12
        assert _listing(out) == ["emb.jsonl", "emb.npy", "emb.parquet"]  # no temporary file left

        # the node-level verb, with the default page; an existing file is kept unless overwrite
        before = (out / "emb.npy").read_bytes()
        with pytest.raises(NodeError, match="already exists"):
            await export_workflow_results(node, wid, out / "emb.npy")
        assert (out / "emb.npy").read_bytes() == before
        r = await export_workflow_results(node, wid, out / "emb.npy", overwrite=True)
        assert r["rows"] == 12 and (out / "emb.npy").read_bytes() == before  # same results, same bytes

        # bad input: a clear error, and the directory as it was
        (out / "afile").write_text("x")
        listing = _listing(out)
        unwritable = Path("/sys") if os.geteuid() == 0 else out / "ro"
        if os.geteuid() != 0:
            unwritable.mkdir()
            unwritable.chmod(0o500)
            listing = _listing(out)
        cases = [
            (dict(workflow_id="nope", path=out / "x.npy"), "unknown workflow id"),
            (dict(workflow_id=wid, path=out / "x.csv"), "extension '.csv'"),
            (dict(workflow_id=wid, path=out / "x.jsonl", format="xml"), "unknown format"),
            (dict(workflow_id=wid, path=out / "missing" / "x.npy"), "does not exist"),
            (dict(workflow_id=wid, path=out / "afile" / "x.npy"), "not a directory"),
            (dict(workflow_id=wid, path=unwritable / "x.npy"), "not writable|cannot write"),
            (dict(workflow_id=wid, path="x.npy"), "must be absolute"),
        ]
        for args, needle in cases:
            with pytest.raises(NodeError, match=needle):
                await export_workflow_results(node, **args)
            assert _listing(out) == listing, args

        # a failed workflow: 4 embeddings and 2 fill-mask tasks the model cannot do
        tasks = _emb_tasks(4)[:2] + [{"model": DEFAULT_MODEL, "input": "a [MASK] b", "task": "fill-mask"}] * 2 + _emb_tasks(4)[2:]
        fwid = await _finish(node, tasks)
        summary = node.workflow_summary(fwid)
        assert summary["state"] == "failed" and summary["failed"] == 2 and summary["completed"] == 4
        with pytest.raises(NodeError, match="is failed, not completed.*4 of 6 tasks done, 2 failed.*partial=true"):
            await export_workflow_results(node, fwid, out / "f.npy")
        assert _listing(out) == listing
        fst = node.workflow_status(fwid, include_results=True)["tasks"]
        for name in ("jsonl", "npy", "parquet"):
            r = await export_workflow_results(node, fwid, out / f"f.{name}", partial=True)
            assert (r["rows"], r["with_output"], r["without_output"], r["state"]) == (6, 4, 2, "failed")
        fmat = np.load(out / "f.npy")
        flines = [json.loads(x) for x in (out / "f.jsonl").read_text().splitlines()]
        ftable = pq.read_table(out / "f.parquet").to_pydict()
        for i, t in enumerate(fst):
            if i in (2, 3):
                assert t["state"] == "failed" and np.isnan(fmat[i]).all()
                assert flines[i]["output"] is None and flines[i]["state"] == "failed" and flines[i]["error"] == t["error"]
                assert ftable["embedding"][i] is None and ftable["error"][i] == t["error"]
            else:
                assert np.array_equal(fmat[i], np.array(t["result"]["embedding"], dtype=np.float32))
                assert flines[i]["output"] == t["result"] and "state" not in flines[i]
                assert ftable["state"][i] == "done" and ftable["error"][i] is None


async def test_unfinished_workflow_and_the_mcp_tool(tmp_path: Path, shared_cache_dir: Path) -> None:
    """A p2p-only workflow on a node without peers never runs: refused, or exported as
    placeholders with partial. Then a completed one through the real MCP tool (results inline)."""
    out = tmp_path / "out"
    out.mkdir()
    async with Node.open(make_node_config(tmp_path / "node", shared_cache_dir)) as node:
        pending = await _finish(node, _emb_tasks(3), tag="p2p-only")
        server = build_server(node)
        register_export_tool(server, node)
        async with Client(server) as client:
            tool = {t.name: t for t in (await client.list_tools()).tools}["export_workflow_results"]
            assert tool.output_schema and tool.output_schema["type"] == "object"
            assert tool.input_schema["properties"]["format"]["anyOf"][0]["enum"] == ["jsonl", "npy", "parquet"]

            async def call(**args: Any) -> Any:
                return await client.call_tool("export_workflow_results", args)

            res = await call(workflow_id=pending, path=str(out / "p.jsonl"))
            text = " ".join(getattr(c, "text", "") for c in res.content)
            assert res.is_error and "is pending, not completed (0 of 3 tasks done)" in text and "partial=true" in text
            res = await call(workflow_id=pending, path=str(out / "p.npy"), partial=True)
            assert res.is_error and "has no result yet" in " ".join(getattr(c, "text", "") for c in res.content)
            assert _listing(out) == []
            res = await call(workflow_id=pending, path=str(out / "p.jsonl"), partial=True)
            assert not res.is_error and res.structured_content["without_output"] == 3
            assert [json.loads(x) for x in (out / "p.jsonl").read_text().splitlines()] == [
                {"task_id": f"{pending}/{i}", "input": t["input"], "output": None, "state": "queued"}
                for i, t in enumerate(_emb_tasks(3))]

            sub = await client.call_tool("submit_workflow", {"name": "e", "tasks": _emb_tasks(12)})
            wid = sub.structured_content["workflow_id"]
            st_ = (await client.call_tool("wait_for_workflow", {"workflow_id": wid, "timeout_s": 240,
                                                                "include_results": True, "format": "floats"})).structured_content
            assert st_["state"] == "completed"
            progress: list[tuple[float, float | None]] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append((p, total))

            res = await client.call_tool("export_workflow_results", {"workflow_id": wid, "path": str(out / "e.npy"),
                                                                     "format": "npy"}, progress_callback=on_progress)
            assert not res.is_error, res.content
            r = res.structured_content
            assert r["shape"] == [12, 384] and r["rows"] == 12 and r["format"] == "npy"
            assert r["bytes"] == (out / "e.npy").stat().st_size
            mat = np.load(out / "e.npy")
            assert np.array_equal(mat, np.array([t["result"]["embedding"] for t in st_["tasks"]], dtype=np.float32))
            assert all(math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-4) for v in mat)
            assert progress and progress[-1] == (12, 12)
            res = await call(workflow_id=wid, path=str(out / "e.csv"))
            assert res.is_error and "extension '.csv'" in " ".join(getattr(c, "text", "") for c in res.content)

            # the CLI: a subprocess calling this node's MCP endpoint on loopback
            from mcp_server.transports import http_app, serve_http

            async with trio.open_nursery() as nursery:
                app = http_app(server, "http", "127.0.0.1", 0, "")
                url = (await nursery.start(serve_http, app, "127.0.0.1", 0))[0] + "/mcp"

                def cli(*args: str) -> subprocess.CompletedProcess[str]:
                    return subprocess.run([CLI, "workflow", "results", *args, "--url", url], capture_output=True,
                                          text=True, timeout=120, env=cli_env(tmp_path / "cli"), cwd=out)

                done = await trio.to_thread.run_sync(cli, wid, "--out", "cli.parquet")  # relative: made absolute
                assert done.returncode == 0, done.stderr
                assert f"{out / 'cli.parquet'}: 12 rows, parquet" in done.stdout
                table = pq.read_table(out / "cli.parquet").to_pydict()
                assert table["task_id"] == [t["task_id"] for t in st_["tasks"]]
                bad = await trio.to_thread.run_sync(cli, pending, "--out", "p2.npy")
                assert bad.returncode == 1 and "error: " in bad.stderr and "not completed" in bad.stderr
                assert not (out / "p2.npy").exists()
                nursery.cancel_scope.cancel()
