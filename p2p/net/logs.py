"""Keep py-libp2p's stdlib logging quiet.

Without ``LIBP2P_DEBUG``, py-libp2p sets its ``libp2p`` logger to WARNING with
``propagate=False`` and no handler, so its records fall through to ``logging.lastResort`` and
appear on stderr unformatted -- including ERROR lines on every normal shutdown (identify
streams, pubsub readers) and WARNINGs for things we handle ourselves (dropped gossip under
spam protection). We raise those loggers to CRITICAL unless the user is debugging libp2p.
"""

from __future__ import annotations

import logging
import os

import libp2p

NOISY_LOGGERS = ("libp2p", "async_service", "multiaddr", "zeroconf")
_LIBP2P_DIR = os.path.dirname(libp2p.__file__)


class _DropLibp2pRootRecords(logging.Filter):
    """Drops records py-libp2p logs through the *root* logger (``logging.warning(...)`` calls in
    swarm_connection.py), which no named-logger level can reach."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(_LIBP2P_DIR)


def quiet_library_logs(level: int = logging.CRITICAL) -> None:
    """Raise the library loggers to ``level``; no-op when LIBP2P_DEBUG asks for their output."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        # DEBUG/INFO set by someone on purpose (e.g. ``--log-level debug``) is left alone.
        if logger.level in (logging.NOTSET, logging.WARNING, logging.ERROR):
            logger.setLevel(level)
    root = logging.getLogger()
    if not any(isinstance(f, _DropLibp2pRootRecords) for f in root.filters):
        root.addFilter(_DropLibp2pRootRecords())
