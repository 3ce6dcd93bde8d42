"""Keeping a peer connected: dial at start, redial with capped exponential backoff.

py-libp2p has no persistent-peer notion (its AutoConnector is stopped by ``open_host``, see
there), so one :func:`keep_connected` task per kept peer (bootstrap addresses, peers joined by
hand) runs in the host's nursery. A peer that restarts on the same address with the same key is
back within one backoff step. A peer kept by hand that stays unreachable for
``give_up_after_s`` is given up (a typo or a peer gone for good must not cost a task and a dial
forever); bootstrap peers are redialled for the host's life.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import trio

from p2p.net.addrs import peer_id_of
from p2p.net.errors import DialError, PeerNotAllowedError



class Redialer(Protocol):
    """What keeping a peer connected needs of the host (NetHost); a protocol, so this module
    and the host don't import each other."""

    def is_connected(self, peer_id: str) -> bool: ...

    async def connect(self, multiaddr: str) -> str: ...

    def connected_since(self, peer_id: str) -> float | None: ...

    async def wait_disconnected(self, peer_id: str) -> None: ...

log = structlog.get_logger(__name__)

REDIAL_INITIAL_S = 0.25
STABLE_CONNECTION_S = 5.0  # a connection that lived this long resets the backoff
KEPT_GIVE_UP_S = 600.0  # a hand-kept peer unreachable this long is no longer redialled


@dataclass
class KeptPeer:
    """One kept peer: its current address (a newer one replaces it) and whether to give up.

    Why a mutable record: ``NetHost.keep`` dedupes per peer, so a second address for a kept
    peer updates the running task's target instead of starting another task."""

    addr: str
    bootstrap: bool
    give_up_after_s: float = KEPT_GIVE_UP_S
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def peer(self) -> str:
        return peer_id_of(self.addr)


def _jitter(delay: float) -> float:
    """+-20 %, so peers that lost the same bootstrap node do not redial in lockstep."""
    return delay * random.uniform(0.8, 1.2)


async def keep_connected(net: Redialer, kept: KeptPeer | str, max_backoff_s: float) -> None:
    """Hold a connection to ``kept.addr`` (must end in /p2p/<id>) until cancelled, or until a
    non-bootstrap peer has been unreachable for ``kept.give_up_after_s`` (then return)."""
    if isinstance(kept, str):
        kept = KeptPeer(addr=kept, bootstrap=True)
    peer = kept.peer
    backoff = REDIAL_INITIAL_S
    failing_since: float | None = None
    while True:
        if not net.is_connected(peer):
            try:
                await net.connect(kept.addr)
                log.info("kept peer connected", peer=peer, bootstrap=kept.bootstrap)
                failing_since = None
            except PeerNotAllowedError:
                log.warning("kept peer is not in allow_peers; not dialling", addr=kept.addr)
                return
            except DialError as exc:
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if not kept.bootstrap and now - failing_since >= kept.give_up_after_s:
                    log.warning(
                        "giving up on a kept peer: unreachable for too long",
                        addr=kept.addr, unreachable_s=round(now - failing_since), limit_s=kept.give_up_after_s,
                    )
                    return
                delay = _jitter(min(backoff, max_backoff_s))
                log.info("kept peer dial failed", addr=kept.addr, error=str(exc), retry_in_s=round(delay, 2))
                await trio.sleep(delay)
                backoff = min(backoff * 2, max_backoff_s)
                continue
        since = net.connected_since(peer) or time.monotonic()
        await net.wait_disconnected(peer)
        failing_since = time.monotonic()
        if time.monotonic() - since >= STABLE_CONNECTION_S:
            backoff = REDIAL_INITIAL_S
        else:  # it keeps dropping us: don't hammer it
            await trio.sleep(_jitter(min(backoff, max_backoff_s)))
            backoff = min(backoff * 2, max_backoff_s)
        log.info("kept peer lost; redialling", peer=peer)
