"""Errors the node reports to its callers (tools, CLI): one clear line the caller can act on."""


class NodeError(ValueError):
    """Bad input or an impossible request; nothing was written."""
