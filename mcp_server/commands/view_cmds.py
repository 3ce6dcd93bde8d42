"""Terminal views of a running node: ``peers``, ``workflow list``, ``workflow status``, ``workflow watch``.

Like ``workflow submit`` they are MCP clients of the node (``--url``, default
``http://<mcp.host>:<mcp.port>/mcp``): they read what an agent reads (list_peers, get_node_info,
list_workflows, get_workflow_status, wait_for_workflow) and never write to the node's clock.
The human form is a rich table or bar on stdout (this process is not the stdio server);
``--json`` prints one JSON object on stdout and nothing else. Heavy modules (trio, mcp, rich)
are imported inside the commands so ``ipfs-accelerate --help`` stays fast.

The ``workflow`` subcommands are attached to ``workflow_cmds.workflow_group``; this module's
``COMMANDS`` names only ``peers``, so the CLI's discovery adds each command once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import click

from mcp_server.cli import CliError, cli_settings, node_call
from mcp_server.commands.workflow_cmds import workflow_group

TERMINAL = ("completed", "failed", "cancelled")
PAGE_FIELDS = ("offset", "limit", "has_more", "tasks")
URL_HELP = "MCP URL of the running node (default: http://<mcp.host>:<mcp.port>/mcp)."
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT


@dataclass
class _Reply:
    """What ``node_call`` expects of ``main``'s result (a CallToolResult's three fields), for
    commands that join several tool calls into one answer."""

    structured_content: dict[str, Any]
    is_error: bool = False
    content: list[Any] = field(default_factory=list)


class _ToolFailed(Exception):
    """A tool call answered with an error: ``node_call`` turns ``result`` into one CliError line."""

    def __init__(self, result: Any) -> None:
        super().__init__("tool error")
        self.result = result


async def _tool(client: Any, name: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    res = await client.call_tool(name, args or {}, **kw)
    if res.is_error:
        raise _ToolFailed(res)
    return dict(res.structured_content or {})


def _url(ctx: click.Context, url: str | None) -> str:
    settings = cli_settings(ctx)
    return url or f"http://{settings.mcp.host}:{settings.mcp.port}/mcp"


def _run(url: str, timeout_s: float, too_slow: str, body: Callable[[Any], Awaitable[dict[str, Any]]],
         interrupted: list[bool] | None = None) -> dict[str, Any]:
    """Run ``body(client)`` against the node at ``url`` and return its dict; errors as CliError.

    With ``interrupted`` (a one-item flag), SIGINT cancels the call cleanly (the MCP session is
    closed, no traceback) and sets the flag; the caller then exits 130."""
    import trio
    from mcp import Client

    async def session() -> Any:
        async with Client(url) as client:
            try:
                return _Reply(await body(client))
            except _ToolFailed as exc:
                return exc.result

    async def on_sigint(scope: trio.CancelScope, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        import signal

        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                assert interrupted is not None
                interrupted[0] = True
                scope.cancel()
                return

    async def main() -> Any:
        try:
            with trio.fail_after(timeout_s):
                if interrupted is None:
                    return await session()
                async with trio.open_nursery() as nursery:
                    await nursery.start(on_sigint, nursery.cancel_scope)
                    out = await session()
                    nursery.cancel_scope.cancel()
                    return out
                return _Reply({})  # cancelled by SIGINT
        except BaseExceptionGroup as group:  # name the cause (a refused connection...), not "1 sub-exception"
            raise _leaf(group) from None

    try:
        return node_call(main, url, timeout_s, too_slow)
    except KeyboardInterrupt:  # SIGINT before the handler was in place (or while leaving)
        if interrupted is None:
            raise
        interrupted[0] = True
        return {}


def _leaf(exc: BaseException) -> BaseException:
    """The first plain exception inside nested exception groups (a trio Cancelled or
    KeyboardInterrupt is kept as it is, so cancellation still works)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _console() -> Any:
    """A rich Console on stdout; piped, it is wide enough for a table of full workflow ids."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 160))


def _short(peer_id: str | None) -> str:
    if not peer_id:
        return "—"
    return peer_id if len(peer_id) <= 14 else f"{peer_id[:4]}…{peer_id[-8:]}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _workers(w: Any) -> str:
    """get_node_info's ``workers`` in a few words: live (of target in a pool), busy, mode."""
    if not isinstance(w, dict) or not w:
        return "—"
    live, mode = w.get("live", 0), w.get("mode", "?")
    text = f"{live}/{w['target']} {mode}" if mode == "pool" and "target" in w else f"{live} {mode}"
    if w.get("busy"):
        text += f", {w['busy']} busy"
    return text


# --- peers ---------------------------------------------------------------------------------

