"""`ipfs-accelerate p2p start|join|info`: run a peer in the foreground, or drive a running one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mcp_server.cli import CliError, cli_settings
from mcp_server.commands.network_flags import network_lines, node_flags, node_options, node_settings, parse_invite


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

    join = kw.pop("join", None)
    flags = node_flags(kw)
    base = cli_settings(ctx).data_path
    _node_data_dir(flags, base)
    settings = node_settings(ctx, flags, join)

    def ready(node: Any, urls: list[str]) -> None:
        click.echo(f"peer id: {node.peer_id}")
        click.echo(f"node:    {node.config.node_name}  (data dir {node.config.data_dir})")
        addrs = node.listen_addrs()
        if addrs:
            click.echo("listening on:")
            for a in addrs:
                click.echo(f"  {a}")
        lines = network_lines(settings, node)
        for line in lines:
            click.echo(line)
        if addrs and lines and lines[0].startswith("network: OPEN"):
            click.echo(f"join from another peer:  ipfs-accelerate p2p start --open --node-id other --bootstrap {addrs[0]}")
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
@click.argument("invite", required=False, metavar="[INVITE]")
@click.option("--bootstrap", "bootstrap", multiple=True, help="Multiaddr of a peer to dial (repeatable).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data dir of the running node.")
@click.option("--node-id", help="Name the node was started with (finds its data dir).")
@click.option("--psk-file", type=click.Path(dir_okay=False), help="The key file the node was started with, if not its data dir's.")
@click.pass_context
def join(ctx: click.Context, invite: str | None, bootstrap: tuple[str, ...], data_dir: str | None, node_id: str | None,
         psk_file: str | None) -> None:
    """Make the running local node (found through its data dir) dial the peer of an INVITE, or
    each --bootstrap address. A running node cannot change its network key: an invite with
    another key is refused (stop the node and use `p2p start --join INVITE`)."""
    from p2p.control import call
    from p2p.errors import NodeError

    if not invite and not bootstrap:
        raise CliError("give an INVITE (from `ipfs-accelerate p2p invite`) or --bootstrap MULTIADDR")
    inv = parse_invite(invite) if invite else None
    flags: dict[str, Any] = {"data_dir": data_dir, "node_id": node_id, "network.psk_file": psk_file}
    _node_data_dir(flags, cli_settings(ctx).data_path)
    settings = cli_settings(ctx, **flags)
    tries: list[str] = []
    if inv is not None:
        _check_running_key(settings, inv)
        from p2p.net.psk import reachable_first

        tries = reachable_first(inv.addrs)
    for addr in bootstrap:
        try:
            reply = call(settings.data_path, {"cmd": "connect", "multiaddr": addr})
        except NodeError as exc:
            raise CliError(str(exc)) from None
        if not reply.get("ok"):
            raise CliError(reply.get("error", "the node refused"))
        click.echo(f"connected to {reply['peer_id']}")
    errors: list[str] = []
    for addr in tries:  # the invite's addresses: the first that connects is enough
        try:
            reply = call(settings.data_path, {"cmd": "connect", "multiaddr": addr})
        except NodeError as exc:
            raise CliError(str(exc)) from None
        if reply.get("ok"):
            click.echo(f"connected to {reply['peer_id']} (network {inv.network if inv else ''}, key {inv.fingerprint if inv else ''})")
            return
        errors.append(f"{addr}: {reply.get('error', 'refused')}")
    if errors:
        raise CliError("could not reach the invite's peer at any of its addresses: " + "; ".join(errors))


def _check_running_key(settings: Any, inv: Any) -> None:
    """Refuse an invite whose key or network differs from the running node's (it cannot change them)."""
    from p2p.net.errors import PskError
    from p2p.net.psk import key_fingerprint, load_swarm_key
    from p2p.settings import network_key_path

    if inv.network != settings.network.network:
        raise CliError(f"the invite is for network {inv.network!r} but this node runs network {settings.network.network!r}")
    path = network_key_path(settings)
    if not path.exists():
        raise CliError(f"this node has no network key at {path} (an open network, or started with another --psk-file: "
                       "give it here too); to join the invite's network, stop the node and start it with "
                       "`ipfs-accelerate p2p start --join INVITE`")
    try:
        key = load_swarm_key(path)
    except PskError as exc:
        raise CliError(str(exc)) from None
    if key != inv.key:
        raise CliError(f"the invite's network key ({inv.fingerprint}) differs from this node's ({key_fingerprint(key)}, "
                       f"{path}): a running node cannot change its key. Stop it and start it with "
                       "`ipfs-accelerate p2p start --join INVITE` (its old key is kept beside the new one)")


