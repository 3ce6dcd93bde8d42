"""Rate-limited peer logging (pure logic, hypothesis) and the bounded set of kept peers (real hosts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2p.config import NetworkConfig
from p2p.net import PeerLogLimiter, open_host
from p2p.net.errors import NetConfigError

Cfg = Callable[..., NetworkConfig]


class _Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.records.append(("warning", event, fields))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2", "p3"]), st.sampled_from(["bad rpc", "bad frame"]),
                  st.floats(min_value=0, max_value=30)),
        max_size=60,
    )
)
def test_at_most_one_record_per_peer_and_event_per_interval_and_every_repeat_counted(
    calls: list[tuple[str, str, float]],
) -> None:
    now = [0.0]
    rec = _Recorder()
    limiter = PeerLogLimiter(rec, interval_s=60.0, clock=lambda: now[0])
    for peer, event, dt in calls:
        now[0] += dt
        limiter.warning(peer, event)
    logged: dict[tuple[str, str], list[float]] = {}
    now[0] = 0.0
    # replay to learn when each record was let through
    replay = PeerLogLimiter(_Recorder(), interval_s=60.0, clock=lambda: now[0])
    for peer, event, dt in calls:
        now[0] += dt
        if replay.warning(peer, event):
            logged.setdefault((peer, event), []).append(now[0])
    for times in logged.values():
        assert all(b - a >= 60.0 for a, b in zip(times, times[1:]))
    # calls = records + suppressed repeats reported later + repeats still pending
    reported = sum(f.get("suppressed_repeats", 0) for _, _, f in rec.records)
    pending = sum(int(entry[1]) for entry in limiter._seen.values())
    assert len(rec.records) + reported + pending == len(calls)


def test_limiter_table_is_capped() -> None:
    rec = _Recorder()
    limiter = PeerLogLimiter(rec, max_keys=100)
    for i in range(10_000):
        limiter.warning(f"peer{i}", "bad rpc")
    assert len(limiter) == 100
    with pytest.raises(ValueError):
        PeerLogLimiter(rec, interval_s=0)


def _dead_addr(port: int = 9) -> str:
    """An address nobody listens on, naming a fresh peer id."""
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{ID.from_pubkey(create_new_key_pair().public_key)}"


async def test_kept_peers_are_deduped_capped_and_given_up(net_config: Cfg) -> None:
    boot = _dead_addr()
    async with open_host(create_new_key_pair(), net_config(bootstrap=[boot], reconnect_max_backoff_s=0.2),
                         max_kept_peers=3, kept_give_up_s=1.5) as net:
        boot_peer = boot.rsplit("/", 1)[1]
        a1 = _dead_addr()
        peer1 = a1.rsplit("/", 1)[1]
        assert net.keep(a1)
        assert net.keep(a1.replace("/tcp/9/", "/tcp/11/"))  # same peer, new address: no new task
        assert net.kept_peers()[peer1].endswith(f"/tcp/11/p2p/{peer1}") and len(net.kept_peers()) == 2
        more = [_dead_addr() for _ in range(3)]
        for addr in more:
            assert net.keep(addr)
            assert len(net.kept_peers()) <= 3
        kept = net.kept_peers()
        assert boot_peer in kept  # bootstrap peers are never evicted...
        assert set(kept) == {boot_peer, more[-2].rsplit("/", 1)[1], more[-1].rsplit("/", 1)[1]}
        with trio.fail_after(30):  # ...nor given up; hand-kept unreachable peers are
            while set(net.kept_peers()) != {boot_peer}:
                await trio.sleep(0.1)
        assert net.keep(_dead_addr())  # room again


async def test_kept_limit_rejects_nonsense(net_config: Cfg) -> None:
    with pytest.raises(NetConfigError):
        async with open_host(create_new_key_pair(), net_config(), max_kept_peers=0):
            pass