@click.command("peers")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=60, show_default=True)
@click.option("--url", default=None, help=URL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print list_peers' answer (self with its workers) as one JSON object.")
@click.pass_context
def peers(ctx: click.Context, timeout_s: float, url: str | None, as_json: bool) -> None:
    """Show this node and every live peer: name, peer id, models, queue, capacity, workers, RTT, connection, last seen."""
    url = _url(ctx, url)

    async def body(client: Any) -> dict[str, Any]:
        info = await _tool(client, "get_node_info")
        listed = await _tool(client, "list_peers")
        listed["self"] = {**listed["self"], "workers": info.get("workers", {})}
        return listed

    out = _run(url, timeout_s, "the node did not answer", body)
    if as_json:
        click.echo(json.dumps(out))
        return
    from rich.table import Table

    table = Table(title=f"{len(out['peers']) + 1} peers (this node first)", title_justify="left")
    for name, kw in (("name", {}), ("peer id", {"no_wrap": True}), ("models", {"overflow": "fold"}), ("queue", {"justify": "right"}),
                     ("capacity", {"justify": "right"}), ("workers", {}), ("RTT", {"justify": "right"}),
                     ("connection", {}), ("last seen", {}), ("compatible", {})):
        table.add_column(name, **kw)
    for i, p in enumerate([out["self"], *out["peers"]]):
        compatible = "yes" if p.get("compatible", True) else "no: " + ", ".join(p.get("incompatible_keys", []))
        rtt = p.get("rtt_ms")
        table.add_row(
            f"{p['name']} (self)" if i == 0 else p["name"], _short(p["peer_id"]),
            "\n".join(p.get("models") or []) or "—", str(p.get("queue", 0)), f"{p.get('capacity', 0):g}",
            _workers(p.get("workers")), "—" if rtt is None else f"{rtt:.1f} ms",
            "—" if i == 0 else p.get("connection") or "not connected",
            "self" if i == 0 else _ago(p.get("last_seen_s")), compatible)
    _console().print(table)


# --- workflow list -----------------------------------------------------------------------

def _bar(done: int, total: int, width: int = 30) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=max(total, 1), completed=done, width=width),
                 f"{100 * done / total if total else 100:3.0f}%")
    return grid


def _finished(w: dict[str, Any]) -> int:
    return int(w.get("completed", 0) + w.get("failed", 0) + w.get("cancelled", 0))


