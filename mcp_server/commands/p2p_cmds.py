"""`ipfs-accelerate p2p start|join|info`: run a peer in the foreground, or drive a running one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mcp_server.cli import CliError, cli_settings
from mcp_server.commands.network_flags import node_flags, node_options


@click.group("p2p")
def p2p_group() -> None:
    """Run or drive a peer of the network."""


def _node_data_dir(flags: dict[str, Any], base: Path) -> None:
    """`--node-id NAME` without `--data-dir` gets its own data dir, so several nodes can share a
    machine; the rule is `settings.named_node_data_dir`, which the seed's Python API uses too."""
    from mcp_server.settings import SettingsError, named_node_data_dir

    if flags.get("data_dir") is None and flags.get("node_id"):
        try:
            flags["data_dir"] = str(named_node_data_dir(base, flags["node_id"]))
        except SettingsError as exc:
            raise CliError(str(exc)) from None


@p2p_group.command("start")
@click.option("--mcp-port", type=int, default=None, help="Also serve MCP streamable HTTP at http://127.0.0.1:N/mcp.")
@node_options
@click.pass_context
def start(ctx: click.Context, mcp_port: int | None, **kw: Any) -> None:
    """Run a peer in the foreground; prints its peer id and multiaddrs. Ctrl-C stops it."""
    import trio

    from mcp_server.transports import ServeError, serve_node

    flags = node_flags(kw)
    base = cli_settings(ctx).data_path
    _node_data_dir(flags, base)
    settings = cli_settings(ctx, **flags)

    def ready(node: Any, urls: list[str]) -> None:
        click.echo(f"peer id: {node.peer_id}")
        click.echo(f"node:    {node.config.node_name}  (data dir {node.config.data_dir})")
        addrs = node.listen_addrs()
        if addrs:
            click.echo("listening on:")
            for a in addrs:
                click.echo(f"  {a}")
            click.echo(f"join from another peer:  ipfs-accelerate p2p start --node-id other --bootstrap {addrs[0]}")
        for u in urls:
            click.echo(f"MCP (streamable HTTP): {u}")

    from functools import partial

    try:
        trio.run(partial(serve_node, settings, "http" if mcp_port is not None else None, "127.0.0.1", mcp_port or 0, on_ready=ready))
    except ServeError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - e.g. a bad multiaddr, an unreadable swarm key
        from p2p.errors import NodeError
        from p2p.net import NetError

        if isinstance(exc, (NodeError, NetError, OSError)):
            raise CliError(str(exc)) from None
        raise


@p2p_group.command("join")
@click.option("--bootstrap", "bootstrap", multiple=True, required=True, help="Multiaddr of the peer to dial (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data dir of the running node.")
@click.option("--node-id", help="Name the node was started with (finds its data dir).")
@click.pass_context
def join(ctx: click.Context, bootstrap: tuple[str, ...], data_dir: str | None, node_id: str | None) -> None:
    """Make the running local node (found through its data dir) dial a peer."""
    from p2p.control import call
    from p2p.errors import NodeError

    flags: dict[str, Any] = {"data_dir": data_dir, "node_id": node_id}
    _node_data_dir(flags, cli_settings(ctx).data_path)
    settings = cli_settings(ctx, **flags)
    for addr in bootstrap:
        try:
            reply = call(settings.data_path, {"cmd": "connect", "multiaddr": addr})
        except NodeError as exc:
            raise CliError(str(exc)) from None
        if not reply.get("ok"):
            raise CliError(reply.get("error", "the node refused"))
        click.echo(f"connected to {reply['peer_id']}")


@p2p_group.command("info")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data dir of the running node.")
@click.option("--node-id", help="Name the node was started with (finds its data dir).")
@click.pass_context
def info(ctx: click.Context, data_dir: str | None, node_id: str | None) -> None:
    """Print the running local node's info (peer id, addrs, clock) as JSON."""
    from p2p.control import call
    from p2p.errors import NodeError

    flags: dict[str, Any] = {"data_dir": data_dir, "node_id": node_id}
    _node_data_dir(flags, cli_settings(ctx).data_path)
    settings = cli_settings(ctx, **flags)
    try:
        reply = call(settings.data_path, {"cmd": "info"})
    except NodeError as exc:
        raise CliError(str(exc)) from None
    click.echo(json.dumps(reply.get("info", reply), indent=2))


COMMANDS = [p2p_group]
