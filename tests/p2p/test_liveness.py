"""Liveness without processes: a hand-driven clock, an in-memory broadcaster, real heartbeats.

What is checked: a pause of our own never makes live peers look dead (the re-claim wave of
issue 7); real silence still does, one lease after we resumed; peers with other consensus
settings are listed, named by key, and never offered to assignment; spoofed heartbeats are
ignored; the table forgets silent peers and holds at most max_peers.
"""

from __future__ import annotations

import trio

from p2p.liveness import Liveness
from p2p.peers import Heartbeat, PauseDetector, PeerCaps, PeerTable
from p2p.replication.broadcaster import MemoryHub

ME = PeerCaps("me", 2.0, frozenset({"m"}))
SETTINGS = {"scheduler.lease_s": 10.0, "scheduler.max_attempts": 3}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def run(self, seconds: float, table: PeerTable, step: float = 0.25) -> None:
        """Let time pass while the process runs (observed every ``step``, as the ticker does)."""
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + step)
            table.is_alive("probe")  # any liveness read observes the clock


def hb(peer: str, **kw: object) -> Heartbeat:
    fields = {"peer_id": peer, "name": peer, "models": ["m"], "capacity": 1.0} | kw
    return Heartbeat.model_validate(fields)


def table(clock: Clock, **kw: object) -> tuple[PeerTable, PauseDetector]:
    pause = PauseDetector(1.0, now=clock)
    return PeerTable(lambda: ME, lease_s=10.0, now=clock, pause=pause, **kw), pause  # type: ignore[arg-type]


def test_a_pause_of_our_own_gives_every_peer_a_fresh_lease() -> None:
    clock = Clock()
    t, pause = table(clock)
    t.observe(hb("a"))
    clock.run(3, t)
    clock.t += 25  # SIGSTOP for 25 s: nothing observed meanwhile
    assert t.is_alive("a"), "a peer must not be judged dead for the time we could not hear it"
    assert pause.pauses == 1 and pause.longest_s >= 25
    assert {p.peer_id for p in t.live_peers()} == {"me", "a"}
    assert t.expire() == set()
    clock.run(9.5, t)
    assert t.is_alive("a")
    clock.run(1, t)  # a full lease of silence that we were awake to hear
    assert not t.is_alive("a")
    assert t.expire() == {"a"}


def test_real_silence_still_ends_a_lease() -> None:
    clock = Clock()
    t, pause = table(clock)
    t.observe(hb("a"))
    clock.run(10.5, t)
    assert pause.pauses == 0
    assert not t.is_alive("a") and t.expire() == {"a"}
    assert [p.peer_id for p in t.live_peers()] == ["me"]


def test_a_peer_with_other_consensus_settings_gets_no_work_and_is_named() -> None:
    clock = Clock()
    t, _ = table(clock, settings=SETTINGS, settings_digest="d1")
    assert t.observe(hb("good", settings=SETTINGS, settings_digest="d1"))
    other = SETTINGS | {"scheduler.max_attempts": 5}
    t.observe(hb("odd", settings=other, settings_digest="d2"))
    assert {p.peer_id for p in t.live_peers()} == {"me", "good"}
    rec = t.get("odd")
    assert rec is not None and rec.incompatible == ("scheduler.max_attempts",)
    assert t.is_alive("odd")  # alive (its claims stand while it runs them), just never assigned
    silent = t.get("good")
    assert silent is not None and silent.incompatible == ()
    t.observe(hb("bare"))  # no settings at all: incompatible too
    bare = t.get("bare")
    assert bare is not None and bare.incompatible


def test_the_table_forgets_silent_peers_and_is_bounded() -> None:
    clock = Clock()
    t, _ = table(clock, forget_s=60.0, max_peers=3)
    for p in ("a", "b"):
        t.observe(hb(p))
    assert len(t) == 2
    clock.run(61, t, step=0.5)
    t.expire()
    assert len(t) == 0
    for p in ("a", "b", "c"):
        t.observe(hb(p))
    assert not t.observe(hb("d")) and t.get("d") is None  # full of live peers: d is ignored
    clock.run(11, t, step=0.5)
    t.expire()
    assert t.observe(hb("d"))  # dead records make room
    assert t.get("d") is not None and len(t) <= 3


async def test_heartbeats_flow_and_a_spoof_is_ignored() -> None:
    hub = MemoryHub()
    clock = Clock()
    changes: list[str] = []
    heads: list[tuple[str, int]] = []
    learned: list[str] = []

    def make(peer: str) -> tuple[Liveness, PeerTable]:
        me = PeerCaps(peer, 1.0, frozenset({"m"}))
        t = PeerTable(lambda: me, lease_s=10.0, now=clock, pause=PauseDetector(1.0, now=clock))
        lv = Liveness(
            t, PauseDetector(1.0, now=clock), hub.join(peer), peer_id=peer,
            heartbeat=lambda: hb(peer, addrs=[f"/ip4/127.0.0.1/tcp/1/p2p/{peer}"],
                                 heads=["bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"]),
            heartbeat_s=0.05, on_peers_changed=lambda: changes.append(peer),
            on_heads=lambda p, h: heads.append((p, len(h))), on_learned=lambda p, a: learned.append(p),
        )
        return lv, t

    a, ta = make("a")
    b, tb = make("b")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        with trio.fail_after(10):
            while not (tb.get("a") and ta.get("b")):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert ("b", 1) in heads and ("a", 1) in heads and "a" in learned
    b.hear("mallory", hb("a").model_dump_json().encode())  # sender is not the peer it names
    assert tb.get("mallory") is None