@workflow_group.command("list")
@click.option("--state", type=click.Choice(["pending", "running", "completed", "failed", "cancelled"]), default=None,
              help="Only workflows in this state.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Most workflows, newest first.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=60, show_default=True)
@click.option("--url", default=None, help=URL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print list_workflows' answer as one JSON object.")
@click.pass_context
def list_cmd(ctx: click.Context, state: str | None, limit: int, timeout_s: float, url: str | None, as_json: bool) -> None:
    """List the workflows the node knows (submitted on any peer), newest first, with progress bars."""
    url = _url(ctx, url)
    args: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}

    async def body(client: Any) -> dict[str, Any]:
        return await _tool(client, "list_workflows", args)

    out = _run(url, timeout_s, "the node did not answer", body)
    if as_json:
        click.echo(json.dumps(out))
        return
    from rich.table import Table

    flows = out["workflows"]
    table = Table(title=f"{len(flows)} workflow{'s' if len(flows) != 1 else ''}" + (f" ({state})" if state else ""),
                  title_justify="left")
    table.add_column("workflow id", no_wrap=True)
    for name in ("name", "state", "progress", "done", "failed", "priority", "tag", "submitted"):
        table.add_column(name, justify="right" if name in ("done", "failed", "priority") else "left")
    now = time.time()
    for w in flows:
        table.add_row(w["workflow_id"], w["name"], w["state"], _bar(_finished(w), w["total"], 20),
                      f"{w['completed']}/{w['total']}", str(w["failed"]), str(w["priority"]), w["tag"],
                      _ago(now - w["created_at"]))
    _console().print(table)


# --- workflow status / watch -------------------------------------------------------------

async def _status(client: Any, workflow_id: str, page: int) -> dict[str, Any]:
    """The workflow's summary and per-peer share of its done tasks, read ``page`` tasks at a time
    (no results), so a 10,000-task workflow is ten modest replies, never one huge one."""
    head: dict[str, Any] | None = None
    done_by: dict[str, int] = {}
    offset = 0
    while True:
        st = await _tool(client, "get_workflow_status", {"workflow_id": workflow_id, "offset": offset, "limit": page})
        tasks = st["tasks"]
        if head is None:
            head = {k: v for k, v in st.items() if k not in PAGE_FIELDS}
        for t in tasks:
            if t["state"] == "done":
                # replicas > 1: every peer whose result agreed ran it; else the one peer that did
                for pid in t.get("peers") or [t.get("peer") or "?"]:
                    done_by[pid] = done_by.get(pid, 0) + 1
        if not st["has_more"] or not tasks:
            break
        offset = st["offset"] + len(tasks)  # a page may be cut short to fit one reply
    assert head is not None
    listed = await _tool(client, "list_peers")
    names = {p["peer_id"]: p["name"] for p in [listed["self"], *listed["peers"]]}
    runs = sum(done_by.values())
    head["per_peer"] = [
        {"peer_id": pid, "name": names.get(pid), "done": n, "share": round(n / runs, 4)}
        for pid, n in sorted(done_by.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    head["self"] = listed["self"]["peer_id"]
    return head


def _print_status(st: dict[str, Any], *, bar: bool = True) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{st['workflow_id']}[/bold]  {st['name']}  [bold]{st['state']}[/bold]", highlight=False)
    if bar:
        console.print(_bar(_finished(st), st["total"], 40))
    console.print(f"{st['completed']}/{st['total']} done, {st['failed']} failed, {st['cancelled']} cancelled, "
                  f"{st['running']} running, {st['pending']} pending", highlight=False)
    console.print(f"priority {st['priority']}, {st['tag']}, replicas {st.get('replicas', 1)}, "
                  f"submitted by {_short(st['submitter'])}{' (this node)' if st['submitter'] == st.get('self') else ''} "
                  f"{_ago(time.time() - st['created_at'])}", highlight=False)
    if not st["per_peer"]:
        return
    table = Table(title="done tasks by peer", title_justify="left")
    table.add_column("peer")
    table.add_column("peer id", no_wrap=True)
    table.add_column("done", justify="right")
    table.add_column("share")
    runs = sum(p["done"] for p in st["per_peer"])
    for p in st["per_peer"]:
        name = p["name"] or "(not a live peer)"
        table.add_row(f"{name} (self)" if p["peer_id"] == st.get("self") else name, _short(p["peer_id"]),
                      str(p["done"]), _bar(p["done"], runs, 20))
    console.print(table)


PAGE_HELP = "Tasks read per get_workflow_status call while counting each peer's share."


@workflow_group.command("status")
@click.argument("workflow_id")
@click.option("--page-size", "page", type=click.IntRange(1, 10_000), default=1000, show_default=True, help=PAGE_HELP)
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=120, show_default=True)
@click.option("--url", default=None, help=URL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the summary with per_peer as one JSON object.")
@click.pass_context
def status_cmd(ctx: click.Context, workflow_id: str, page: int, timeout_s: float, url: str | None, as_json: bool) -> None:
    """Show WORKFLOW_ID's progress bar, counts and each peer's share of its done tasks."""
    url = _url(ctx, url)
    st = _run(url, timeout_s, "the node did not answer", lambda client: _status(client, workflow_id, page))
    if as_json:
        click.echo(json.dumps(st))
        return
    _print_status(st)


@workflow_group.command("watch")
@click.argument("workflow_id")
@click.option("--page-size", "page", type=click.IntRange(1, 10_000), default=1000, show_default=True, help=PAGE_HELP)
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=3600, show_default=True,
              help="Stop following after this long (exit 1; the workflow goes on).")
@click.option("--url", default=None, help=URL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the final summary (as `workflow status --json`) as one JSON object.")
@click.pass_context
def watch_cmd(ctx: click.Context, workflow_id: str, page: int, timeout_s: float, url: str | None, as_json: bool) -> None:
    """Follow WORKFLOW_ID until it finishes (a live bar driven by wait_for_workflow's progress
    notifications), then print its final summary. Ctrl-C stops following (exit 130); the workflow goes on."""
    url = _url(ctx, url)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    seen: dict[str, Any] = {}

    async def body(client: Any) -> dict[str, Any]:
        st = await _tool(client, "get_workflow_status", {"workflow_id": workflow_id, "limit": 0})
        seen.update(st)
        click.echo(f"following {workflow_id} ({st['state']}); Ctrl-C stops following, the workflow goes on", err=True)
        if st["state"] not in TERMINAL:
            live[0] = True
            with Progress(TextColumn(f"{workflow_id[:12]}…"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=_console(), disable=as_json) as bar:
                job = bar.add_task("run", total=st["total"], completed=_finished(st))

                async def progress(done: float, total: float | None, message: str | None) -> None:
                    bar.update(job, completed=done, total=total)

                while st["state"] not in TERMINAL:
                    st = await _tool(client, "wait_for_workflow", {"workflow_id": workflow_id, "timeout_s": 60, "limit": 0},
                                     read_timeout_seconds=120, progress_callback=progress)
                    seen.update(st)
                bar.update(job, completed=_finished(st), total=st["total"])
        return await _status(client, workflow_id, page)

    interrupted, live = [False], [False]
    st = _run(url, timeout_s, "the workflow did not finish (it goes on; see `workflow status`)", body, interrupted)
    if interrupted[0]:
        where = f" at {_finished(seen)}/{seen['total']}" if seen else ""
        click.echo(f"stopped following {workflow_id}{where}; the workflow goes on", err=True)
        ctx.exit(INTERRUPTED)
    if as_json:
        click.echo(json.dumps(st))
        return
    _print_status(st, bar=not live[0])  # the live bar already shows the end


COMMANDS = [peers]
