"""The `ipfs-accelerate` command. Heavy modules are imported inside commands so --help is fast."""

from __future__ import annotations

import sys
from typing import Any

import click



class CliError(click.ClickException):
    """A one-line error and exit status 1; never a traceback."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def node_call(main: Any, url: str, timeout_s: float, too_slow: str) -> Any:
    """Run ``main`` (an async MCP client session against the node at ``url``) in a one-shot trio
    loop and return its tool result's structured content; every failure is one CliError line:
    ``too_slow`` past the timeout, the node unreachable, or the tool's own error."""
    import trio

    try:
        res = trio.run(main)
    except trio.TooSlowError:
        raise CliError(f"{too_slow} within {timeout_s:g} s") from None
    except Exception as exc:  # noqa: BLE001 - a node that is not running, a refused connection...
        raise CliError(f"cannot reach the node at {url}: {type(exc).__name__}: {exc} (is `ipfs-accelerate p2p start` running?)") from None
    if res.is_error:
        raise CliError("; ".join(getattr(c, "text", str(c)) for c in res.content))
    return dict(res.structured_content or {})


def cli_settings(ctx: click.Context, **flags: Any) -> Any:
    from mcp_server.settings import SettingsError, load_settings

    root = ctx.find_root().obj
    merged = {"logging": {"level": root.get("log_level"), "format": root.get("log_format")}}
    for key, value in flags.items():
        node = merged
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        settings = load_settings(root.get("config"), **merged)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    from mcp_server.log import configure_logging

    configure_logging(settings.logging.level, settings.logging.format)
    return settings


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ipfs-accelerate")
    except PackageNotFoundError:
        return "0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="Settings file (TOML) over configs/default.toml.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None, help="Log level (stderr).")
@click.option("--log-format", type=click.Choice(["console", "json"]), default=None, help="Log format (stderr).")
@click.version_option(package_name="ipfs-accelerate", message="ipfs-accelerate %(version)s")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str | None, log_format: str | None) -> None:
    """ipfs-accelerate: a peer-to-peer inference network driven by MCP tools."""
    ctx.obj = {"config": config, "log_level": log_level, "log_format": log_format}



def _register() -> None:
    """Attach the subcommands; their modules import nothing heavy at import time."""
    import importlib
    import pkgutil

    from mcp_server import commands

    for mod in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"mcp_server.commands.{mod.name}")
        for cmd in getattr(module, "COMMANDS", ()):
            main.add_command(cmd)


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
