"""The layered settings (configs/default.toml < --config < IPFS_ACCELERATE_* < flags).

They live in :mod:`p2p.settings`, shared with the seed's Python API; this module re-exports
them for the MCP server and the CLI.
"""

from p2p.settings import (
    DEFAULT_TOML,
    LoggingConfig,
    McpConfig,
    Settings,
    SettingsError,
    load_node_settings,
    load_settings,
    named_node_data_dir,
)

__all__ = [
    "DEFAULT_TOML",
    "LoggingConfig",
    "McpConfig",
    "Settings",
    "SettingsError",
    "load_node_settings",
    "load_settings",
    "named_node_data_dir",
]
