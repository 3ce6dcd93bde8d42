"""The peer table: the last heartbeat of each peer, its RTT, and who counts as alive.

Alive means a heartbeat within ``lease_s``. The scheduler reads it through ``live_peers`` and
``is_alive``; this peer is always alive to itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from p2p.peers.heartbeat import Heartbeat
from p2p.scheduler.scheduler import PeerCaps


@dataclass(slots=True)
class PeerRecord:
    heartbeat: Heartbeat
    last_seen: float
    rtt_ms: float | None = None
    caps: PeerCaps = field(init=False)

    def __post_init__(self) -> None:
        hb = self.heartbeat
        self.caps = PeerCaps(hb.peer_id, hb.capacity, frozenset(hb.models))


class PeerTable:
    def __init__(self, me: Callable[[], PeerCaps], lease_s: float, now: Callable[[], float] = time.monotonic) -> None:
        """``me`` gives this peer's capabilities; it is called on every scheduling decision,
        so it must be cheap (no heartbeat building)."""
        self._me = me
        self._self_id = me().peer_id
        self._lease_s = lease_s
        self._now = now
        self._peers: dict[str, PeerRecord] = {}
        self._alive: set[str] = set()
        self._started = now()

    @property
    def self_id(self) -> str:
        return self._self_id

    def observe(self, hb: Heartbeat) -> bool:
        """Record a heartbeat; True when the set of live peers or their capabilities changed."""
        old = self._peers.get(hb.peer_id)
        rec = PeerRecord(hb, self._now(), old.rtt_ms if old else None)
        self._peers[hb.peer_id] = rec
        changed = old is None or old.caps != rec.caps or hb.peer_id not in self._alive
        self._alive.add(hb.peer_id)
        return changed

    def set_rtt(self, peer_id: str, rtt_ms: float) -> None:
        rec = self._peers.get(peer_id)
        if rec is not None:
            rec.rtt_ms = rtt_ms

    def expire(self) -> set[str]:
        """Peers that went silent since the last call (their leases ended)."""
        now = self._now()
        gone = {p for p in self._alive if now - self._peers[p].last_seen > self._lease_s}
        self._alive -= gone
        return gone

    def is_alive(self, peer_id: str) -> bool:
        """Heard from within ``lease_s``. A peer not heard from yet counts as last seen when this
        table started: a node that just (re)started has not had time to hear anyone, and must
        not declare every other owner dead and take over (or fail) their tasks."""
        if peer_id == self.self_id:
            return True
        rec = self._peers.get(peer_id)
        last = rec.last_seen if rec is not None else self._started
        return self._now() - last <= self._lease_s

    def live_peers(self) -> list[PeerCaps]:
        me = self._me()
        out = [me]
        now = self._now()
        out.extend(r.caps for p, r in self._peers.items() if p != me.peer_id and now - r.last_seen <= self._lease_s)
        return out

    def records(self, include_dead: bool = False) -> list[PeerRecord]:
        now = self._now()
        return [r for r in self._peers.values() if include_dead or now - r.last_seen <= self._lease_s]

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def age_s(self, rec: PeerRecord) -> float:
        return self._now() - rec.last_seen
