"""The DHT component (p2p.dht) on real hosts in one process: rendezvous by network name, model
providers, and the mode rule. The multi-process test (peers of one network meeting through a
bootstrap node of another) is tests/network/test_dht.py."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2p.config import NetworkConfig
from p2p.dht import Dht, choose_mode, is_public, rendezvous_key
from p2p.net.host import open_host

MODEL_CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


def test_rendezvous_keys_differ_by_network_and_are_sha256_multihashes() -> None:
    blue, red = rendezvous_key("blue"), rendezvous_key("red")
    assert blue != red and blue.startswith("1220") and len(bytes.fromhex(blue)) == 34


@pytest.mark.parametrize("addrs,mode", [
    (["/ip4/127.0.0.1/tcp/4001"], "client"),
    (["/ip4/192.168.1.5/tcp/4001", "/ip6/fe80::1/tcp/4001"], "client"),
    (["/ip4/10.0.0.2/tcp/1", "/ip4/8.8.8.8/tcp/4001"], "server"),
    (["/ip6/2001:4860::8888/tcp/4001"], "server"),
    (["/dns4/example.com/tcp/4001"], "client"),
])
def test_auto_serves_only_on_a_public_address(addrs: list[str], mode: str) -> None:
    assert choose_mode("auto", addrs) == mode
    assert choose_mode("server", ["/ip4/127.0.0.1/tcp/1"]) == "server"
    assert is_public("/ip4/1.1.1.1/tcp/1") and not is_public("/ip4/100.64.0.1/tcp/1")


async def test_peers_of_one_network_find_each_other_through_a_server_and_others_do_not(
        net_config: Callable[..., NetworkConfig]) -> None:
    dialled: dict[str, list[tuple[str, list[str]]]] = {"a": [], "b": [], "c": []}
    async with AsyncExitStack() as stack:
        hosts = {name: await stack.enter_async_context(open_host(create_new_key_pair(), net_config()))
                 for name in ("r", "a", "b", "c")}
        dhts = {
            "r": Dht(hosts["r"], network="red", mode="server", interval_s=0.5, dial=lambda p, a: None, provides=list),
            "a": Dht(hosts["a"], network="blue", mode="client", interval_s=0.5,
                     dial=lambda p, a: dialled["a"].append((p, a)), provides=lambda: [MODEL_CID]),
            "b": Dht(hosts["b"], network="blue", mode="client", interval_s=0.5,
                     dial=lambda p, a: dialled["b"].append((p, a)), provides=list),
            "c": Dht(hosts["c"], network="green", mode="client", interval_s=0.5,
                     dial=lambda p, a: dialled["c"].append((p, a)), provides=list),
        }
        async with trio.open_nursery() as nursery:
            for name in ("r", "a", "b", "c"):
                await nursery.start(dhts[name].run)
            for name in ("a", "b", "c"):
                await hosts[name].connect(hosts["r"].listen_addrs()[0])
                dhts[name].poke()
            with trio.fail_after(60):
                while not (dhts["a"].rendezvous_peers and dhts["b"].rendezvous_peers):
                    await trio.sleep(0.1)
            providers = await dhts["b"].providers(MODEL_CID)
            nothing = await dhts["b"].providers("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
            await trio.sleep(1.5)  # more rounds: the green peer still finds no one, nobody redials
            nursery.cancel_scope.cancel()
    assert set(dhts["a"].rendezvous_peers) == {hosts["b"].peer_id}
    assert set(dhts["b"].rendezvous_peers) == {hosts["a"].peer_id}
    assert dhts["c"].rendezvous_peers == {}  # green's key has no other provider
    # whoever was not connected yet was dialled, once (not every round); the lookups themselves
    # may have connected them already
    for me, other in (("a", "b"), ("b", "a")):
        assert [p for p, _ in dialled[me]] in ([], [hosts[other].peer_id]), dialled
        assert hosts[me].is_connected(hosts[other].peer_id)
    assert dialled["c"] == []
    assert [p for p, _ in providers] == [hosts["a"].peer_id]
    assert nothing == []
    assert dhts["r"].stats.mode == "server" and dhts["a"].stats.mode == "client"
    assert dhts["a"].stats.routing_table >= 1 and dhts["a"].stats.provided >= 2


def test_the_provider_store_is_bounded_and_keeps_the_rendezvous_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import p2p.dht as dht_mod

    class Rec:
        def __init__(self, t: float) -> None:
            self.timestamp = t

    class Store:
        providers = {bytes([i]) * 4: {"p": Rec(float(i))} for i in range(1, 21)}

    class Kad:
        provider_store = Store()

    d = Dht(object(), network="blue", mode="client", interval_s=1, dial=lambda p, a: None, provides=list)
    d._kad = Kad()
    ours = bytes.fromhex(d.key)
    Store.providers[ours] = {"me": Rec(0.0)}  # the oldest of all, yet kept
    monkeypatch.setattr(dht_mod, "MAX_PROVIDER_KEYS", 10)
    d._bound_provider_store()
    assert len(Store.providers) == 10 and ours in Store.providers
    assert sorted(k[0] for k in Store.providers if k != ours) == list(range(12, 21))  # the newest 9
