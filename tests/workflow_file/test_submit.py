"""submit_workflow_file on a real in-process node (the real default model, networking off),
through the MCP tool (SDK client against build_server) and the CLI (`workflow submit FILE`, a
subprocess against the node's MCP endpoint on loopback): a small file in every format becomes
a workflow whose tasks hold the file's rows in order and run; each bad file is refused with a
clear error and submits nothing."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio
from mcp import Client

from mcp_server.server import build_server
from p2p.node import Node
from tests.conftest import DEFAULT_MODEL, make_node_config
from tests.procs import CLI, cli_env

pytestmark = pytest.mark.timeout(300)

ROWS = ["The quick brown fox, it said, \"jumps\".", "Ünïcödé — 日本語の文 🦊", "a line\nbreak inside (CSV/JSONL only)",
        "commas, commas, commas", "  leading and trailing spaces kept  "]
LIMIT = 8


def write_all(d: Path) -> dict[str, tuple[Path, list[str], dict[str, Any]]]:
    """One file per format; the inputs each should give, and extra tool arguments."""
    d.mkdir()
    with open(d / "in.jsonl", "w", encoding="utf-8") as fh:
        for i, s in enumerate(ROWS):
            fh.write(json.dumps({"id": i, "text" if i % 2 else "input": s}, ensure_ascii=False) + "\n")
    with open(d / "in.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "doc"])
        w.writerows([i, s] for i, s in enumerate(ROWS))
    pq.write_table(pa.table({"input": ROWS[::-1]}), d / "in.parquet")
    text_rows = [s for s in ROWS if "\n" not in s]
    (d / "in.txt").write_text("\n\n".join(text_rows) + "\n", encoding="utf-8")
    return {"jsonl": (d / "in.jsonl", ROWS, {}), "csv": (d / "in.csv", ROWS, {"column": "doc"}),
            "parquet": (d / "in.parquet", ROWS[::-1], {}), "text": (d / "in.txt", text_rows, {"task": "embedding"})}


def inputs_of(node: Node, wid: str) -> list[str]:
    tasks = node.scheduler.state.tasks
    n = node.workflow_summary(wid)["total"]
    return [tasks[f"{wid}/{i}"].spec.input for i in range(n)]


def text_of(res: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in res.content)


async def test_every_format_submits_its_rows_in_order_and_bad_files_submit_nothing(tmp_path: Path, shared_cache_dir: Path) -> None:
    cfg = make_node_config(tmp_path / "node", shared_cache_dir, max_tasks_per_workflow=LIMIT)
    cfg.clock.max_block_bytes = 32_768  # small, so a few long rows overflow one submit event
    files = write_all(tmp_path / "files")
    async with Node.open(cfg) as node:
        server = build_server(node)
        async with Client(server) as client:
            tool = {t.name: t for t in (await client.list_tools()).tools}["submit_workflow_file"]
            assert tool.output_schema and set(tool.input_schema["required"]) == {"path", "model"}
            progress: list[tuple[float, float | None]] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append((p, total))

            wids = {}
            for fmt, (path, want, extra) in files.items():
                res = await client.call_tool("submit_workflow_file", {"path": str(path), "model": DEFAULT_MODEL, **extra},
                                             progress_callback=on_progress)
                assert not res.is_error, text_of(res)
                out = res.structured_content
                assert (out["format"], out["rows"], out["total"], out["path"]) == (fmt, len(want), len(want), str(path))
                assert out["name"] == path.name and out["bytes"] == path.stat().st_size
                assert inputs_of(node, out["workflow_id"]) == want, fmt
                wids[fmt] = out["workflow_id"]
            assert progress and progress[-1][0] == progress[-1][1]  # the final report: all read
            for fmt, wid in wids.items():
                await node.wait_for_workflow(wid, 240)
                st = node.workflow_status(wid, include_results=True)
                assert st["state"] == "completed", (fmt, st)
                assert all(len(t["result"]["embedding"]) == 384 for t in st["tasks"])

            # bad files: a clear error, and no workflow written
            d = tmp_path / "files"
            (d / "over.txt").write_text("".join(f"row {i}\n" for i in range(LIMIT + 1)))
            (d / "big.txt").write_text("".join(f"{i} " + "word " * 1000 + "\n" for i in range(LIMIT)))
            (d / "badrow.jsonl").write_text('{"input": "ok"}\n{"input": "ok"}\n{"input": "   "}\n')
            (d / "nocol.csv").write_text("id,body\n1,x\n")
            (node.config.data_dir / "notes.txt").write_text("private\n")
            cases = [
                ({"path": str(d / "over.txt")}, f"more than {LIMIT} inputs.*scheduler.max_tasks_per_workflow = {LIMIT}"),
                ({"path": str(d / "big.txt")}, "exceeds max_block_bytes=32768.*split the workflow"),
                ({"path": str(d / "badrow.jsonl")}, "badrow.jsonl: row 3: the input is blank"),
                ({"path": str(d / "nocol.csv")}, "no 'input' or 'text' column; its columns: 'id', 'body'"),
                ({"path": str(d / "in.csv"), "column": "nope"}, "no column 'nope'"),
                ({"path": str(d / "missing.jsonl")}, "does not exist"),
                ({"path": str(d)}, "is a directory"),
                ({"path": "files/in.jsonl"}, "must be absolute"),
                ({"path": str(d / "in.jsonl"), "format": "csv"}, "no 'input' or 'text' column"),
                ({"path": str(node.config.data_dir / "notes.txt")}, "inside the node's data directory"),
                ({"path": str(d / "in.jsonl"), "model": "no/such-model"}, "unknown model 'no/such-model'"),
            ]
            before = node.list_workflows(None, 100)
            for args, needle in cases:
                res = await client.call_tool("submit_workflow_file", {"model": DEFAULT_MODEL, **args})
                assert res.is_error, args
                assert __import__("re").search(needle, text_of(res)), (needle, text_of(res))
                assert node.list_workflows(None, 100) == before, args

            # the CLI: `workflow submit FILE` against this node's MCP endpoint
            from mcp_server.transports import http_app, serve_http

            async with trio.open_nursery() as nursery:
                app = http_app(server, "http", "127.0.0.1", 0, "")
                url = (await nursery.start(serve_http, app, "127.0.0.1", 0))[0] + "/mcp"

                def cli(*args: str) -> subprocess.CompletedProcess[str]:
                    return subprocess.run([CLI, "workflow", "submit", *args, "--model", DEFAULT_MODEL, "--url", url],
                                          capture_output=True, text=True, timeout=120, env=cli_env(shared_cache_dir), cwd=d)

                done = await trio.to_thread.run_sync(cli, "in.csv", "--column", "doc", "--json")  # relative: made absolute
                assert done.returncode == 0, done.stderr
                out = json.loads(done.stdout)
                assert out["state"] == "completed" and out["completed"] == len(ROWS) and out["rows"] == len(ROWS)
                assert out["path"] == str(d / "in.csv") and out["format"] == "csv"
                assert inputs_of(node, out["workflow_id"]) == ROWS
                plain = await trio.to_thread.run_sync(cli, "--file", "in.txt", "--no-wait", "--tag", "p2p-only", "--name", "t")
                assert plain.returncode == 0, plain.stderr
                wid = plain.stdout.split(":")[0]
                assert f"({len(files['text'][1])} rows of {d / 'in.txt'})" in plain.stdout
                assert inputs_of(node, wid) == files["text"][1] and node.workflow_summary(wid)["name"] == "t"
                listed = node.list_workflows(None, 100)
                bad = await trio.to_thread.run_sync(cli, "badrow.jsonl")
                assert bad.returncode == 1 and "error: " in bad.stderr and "row 3: the input is blank" in bad.stderr
                typo = await trio.to_thread.run_sync(cli, "--no-wait", "typo.jsonl")
                assert typo.returncode == 1 and "does not exist" in typo.stderr
                assert node.list_workflows(None, 100) == listed
                nursery.cancel_scope.cancel()