@p2p_group.command("invite")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data dir of the node (running or not).")
@click.option("--node-id", help="Name the node was started with (finds its data dir).")
@click.option("--psk-file", type=click.Path(dir_okay=False), help="The key file the node runs with, if not its data dir's.")
@click.option("--addr", "addrs", multiple=True,
              help="Address to put in the invite instead of the node's own (repeatable), e.g. a public one behind NAT.")
@click.pass_context
def invite(ctx: click.Context, data_dir: str | None, node_id: str | None, psk_file: str | None, addrs: tuple[str, ...]) -> None:
    """Print one line that lets another machine join this node's network:
    `ipfs-accelerate p2p start --join LINE`. It holds the network key: send it privately.

    The key comes from the data dir (or --psk-file). The addresses come from the running node
    when there is one (the ports it really listens on), else from network.listen (which then
    needs a fixed port). Nothing is created or changed."""
    from p2p.control import call
    from p2p.errors import NodeError
    from p2p.identity import Identity, IdentityError
    from p2p.net.errors import NetError
    from p2p.net.psk import encode_invite, key_fingerprint, load_swarm_key
    from p2p.settings import network_key_path

    flags: dict[str, Any] = {"data_dir": data_dir, "node_id": node_id, "network.psk_file": psk_file}
    _node_data_dir(flags, cli_settings(ctx).data_path)
    settings = cli_settings(ctx, **flags)
    net = settings.network
    if net.open:
        raise CliError("this node runs an open network (network.open): there is no key to invite with; "
                       "start it without --open and it creates one")
    path = network_key_path(settings)
    if not path.exists():
        raise CliError(f"no network key at {path}: start the node once (it creates one), or give --psk-file")
    try:
        key = load_swarm_key(path)
    except NetError as exc:
        raise CliError(str(exc)) from None

    peer_id, found, source = "", [], ""
    try:
        reply = call(settings.data_path, {"cmd": "info"}, timeout=10)
        info = reply.get("info") or {}
        peer_id, found, source = str(info.get("peer_id", "")), list(info.get("addrs") or []), "the running node"
    except (NodeError, OSError, ValueError):
        try:
            ident = Identity.load_existing(settings.data_path)
        except IdentityError as exc:
            raise CliError(str(exc)) from None
        if ident is None:
            raise CliError(f"no identity in {settings.data_path}: start the node once first")
        peer_id, found, source = ident.peer_id_str, _configured_addrs(net.listen, ident.peer_id_str), "network.listen"
    if addrs:
        found, source = [a if "/p2p/" in a else f"{a.rstrip('/')}/p2p/{peer_id}" for a in addrs], "--addr"
    if not found:
        raise CliError("no address to put in the invite: the node is not running and network.listen has no fixed "
                       "port (tcp/0), or its network is off; start the node, or give --addr MULTIADDR")
    try:
        line = encode_invite(key, net.network, found)
    except NetError as exc:
        raise CliError(f"cannot make an invite from {source}: {exc}") from None
    click.echo(f"invite for network {net.network!r} (key {key_fingerprint(key)}), peer {peer_id}, "
               f"{len(found)} address(es) from {source}; it admits whoever holds it: send it privately", err=True)
    click.echo(line)


def _configured_addrs(listen: list[str], peer_id: str) -> list[str]:
    """Dialable addresses of ``network.listen`` (wildcards expanded; port 0 is unknowable, skipped)."""
    from p2p.net.addrs import expand_wildcard, is_loopback, parse_multiaddr

    out: list[str] = []
    for text in listen:
        try:
            ma = parse_multiaddr(text)
        except Exception:  # noqa: BLE001 - the node would refuse it too; the invite just skips it
            continue
        for concrete in expand_wildcard(ma):
            s = str(concrete)
            parts = s.split("/")
            if any(p in ("tcp", "udp") and i + 1 < len(parts) and parts[i + 1] == "0" for i, p in enumerate(parts)):
                continue
            full = f"{s}/p2p/{peer_id}"
            if full not in out:
                out.append(full)
    out.sort(key=is_loopback)
    return out


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
