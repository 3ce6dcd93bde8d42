"""The peer table: the last heartbeat of each peer, its RTT, and who counts as alive.

Alive means a heartbeat within ``lease_s`` *of time this process was awake to hear it*: with a
:class:`~p2p.peers.pause.PauseDetector`, silence is measured from ``max(last heartbeat, our last
resume)``, so a pause of ours (SIGSTOP, a sleeping laptop, a stalled loop) never makes live peers
look dead. A fresh table counts as just resumed: a node that has not had time to hear anyone must
not declare every other owner dead.

Peers whose consensus settings differ from ours (``settings_digest``) are listed but never
offered to assignment: they would expire leases, count attempts or size blocks differently, and
the fold would no longer give every peer the same answer. Records of peers silent for
``forget_s`` are dropped, and the table holds at most ``max_peers`` records, so peer input cannot
grow it without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from p2p.peers.caps import PeerCaps
from p2p.peers.pause import PauseDetector, awake_clock
from p2p.protocols.heartbeat import Heartbeat

log = structlog.get_logger("p2p.peers")

DEFAULT_MAX_PEERS = 4096


@dataclass(slots=True)
class PeerRecord:
    """The last heartbeat of one peer and what we measured of it (kept while it may come back)."""

    heartbeat: Heartbeat
    last_seen: float
    rtt_ms: float | None = None
    incompatible: tuple[str, ...] = ()  # consensus settings keys that differ from ours
    caps: PeerCaps = field(init=False)

    def __post_init__(self) -> None:
        hb = self.heartbeat
        self.caps = PeerCaps(hb.peer_id, hb.capacity, frozenset(hb.models), tuple(sorted(hb.model_cids.items())))


def differing_keys(mine: dict[str, Any], theirs: dict[str, Any]) -> tuple[str, ...]:
    """Consensus keys whose values differ (a key one side lacks differs too)."""
    return tuple(sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)))


class PeerTable:
    """Who is alive and what each peer can run, as this peer last heard it.

    ``me`` gives this peer's capabilities; it is called on every scheduling decision, so it must
    be cheap (no heartbeat building). ``settings`` are this peer's consensus settings (empty:
    don't check). ``now`` must be the clock ``pause`` observes."""

    def __init__(
        self,
        me: Callable[[], PeerCaps],
        lease_s: float,
        now: Callable[[], float] = awake_clock,
        *,
        pause: PauseDetector | None = None,
        settings: dict[str, Any] | None = None,
        settings_digest: str = "",
        forget_s: float = 3600.0,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        self._me = me
        self._self_id = me().peer_id
        self._lease_s = lease_s
        self._now = now
        self._pause = pause
        self._settings = dict(settings or {})
        self._digest = settings_digest
        self._forget_s = max(forget_s, lease_s)
        self._max_peers = max_peers
        self._peers: dict[str, PeerRecord] = {}
        self._alive: set[str] = set()
        # peers whose lease lapsed and that are being asked directly (a ping) before any verdict:
        # peer -> when the benefit of the doubt ends
        self._checking: dict[str, float] = {}
        self._started = now()
        self._full_logged = False

    @property
    def self_id(self) -> str:
        return self._self_id

    @property
    def lease_s(self) -> float:
        return self._lease_s

    def _clock(self) -> tuple[float, float]:
        """(now, the moment silence starts counting from at the earliest)."""
        if self._pause is not None:
            now = self._pause.observe()
            return now, max(self._started, self._pause.resumed_at)
        return self._now(), self._started

    def _silent_s(self, rec: PeerRecord | None, now: float, since: float) -> float:
        last = rec.last_seen if rec is not None else since
        return now - max(last, since)

    def _lapsed(self, peer: str, rec: PeerRecord | None, now: float, since: float) -> bool:
        """Silent past its lease and not under a re-check still running."""
        if self._silent_s(rec, now, since) <= self._lease_s:
            return False
        until = self._checking.get(peer)
        return until is None or now >= until

    def lapsing(self) -> list[str]:
        """Live peers whose lease just ran out and that no re-check is asking yet."""
        now, since = self._clock()
        return [p for p in self._alive if p not in self._checking
                and self._silent_s(self._peers.get(p), now, since) > self._lease_s]

    def start_check(self, peer_id: str, grace_s: float) -> None:
        """Give ``peer_id`` up to ``grace_s`` more while it is asked directly whether it is alive:
        a lapsed lease is often our own backlog (heartbeats queued behind a catch-up on a busy
        machine), not the peer's death, and a false verdict costs re-runs and a connection."""
        now, _ = self._clock()
        self._checking[peer_id] = now + grace_s

    def end_check(self, peer_id: str) -> None:
        """The re-check ended: a peer that answered was ``touch``ed (which ended its check); one
        that did not is judged silent once the grace ``start_check`` gave it runs out. The check
        stays recorded until then (not removed): removed, the next tick found the peer lapsing
        again and started another check before ``expire`` ran, so a peer that never answered was
        re-checked for ever and never judged silent."""
        # the deadline start_check set stays as it was: a ping gives up sooner (5 s) than the
        # grace (a lease), and a heartbeat queued behind our backlog may still land in time

    def observe(self, hb: Heartbeat) -> bool:
        """Record a heartbeat; True when the set of live, compatible peers or their
        capabilities changed (the scheduler then re-decides open tasks)."""
        now, _ = self._clock()
        old = self._peers.get(hb.peer_id)
        if old is not None and hb.seq and old.heartbeat.seq and hb.seq < old.heartbeat.seq:
            return False  # an older heartbeat delivered late: what it says is out of date
        if old is None and len(self._peers) >= self._max_peers:
            self._prune(now, force=True)
            if len(self._peers) >= self._max_peers:
                if not self._full_logged:
                    log.warning("peer table full; new peers ignored until some go silent",
                                max_peers=self._max_peers)
                    self._full_logged = True
                return False
        bad: tuple[str, ...] = ()
        if self._digest and hb.settings_digest != self._digest:
            bad = differing_keys(self._settings, dict(hb.settings)) or ("settings_digest",)
            if old is None or old.incompatible != bad:
                log.warning("peer has different consensus settings; it gets no work from us",
                            peer=hb.peer_id, keys=list(bad),
                            ours={k: self._settings.get(k) for k in bad if k in self._settings},
                            theirs={k: hb.settings.get(k) for k in bad if k in hb.settings})
        rec = PeerRecord(hb, now, old.rtt_ms if old else None, bad)
        self._peers[hb.peer_id] = rec
        was_live = hb.peer_id in self._alive and old is not None and not old.incompatible
        changed = not was_live or old is None or old.caps != rec.caps or bool(bad) != bool(old.incompatible)
        self._alive.add(hb.peer_id)
        self._checking.pop(hb.peer_id, None)
        return changed

    def touch(self, peer_id: str) -> None:
        """Renew a known peer's lease: any authenticated message from it (a block reply, an
        announcement) proves it alive as well as a heartbeat does — a peer busy serving us a
        catch-up must not be judged silent because its heartbeats queued behind the blocks."""
        rec = self._peers.get(peer_id)
        if rec is not None:
            now, _ = self._clock()
            rec.last_seen = max(rec.last_seen, now)
            self._alive.add(peer_id)  # so its next silence is reported again
            self._checking.pop(peer_id, None)  # it answered: a later silence is checked afresh

    def set_rtt(self, peer_id: str, rtt_ms: float) -> None:
        rec = self._peers.get(peer_id)
        if rec is not None:
            rec.rtt_ms = rtt_ms

    def expire(self) -> set[str]:
        """Peers that went silent since the last call (their leases ended); forgets records
        silent for ``forget_s``."""
        now, since = self._clock()
        gone = {p for p in self._alive if self._lapsed(p, self._peers.get(p), now, since)}
        self._alive -= gone
        for p in gone:
            self._checking.pop(p, None)
        self._prune(now)
        return gone

    def _prune(self, now: float, force: bool = False) -> None:
        limit = self._lease_s if force else self._forget_s
        for pid in [p for p, r in self._peers.items() if now - r.last_seen > limit and p not in self._alive]:
            del self._peers[pid]

    def is_alive(self, peer_id: str) -> bool:
        """Heard from within ``lease_s`` of awake time. A peer never heard from counts as last
        seen when we last (re)started or resumed."""
        if peer_id == self.self_id:
            return True
        now, since = self._clock()
        return not self._lapsed(peer_id, self._peers.get(peer_id), now, since)

    def is_compatible(self, peer_id: str) -> bool:
        """False for a peer whose consensus settings differ from ours; a peer not heard from
        (offline, or not yet heard) is presumed compatible, so its work still runs."""
        rec = self._peers.get(peer_id)
        return rec is None or not rec.incompatible

    def live_peers(self) -> list[PeerCaps]:
        """This peer and every live peer whose consensus settings match ours."""
        me = self._me()
        out = [me]
        now, since = self._clock()
        out.extend(
            r.caps for p, r in self._peers.items()
            if p != me.peer_id and not r.incompatible and not self._lapsed(p, r, now, since)
        )
        return out

    def records(self, include_dead: bool = False) -> list[PeerRecord]:
        now, since = self._clock()
        return [r for r in self._peers.values() if include_dead or self._silent_s(r, now, since) <= self._lease_s]

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def age_s(self, rec: PeerRecord) -> float:
        return self._now() - rec.last_seen

    def __len__(self) -> int:
        return len(self._peers)
