"""Keeping a bootstrap peer connected: dial at start, redial with capped exponential backoff.

py-libp2p has no persistent-peer notion (its AutoConnector is stopped by ``open_host``, see
there), so one :func:`keep_connected` task per bootstrap address runs in the host's nursery.
A peer that restarts on the same address with the same key is back within one backoff step.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import structlog
import trio

from p2p.net.addrs import peer_id_of
from p2p.net.errors import DialError, PeerNotAllowedError

if TYPE_CHECKING:
    from p2p.net.host import NetHost

log = structlog.get_logger(__name__)

REDIAL_INITIAL_S = 0.25
STABLE_CONNECTION_S = 5.0  # a connection that lived this long resets the backoff


def _jitter(delay: float) -> float:
    """+-20 %, so peers that lost the same bootstrap node do not redial in lockstep."""
    return delay * random.uniform(0.8, 1.2)


async def keep_connected(net: NetHost, addr: str, max_backoff_s: float) -> None:
    """Hold a connection to ``addr`` (must end in /p2p/<id>) until cancelled."""
    peer = peer_id_of(addr)
    backoff = REDIAL_INITIAL_S
    while True:
        if not net.is_connected(peer):
            try:
                await net.connect(addr)
                log.info("bootstrap peer connected", peer=peer)
            except PeerNotAllowedError:
                log.warning("bootstrap peer is not in allow_peers; not dialling", addr=addr)
                return
            except DialError as exc:
                delay = _jitter(min(backoff, max_backoff_s))
                log.info("bootstrap dial failed", addr=addr, error=str(exc), retry_in_s=round(delay, 2))
                await trio.sleep(delay)
                backoff = min(backoff * 2, max_backoff_s)
                continue
        since = net.connected_since(peer) or time.monotonic()
        await net.wait_disconnected(peer)
        if time.monotonic() - since >= STABLE_CONNECTION_S:
            backoff = REDIAL_INITIAL_S
        else:  # it keeps dropping us: don't hammer it
            await trio.sleep(_jitter(min(backoff, max_backoff_s)))
            backoff = min(backoff * 2, max_backoff_s)
        log.info("bootstrap peer lost; redialling", peer=peer)
