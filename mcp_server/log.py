"""structlog to stderr only: stdout belongs to the MCP stdio transport."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    lvl = _LEVELS[level]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging; send it to stderr too, and keep py-libp2p's noisy
    # shutdown errors (identify stream failures) below the user's level unless debugging.
    root = logging.getLogger()
    root.handlers[:] = [logging.StreamHandler(sys.stderr)]
    root.setLevel(lvl)
    noisy = logging.DEBUG if lvl == logging.DEBUG else logging.CRITICAL
    for name in ("libp2p", "multiaddr", "async_service", "hypercorn.error"):
        logging.getLogger(name).setLevel(max(noisy, lvl) if lvl == logging.DEBUG else noisy)
    for name in ("httpx", "httpcore", "mcp"):
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))
