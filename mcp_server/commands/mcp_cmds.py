"""`ipfs-accelerate mcp serve`: the node with its MCP tools over stdio, HTTP or SSE."""

from __future__ import annotations

import json
import shutil
from functools import partial
import sys
from typing import Any, NoReturn

import click

from mcp_server.cli import CliError
from mcp_server.commands.network_flags import network_lines, node_flags, node_options, node_settings


@click.group("mcp")
def mcp_group() -> None:
    """The MCP server."""


@mcp_group.command("serve")
@click.option("--transport", type=click.Choice(["stdio", "http", "sse"]), default=None, help="stdio (default), http (streamable HTTP at /mcp) or sse.")
@click.option("--host", default=None, help="Interface for http/sse (default 127.0.0.1; others need mcp.auth_token).")
@click.option("--port", type=int, default=None, help="Port for http/sse (default 8000).")
@node_options
@click.pass_context
def serve(ctx: click.Context, transport: str | None, host: str | None, port: int | None, **kw: Any) -> None:
    """Run this node and serve its MCP tools until stopped (SIGINT/SIGTERM, or stdin closing)."""
    join = kw.pop("join", None)
    settings = node_settings(ctx, node_flags(kw), join, **{"mcp.transport": transport, "mcp.host": host, "mcp.port": port})
    # stdout is the protocol under stdio; over HTTP/SSE it is free for the how-to-connect text
    run_server(settings, print_connect_help=settings.mcp.transport != "stdio")


def run_server(settings: Any, *, print_connect_help: bool) -> None:
    import trio

    from mcp_server.transports import ServeError, serve_node

    mcp = settings.mcp

    def ready(node: Any, urls: list[str]) -> None:
        if print_connect_help and urls:
            click.echo(connect_help(settings, node, urls))

    try:
        trio.run(partial(serve_node, settings, mcp.transport, mcp.host, mcp.port, on_ready=ready))
    except ServeError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - a port in use, a bad multiaddr, an unreadable key
        from p2p.errors import NodeError
        from p2p.net import NetError

        if isinstance(exc, (NodeError, NetError, OSError)):
            raise CliError(f"cannot start: {exc}") from None
        raise


@mcp_group.command("connect")
@click.argument("peer_id")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data dir of the running local node.")
@click.option("--node-id", help="Name the local node was started with (finds its data dir).")
@click.pass_context
def connect(ctx: click.Context, peer_id: str, data_dir: str | None, node_id: str | None) -> None:
    """Give an MCP client (over this process's stdio) the tools of peer PEER_ID, through the local
    node running on this machine (found by its data dir): the node opens an MCP session with the
    peer over libp2p (/ipfs-accelerate/mcp/1.0.0) and this command carries it. Members of the
    network only; the peer offers its read-only tools."""
    from mcp_server.commands.p2p_cmds import _node_data_dir

    flags: dict[str, Any] = {"data_dir": data_dir, "node_id": node_id}
    from mcp_server.cli import cli_settings

    _node_data_dir(flags, cli_settings(ctx).data_path)
    settings = cli_settings(ctx, **flags)
    tunnel(settings.data_path, peer_id)


def tunnel(data_dir: Any, peer_id: str) -> NoReturn:
    """Carry stdin/stdout through the local node's control socket to ``peer_id``'s MCP (see
    p2p.control). CliError when the session could not begin; once it has, the process ends with
    ``os._exit`` when it does (a thread may still block reading stdin, which a normal exit would
    wait on): 0 when the agent closed stdin first, 1 when the node or peer ended the session."""
    import os
    import socket
    import threading

    from p2p.control import DIAL_S, SOCKET_NAME, socket_path

    path = socket_path(data_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        raise CliError(f"no node is running on {data_dir} (no {SOCKET_NAME}); start one with `ipfs-accelerate p2p start`, "
                       "or name it with --data-dir / --node-id") from None
    sock.settimeout(DIAL_S + 30)  # the node answers within its own dial limit
    try:
        sock.sendall(json.dumps({"cmd": "mcp", "peer": peer_id}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise CliError("the node closed the connection without an answer")
            buf += chunk
    except socket.timeout:
        raise CliError(f"the node gave no answer within {DIAL_S + 30:g} s") from None
    sock.settimeout(None)
    line, rest = buf.split(b"\n", 1)
    reply = json.loads(line)
    if not reply.get("ok"):
        sock.close()
        raise CliError(reply.get("error", "the node refused"))
    stdin_closed = threading.Event()

    def upstream() -> None:
        try:
            while chunk := os.read(0, 65536):  # the fd, not sys.stdin: nothing to lock at exit
                sock.sendall(chunk)
        except OSError:
            pass
        stdin_closed.set()
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, name="mcp-connect-stdin", daemon=True).start()
    try:
        data = rest
        while True:
            if data:
                _write_all(data)
            data = sock.recv(65536)
            if not data:
                break
    except OSError:
        pass
    os._exit(0 if stdin_closed.is_set() else 1)


def _write_all(data: bytes) -> None:
    import os

    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def connect_help(settings: Any, node: Any, urls: list[str]) -> str:
    exe = shutil.which("ipfs-accelerate") or sys.argv[0]
    stdio_cfg = {
        "mcpServers": {
            "ipfs-accelerate": {
                "command": exe,
                "args": ["mcp", "serve", "--transport", "stdio", "--data-dir", str(settings.data_path) + "-stdio"],
            }
        }
    }
    psk = node.config.network.psk_file if node.config.network.enabled else ""
    if psk:  # the stdio node has its own data dir; this key puts it in this node's network
        stdio_cfg["mcpServers"]["ipfs-accelerate"]["args"] += ["--psk-file", str(psk)]
    elif node.config.network.enabled:
        stdio_cfg["mcpServers"]["ipfs-accelerate"]["args"] += ["--open"]
    lines = [
        f"ipfs-accelerate node {node.config.node_name} ({node.peer_id})",
        "",
        f"MCP ({'streamable HTTP' if urls[0].endswith('/mcp') else 'SSE'}): {urls[0]}",
    ]
    if node.listen_addrs():
        lines += ["", "libp2p addresses:"] + [f"  {a}" for a in node.listen_addrs()]
    net_lines = network_lines(settings, node)
    if net_lines:
        lines += [""] + net_lines
    lines += [
        "",
        "Claude Desktop / IDE config for a stdio server (its own data dir: one node per data dir):",
        json.dumps(stdio_cfg, indent=2),
        "",
        "MCP Inspector:",
        f"  npx @modelcontextprotocol/inspector --cli {urls[0]} --transport {'http' if urls[0].endswith('/mcp') else 'sse'} --method tools/list",
        "",
        "Ctrl-C stops the node.",
    ]
    return "\n".join(lines)


COMMANDS = [mcp_group]
