"""Flags shared by every command that starts a node (`mcp serve`, `p2p start`), and the one place
that turns them into the settings a node starts with (network key and invite included)."""

from __future__ import annotations

from typing import Any, Callable

import click

COMMANDS: list[click.Command] = []


def node_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the node flags; they map onto settings keys."""
    opts = [
        click.option("--data-dir", type=click.Path(file_okay=False), help="Data directory (key, clock, model cache); created if missing."),
        click.option("--node-id", help="Human-readable node name shown to peers."),
        click.option("--listen", multiple=True, help="Multiaddr to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4001."),
        click.option("--bootstrap", multiple=True, help="Peer multiaddr to dial at start and keep (repeatable)."),
        click.option("--join", "join", metavar="INVITE", default=None,
                     help="Join the network of an invite (`p2p invite` prints one): store its key in the data dir and dial its peer."),
        click.option("--psk-file", type=click.Path(dir_okay=False),
                     help="libp2p swarm key file; wins over the data dir's own key (<data dir>/swarm.key)."),
        click.option("--open", "open_network", is_flag=True, default=None,
                     help="Run an open network with no key: anyone who can reach this node may join."),
        click.option("--mdns/--no-mdns", default=None, help="Find peers on the LAN with mDNS (default on)."),
        click.option("--network/--no-network", "network_enabled", default=None, help="Run the libp2p node (default on)."),
        click.option("--dht", type=click.Choice(["auto", "server", "client", "off"]), default=None,
                     help="Kademlia DHT mode: server on bootstrap nodes; auto serves on a public address (default)."),
        click.option("--relay-service", is_flag=True, default=None,
                     help="Serve as a circuit relay for members behind NAT (run it on a reachable node)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def node_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the node flags from a command's kwargs as dotted settings keys (``--join`` stays in
    ``kw``: it is not a setting; :func:`node_settings` takes it)."""
    return {
        "data_dir": kw.pop("data_dir", None),
        "node_id": kw.pop("node_id", None),
        "network.listen": kw.pop("listen", None) or None,
        "network.bootstrap": kw.pop("bootstrap", None) or None,
        "network.psk_file": kw.pop("psk_file", None),
        "network.open": kw.pop("open_network", None),
        "network.mdns": kw.pop("mdns", None),
        "network.enabled": kw.pop("network_enabled", None),
        "network.dht": kw.pop("dht", None),
        "network.relay_service": kw.pop("relay_service", None),
    }


def node_settings(ctx: click.Context, flags: dict[str, Any], join: str | None, **more: Any) -> Any:
    """The settings a node starts with: the layered settings, then the network key decided by
    :func:`p2p.settings.apply_network_key` (created on the first start, or taken from ``--join``).
    Every refusal (a malformed invite, ``--join`` with ``--open``, another key in ``--psk-file``)
    is a one-line error raised before anything is written."""
    from mcp_server.cli import CliError, cli_settings

    if join is not None and flags.get("network.open"):
        raise CliError("--join and --open contradict each other: an invite joins a private network; drop one of them")
    invite = parse_invite(join) if join is not None else None
    settings = cli_settings(ctx, **flags, **more)
    from p2p.settings import SettingsError, apply_network_key

    try:
        return apply_network_key(settings, invite)
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def parse_invite(text: str) -> Any:
    """An :class:`p2p.net.psk.Invite`, or a one-line CliError saying what is wrong with ``text``."""
    from mcp_server.cli import CliError
    from p2p.net.psk import InviteError, decode_invite

    try:
        return decode_invite(text)
    except InviteError as exc:
        raise CliError(f"bad invite: {exc}") from None


def network_lines(settings: Any, node: Any) -> list[str]:
    """What a started node says about its network key, and how to invite another peer."""
    from p2p.settings import NETWORK_KEY_FILE

    net = node.config.network
    if not net.enabled:
        return []
    if not net.psk_file:
        return ["network: OPEN (no key): anyone who can reach this node may join"]
    from p2p.net.psk import key_fingerprint, load_swarm_key

    try:
        fp = key_fingerprint(load_swarm_key(net.psk_file))
    except Exception:  # noqa: BLE001 - the node already loaded it; a vanished file only loses the line
        fp = "?"
    cmd = f"ipfs-accelerate p2p invite --data-dir {node.config.data_dir}"
    from pathlib import Path

    if Path(net.psk_file) != Path(node.config.data_dir) / NETWORK_KEY_FILE:
        cmd += f" --psk-file {net.psk_file}"
    return [f"network: private (key {fp} in {net.psk_file})", f"invite a peer:  {cmd}"]
