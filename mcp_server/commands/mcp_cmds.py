"""`ipfs-accelerate mcp serve`: the node with its MCP tools over stdio, HTTP or SSE."""

from __future__ import annotations

import json
import shutil
from functools import partial
import sys
from typing import Any

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