def test_liveness_reports_a_resume_once() -> None:
    clock = Clock()
    resumed: list[int] = []
    pause = PauseDetector(1.0, now=clock)
    t = PeerTable(lambda: ME, lease_s=10.0, now=clock, pause=pause)
    lv = Liveness(t, pause, MemoryHub().join("me"), peer_id="me", heartbeat=lambda: hb("me"), heartbeat_s=1,
                  on_peers_changed=lambda: None, on_resumed=lambda: resumed.append(1))
    assert not lv.check_pause()
    clock.t += 0.5
    assert not lv.check_pause()
    clock.t += 30
    t.is_alive("x")  # a liveness read sees the gap first ...
    assert lv.check_pause()  # ... and the ticker still reports it, once
    assert not lv.check_pause()
    assert resumed == [1]


def test_any_message_from_a_peer_renews_its_lease() -> None:
    clock = Clock()
    t, _ = table(clock)
    t.observe(hb("busy"))
    for _ in range(6):  # its heartbeats are stuck behind a catch-up it serves us; its replies aren't
        clock.run(3, t)
        t.touch("busy")
    assert t.is_alive("busy") and t.expire() == set()
    t.touch("stranger")  # never heard: nothing to renew, nothing created
    assert t.get("stranger") is None
    clock.run(10.5, t)
    assert t.expire() == {"busy"}


def test_a_lapsed_lease_is_rechecked_before_any_verdict() -> None:
    """A peer whose heartbeats lapsed (our own backlog, often) stays alive while it is asked
    directly; one that answers keeps its lease, one that does not is silent after the grace."""
    clock = Clock()
    t, _ = table(clock)
    t.observe(hb("slow"))
    t.observe(hb("dead"))
    clock.run(10.5, t)
    assert sorted(t.lapsing()) == ["dead", "slow"]
    for p in ("slow", "dead"):
        t.start_check(p, 10.0)
    assert t.lapsing() == [] and t.expire() == set()
    assert {p.peer_id for p in t.live_peers()} == {"me", "slow", "dead"} and t.is_alive("dead")
    clock.run(2, t)
    t.touch("slow")  # it answered the ping
    t.end_check("slow")
    clock.run(8.5, t)  # the grace ends without an answer from "dead"
    assert t.expire() == {"dead"}
    assert t.is_alive("slow") and not t.is_alive("dead")
    t.end_check("dead")
    assert t.expire() == set()


async def test_liveness_pings_a_lapsed_peer_and_only_an_unanswered_one_goes_silent() -> None:
    clock = Clock()
    t, pause = table(clock)
    answered: list[str] = []

    async def ping(peer: str) -> float:
        if peer == "dead":
            raise ConnectionError("no route")
        answered.append(peer)
        return 1.5

    silent: list[set[str]] = []
    lv = Liveness(t, pause, MemoryHub().join("me"), peer_id="me", heartbeat=lambda: hb("me"), heartbeat_s=1.0,
                  on_peers_changed=lambda: None, ping=ping)
    t.observe(hb("slow"))
    t.observe(hb("dead"))
    clock.run(10.5, t)
    for peer in t.lapsing():
        t.start_check(peer, t.lease_s)
        await lv._recheck(peer)
    silent.append(lv.expire_once())  # the failed ping does not shorten the grace
    clock.run(t.lease_s + 0.5, t)
    t.observe(hb("slow"))  # "slow" keeps heartbeating meanwhile
    silent.append(lv.expire_once())
    assert answered == ["slow"] and silent == [set(), {"dead"}]
    assert t.is_alive("slow")


async def test_an_unanswered_recheck_ends_in_a_verdict_in_the_loops_own_order() -> None:
    """Liveness._expire's order each tick: start a re-check of every lapsing peer, then expire.
    A ping that fails at once (no route, a reset) ends its check at once; the next tick must
    judge that peer, not start another check (it did, for ever: a dead peer on a cut link was
    never judged silent)."""
    clock = Clock()
    t, pause = table(clock)

    async def ping(peer: str) -> float:
        raise ConnectionError("no route")

    lv = Liveness(t, pause, MemoryHub().join("me"), peer_id="me", heartbeat=lambda: hb("me"), heartbeat_s=1.0,
                  on_peers_changed=lambda: None, ping=ping)
    t.observe(hb("dead"))
    clock.run(10.5, t)
    gone: set[str] = set()
    for _ in range(15):  # fifteen 1 s ticks
        checks = t.lapsing()
        for peer in checks:
            t.start_check(peer, t.lease_s)
        gone |= lv.expire_once()
        for peer in checks:  # start_soon'd: the pings run after this tick's expire
            await lv._recheck(peer)
        if gone:
            break
        clock.run(1.0, t)
    assert gone == {"dead"}, "a peer that never answered was re-checked for ever"
    assert not t.is_alive("dead")
    t.observe(hb("dead"))  # it comes back: alive again, and a later silence is checked afresh
    assert t.is_alive("dead")
    clock.run(10.5, t)
    assert t.lapsing() == ["dead"]


def test_an_older_heartbeat_delivered_late_does_not_replace_a_newer_one() -> None:
    """Gossip may deliver heartbeats out of order: the table keeps the newest (by ``seq``), so a
    late one cannot roll back what a peer offers (its models, its cache entries, its queue)."""
    peers, _ = table(Clock())
    assert peers.observe(hb("p", seq=2, models=["m"], cache_entries=8))
    assert not peers.observe(hb("p", seq=1, models=[], cache_entries=0))
    rec = peers.get("p")
    assert rec is not None and rec.heartbeat.models == ["m"] and rec.heartbeat.cache_entries == 8
    assert peers.observe(hb("p", seq=3, models=[], cache_entries=0))  # a newer one does
    assert peers.get("p").heartbeat.models == []
    peers.observe(hb("p", seq=0, models=["m"]))  # a peer that does not number them: last heard
    assert peers.get("p").heartbeat.models == ["m"]
