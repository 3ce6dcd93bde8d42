"""All settings, layered: configs/default.toml < --config FILE < IPFS_ACCELERATE_* < flags.

Each layer's section is its own pydantic model (inference.config, p2p.config); this module only
composes and loads them. It lives in ``p2p`` (not the MCP server) because the node's own entry
points — the CLI's ``p2p`` commands and the seed's ``P2PWorkflowScheduler`` — load the same
layers; the ``logging`` and ``mcp`` sections are plain schemas of the same file. Nested keys come from the environment with a double underscore, e.g.
``IPFS_ACCELERATE_INFERENCE__MAX_BATCH=64``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from inference.config import InferenceConfig
from p2p.config import (CacheConfig, ClockConfig, NetworkConfig, NodeConfig, ResultsConfig, SchedulerConfig,
                        constraint_violations)

DEFAULT_TOML = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


class LoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class McpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    transport: Literal["stdio", "http", "sse"] = "stdio"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    auth_token: str = ""
    allowed_hosts: list[str] = Field(default_factory=list)
    status_page_size: int = Field(100, ge=1)
    # Serve this node's read-only MCP tools to peers over /ipfs-accelerate/mcp/1.0.0
    # (`ipfs-accelerate mcp connect PEER_ID`); members only.
    serve_peers: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IPFS_ACCELERATE_", env_nested_delimiter="__", extra="forbid")

    data_dir: str = "~/.local/share/ipfs-accelerate"
    node_id: str = ""
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    mcp: McpConfig = Field(default_factory=McpConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def node_name(self) -> str:
        return self.node_id or socket.gethostname()

    def node_config(self) -> NodeConfig:
        return NodeConfig(
            data_dir=self.data_path,
            node_name=self.node_name,
            inference=self.inference,
            clock=self.clock,
            scheduler=self.scheduler,
            network=self.network,
            cache=self.cache,
            results=self.results,
        )


class SettingsError(ValueError):
    """A settings file or value is wrong; the message says which and why."""


def load_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """Load the layered settings; ``flags`` are nested dicts of values given on the command line."""
    files: list[Path] = [DEFAULT_TOML] if DEFAULT_TOML.exists() else []
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise SettingsError(f"config file not found: {path}")
        files.append(path)

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            tomls = tuple(TomlConfigSettingsSource(settings_cls, toml_file=f) for f in reversed(files))
            return (init_settings, env_settings, *tomls)

    try:
        settings = Settings.model_validate(_Layered(**_drop_none(flags)).model_dump())
        for key, why in constraint_violations(settings):  # the one place constraints live
            raise SettingsError(f"invalid settings: {key} {why}")
        return settings
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None
    except Exception as exc:  # a TOML syntax error in a user file
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"cannot read settings: {exc}") from None


def named_node_data_dir(base: str | Path, node_id: str) -> Path:
    """The data dir of the node named ``node_id`` when no data dir is given: ``<base>/nodes/<id>``.

    The one rule for it, shared by ``p2p start|join|info --node-id`` and the seed's
    ``P2PWorkflowScheduler(node_id=...)``: one name, one data dir, so one identity. The name is a
    single path component, so ``--node-id ../x`` cannot point outside ``<base>/nodes``.
    """
    if not node_id or node_id in (".", "..") or "/" in node_id or "\\" in node_id or "\0" in node_id:
        raise SettingsError(f"node_id must be a plain name (no '/', not '.' or '..'), got {node_id!r}")
    return Path(base).expanduser() / "nodes" / node_id


def load_node_settings(config_file: str | Path | None = None, **flags: Any) -> Settings:
    """``load_settings`` for a node started by name: a ``node_id`` flag without a ``data_dir`` flag
    puts the node in ``named_node_data_dir(<data_dir setting>, node_id)``, as ``p2p start`` does.
    The network key is resolved as on the command line (:func:`apply_network_key`)."""
    settings = load_settings(config_file, **flags)
    if flags.get("data_dir") is None and flags.get("node_id"):
        settings = settings.model_copy(update={"data_dir": str(named_node_data_dir(settings.data_path, flags["node_id"]))})
    return apply_network_key(settings)


# --- the network key: private by default ---------------------------------------------------------

NETWORK_KEY_FILE = "swarm.key"


def network_key_path(settings: Settings) -> Path:
    """The key file this node runs with: ``network.psk_file`` when set, else the data dir's own."""
    net = settings.network
    return Path(net.psk_file).expanduser() if net.psk_file else settings.data_path / NETWORK_KEY_FILE


