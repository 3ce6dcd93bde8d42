"""Flags shared by every command that starts a node (`mcp serve`, `p2p start`)."""

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
        click.option("--psk-file", type=click.Path(dir_okay=False), help="libp2p swarm key: only peers with the same key connect."),
        click.option("--mdns/--no-mdns", default=None, help="Find peers on the LAN with mDNS (default on)."),
        click.option("--network/--no-network", "network_enabled", default=None, help="Run the libp2p node (default on)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def node_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """Pop the node flags from a command's kwargs as dotted settings keys."""
    return {
        "data_dir": kw.pop("data_dir", None),
        "node_id": kw.pop("node_id", None),
        "network.listen": kw.pop("listen", None) or None,
        "network.bootstrap": kw.pop("bootstrap", None) or None,
        "network.psk_file": kw.pop("psk_file", None),
        "network.mdns": kw.pop("mdns", None),
        "network.enabled": kw.pop("network_enabled", None),
    }
