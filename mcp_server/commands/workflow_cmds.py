"""CLI commands for workflows on a running node: ``workflow submit``, ``workflow results``.

They talk to the node over its MCP endpoint (``--url``, default ``http://<mcp.host>:<mcp.port>/mcp``)
with the SDK client, exactly as an agent would: the CLI is one more MCP client, never a second
writer of the node's clock. Results and summaries go to stdout; progress to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mcp_server.cli import CliError, cli_settings, node_call


@click.group("workflow")
def workflow_group() -> None:
    """Submit workflows to a running node (`p2p start` or `mcp serve --transport http`) and export their results."""


INPUT_FILE_EXTENSIONS = (".jsonl", ".ndjson", ".csv", ".parquet", ".txt")


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a long text is no file name
        return False


@workflow_group.command("submit")
@click.argument("texts", nargs=-1)
@click.option("--file", "file", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="Submit one task per row of this file (FILE mode; a single TEXT naming an existing file does the "
                   "same): .jsonl/.ndjson ('input' or 'text' field), .csv (header; --column), .parquet (pyarrow), "
                   ".txt (one input per non-blank line). The node reads it, so it is a path on the node's machine "
                   "(made absolute here).")
@click.option("--column", default=None, help="FILE mode: the CSV/Parquet column or JSONL field to read (default: input, then text).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "text"]), default=None,
              help="FILE mode: the file's format (default: from its extension).")
@click.option("--model", required=True, help="The model every task runs (list_models shows them).")
@click.option("--task", default=None, help="embedding, text-classification or fill-mask (default: the model's).")
@click.option("--name", default=None, help="A label shown in listings (default: 'cli', or the file's name).")
@click.option("--priority", type=click.IntRange(1, 10), default=5, show_default=True, help="1 is the highest.")
@click.option("--tag", type=click.Choice(["p2p-eligible", "p2p-only", "local-only"]), default="p2p-eligible", show_default=True)
@click.option("--replicas", type=click.IntRange(1, 5), default=1, show_default=True,
              help="Run each task on this many distinct peers; a result stands only when they agree.")
@click.option("--no-cache", is_flag=True, help="Run every task afresh, never from the result cache.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the workflow to finish (progress bar).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=3600, show_default=True)
@click.option("--url", default=None, help="MCP URL of the running node (default: http://<mcp.host>:<mcp.port>/mcp).")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as one JSON object.")
@click.pass_context
def submit(ctx: click.Context, texts: tuple[str, ...], file: Path | None, column: str | None, fmt: str | None, model: str,
           task: str | None, name: str | None, priority: int, tag: str, replicas: int, no_cache: bool, wait: bool,
           timeout_s: float, url: str | None, as_json: bool) -> None:
    """Submit TEXTS as one workflow of MODEL tasks, or FILE's rows (`workflow submit FILE` or --file FILE), and wait.

    FILE mode: when --file is given, or when the only TEXT is an existing file (or ends in .jsonl, .ndjson, .csv,
    .parquet or .txt: a missing file is then an error, not a text). The node reads and checks every row first
    (a progress bar while it reads) and submits nothing when a row is bad; the error names the row.
    """
    if file is None and len(texts) == 1 and (_is_file(texts[0]) or texts[0].lower().endswith(INPUT_FILE_EXTENSIONS)):
        file, texts = Path(texts[0]), ()
    if file is not None and texts:
        raise CliError("give TEXTS or a FILE, not both")
    if file is None and (column is not None or fmt is not None):
        raise CliError("--column and --format apply to a FILE only")
    if file is None and not texts:
        raise CliError("no inputs: give TEXTS or a FILE")
    settings = cli_settings(ctx)
    url = url or f"http://{settings.mcp.host}:{settings.mcp.port}/mcp"
    import trio
    from mcp import Client
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    first: dict[str, Any] = {}

    async def submit_file(client: Any) -> Any:
        assert file is not None
        args: dict[str, Any] = {"path": str(file.expanduser().absolute()), "model": model, "priority": priority, "tag": tag,
                                "replicas": replicas, "cache": not no_cache}
        args.update({k: v for k, v in (("task", task), ("name", name), ("column", column), ("format", fmt)) if v is not None})
        with Progress(TextColumn(f"reading {file.name}"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[rows]}"),
                      TimeElapsedColumn(), console=console, disable=as_json) as bar:
            job = bar.add_task("read", total=None, rows="")

            async def progress(done: float, total: float | None, message: str | None) -> None:
                bar.update(job, completed=done, total=total, rows=message or "")

            return await client.call_tool("submit_workflow_file", args, read_timeout_seconds=timeout_s,
                                          progress_callback=progress)

    async def main() -> Any:
        with trio.fail_after(timeout_s):
            async with Client(url) as client:
                if file is not None:
                    res = await submit_file(client)
                else:
                    tasks = [{"model": model, "input": t, **({"task": task} if task else {})} for t in texts]
                    res = await client.call_tool("submit_workflow", {"name": name or "cli", "tasks": tasks, "priority": priority,
                                                                     "tag": tag, "replicas": replicas, "cache": not no_cache})
                if res.is_error or not wait:
                    return res
                first.update(res.structured_content or {})
                wid, total = first["workflow_id"], first["total"]
                with Progress(TextColumn(f"{wid[:12]}…"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              console=console, disable=as_json) as bar:
                    job = bar.add_task("run", total=total)

                    async def progress(done: float, total: float | None, message: str | None) -> None:
                        bar.update(job, completed=done, total=total)

                    while True:
                        res = await client.call_tool("wait_for_workflow", {"workflow_id": wid, "timeout_s": 60, "limit": 1},
                                                     read_timeout_seconds=120, progress_callback=progress)
                        if res.is_error or (res.structured_content or {}).get("state") in ("completed", "failed", "cancelled"):
                            return res

    out = node_call(main, url, timeout_s, "the workflow did not finish (it goes on; see get_workflow_status)")
    out.pop("tasks", None)
    if file is not None:  # what was read, beside the workflow's final counts
        out = {**{k: first[k] for k in ("path", "format", "column", "rows", "bytes", "read_s") if k in first}, **out}
    if as_json:
        click.echo(json.dumps(out))
        return
    source = f" ({out['rows']} rows of {out['path']})" if file is not None and "rows" in out else ""
    click.echo(f"{out['workflow_id']}: {out['state']} — {out['completed']}/{out['total']} done, {out['failed']} failed"
               + (f", replicas={out['replicas']}" if out.get("replicas", 1) > 1 else "") + source)


@workflow_group.command("results")
@click.argument("workflow_id")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: .jsonl, .npy or .parquet. The node writes it, so it is a path on the node's "
                   "machine (made absolute here).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "npy", "parquet"]), default=None,
              help="The format (default: from --out's extension).")
@click.option("--partial", is_flag=True, help="Export a workflow that is not completed; tasks without a result are "
                                              "marked (jsonl/parquet: output null, state, error; npy: a NaN row).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=3600, show_default=True)
@click.option("--url", default=None, help="MCP URL of the running node (default: http://<mcp.host>:<mcp.port>/mcp).")
@click.option("--json", "as_json", is_flag=True, help="Print the tool's reply as one JSON object.")
@click.pass_context
def results(ctx: click.Context, workflow_id: str, out: Path, fmt: str | None, partial: bool, overwrite: bool,
            timeout_s: float, url: str | None, as_json: bool) -> None:
    """Export WORKFLOW_ID's results to --out, one row per task in task order (a progress bar on stderr)."""
    settings = cli_settings(ctx)
    url = url or f"http://{settings.mcp.host}:{settings.mcp.port}/mcp"
    path = str(out.expanduser().absolute())
    args: dict[str, Any] = {"workflow_id": workflow_id, "path": path, "partial": partial, "overwrite": overwrite}
    if fmt is not None:
        args["format"] = fmt
    import trio
    from mcp import Client
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    async def main() -> Any:
        with trio.fail_after(timeout_s):
            async with Client(url) as client:
                with Progress(TextColumn(f"{workflow_id[:12]}… → {out.name}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=Console(stderr=True), disable=as_json) as bar:
                    job = bar.add_task("export", total=None)

                    async def progress(done: float, total: float | None, message: str | None) -> None:
                        bar.update(job, completed=done, total=total)

                    return await client.call_tool("export_workflow_results", args, read_timeout_seconds=timeout_s,
                                                  progress_callback=progress)

    res = node_call(main, url, timeout_s, "the export did not finish")
    if as_json:
        click.echo(json.dumps(res))
        return
    shape = f", shape {res['shape'][0]}x{res['shape'][1]}" if res.get("shape") else ""
    missing = f" ({res['without_output']} without a result)" if res.get("without_output") else ""
    click.echo(f"{res['path']}: {res['rows']} rows{missing}, {res['format']}{shape}, {res['bytes']:,} bytes")


COMMANDS = [workflow_group]