def apply_network_key(settings: Settings, invite: Any = None) -> Settings:
    """Decide which swarm key the node starts with; return settings whose ``network.psk_file``
    names it (and whose bootstrap list holds the invite's addresses).

    Why here, before the node starts, and not in the node: the node only loads the file it is
    given; every entry point that starts one (``p2p start``, ``mcp serve``, the seed's
    ``P2PWorkflowScheduler``) comes through here, so "private by default" holds for all of them,
    and every refusal happens before anything is written.

    - ``network.enabled`` false: nothing to protect, nothing created (an invite is an error).
    - ``network.open``: no key (with ``psk_file`` or an invite it is an error: they contradict).
    - ``network.psk_file`` set: that file wins; it must parse, and an invite must carry the same
      key (a different one is an error: which of the two networks was meant is not ours to guess).
    - otherwise ``<data_dir>/swarm.key``: created (random, 0600) on the first start; an invite
      writes its key there, moving a different old key aside to ``swarm.key.old-<time>``.
    ``invite`` is a :class:`p2p.net.psk.Invite`; its network name must match ``network.network``.
    """
    from p2p.net.errors import PskError
    from p2p.net.psk import key_fingerprint, load_or_create_swarm_key, load_swarm_key, reachable_first, store_swarm_key

    net = settings.network
    if invite is not None:
        if net.open:
            raise SettingsError("--join and --open contradict each other: an invite joins a private network; "
                                "drop one of them (nothing was changed)")
        if not net.enabled:
            raise SettingsError("--join needs the network on (drop --no-network / network.enabled = false)")
        if invite.network != net.network:
            raise SettingsError(f"the invite is for network {invite.network!r} but this node is set to network "
                                f"{net.network!r}: set network.network (IPFS_ACCELERATE_NETWORK__NETWORK="
                                f"{invite.network}) to join it")
    if not net.enabled:
        return settings
    log = structlog.get_logger("p2p.settings")
    if net.open:
        if net.psk_file:
            raise SettingsError("network.open contradicts network.psk_file (--open with --psk-file): "
                                "an open network has no key; drop one of them")
        log.warning("open network (network.open): no key, anyone who can reach this node may join")
        return settings
    if net.psk_file:
        try:
            key = load_swarm_key(net.psk_file)
        except PskError as exc:
            raise SettingsError(str(exc)) from None
        if invite is not None and invite.key != key:
            raise SettingsError(f"the invite's network key ({invite.fingerprint}) differs from the key in "
                                f"{net.psk_file} ({key_fingerprint(key)}): drop --psk-file to join with the "
                                "invite's key, or drop --join to keep yours (nothing was changed)")
        path = Path(net.psk_file).expanduser()
    else:
        path = settings.data_path / NETWORK_KEY_FILE
        try:
            if invite is not None:
                if path.exists():
                    load_swarm_key(path)  # a corrupt key file is reported, not overwritten
                replaced = store_swarm_key(path, invite.key)
                if replaced is not None:
                    log.warning("network key replaced by the invite's; the old one is kept",
                                path=str(path), old_key=str(replaced), fingerprint=invite.fingerprint)
                key = invite.key
            else:
                key, created = load_or_create_swarm_key(path)
                if created:
                    log.info("network key created: this node runs a private network; "
                             "`ipfs-accelerate p2p invite` prints a line that lets another peer join",
                             path=str(path), fingerprint=key_fingerprint(key))
        except PskError as exc:
            raise SettingsError(str(exc)) from None
        except OSError as exc:
            raise SettingsError(f"cannot write the network key {path}: {exc}") from None
    update: dict[str, Any] = {"psk_file": str(path)}
    if invite is not None:
        update["bootstrap"] = list(dict.fromkeys([*net.bootstrap, *reachable_first(invite.addrs)[:1]]))
    return settings.model_copy(update={"network": net.model_copy(update=update)})


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None and v != ():
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
