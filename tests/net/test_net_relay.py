"""Circuit relay v2 on real hosts in one process (p2p.net.relay): a peer reached only through a
relay, with and without a network key. The NAT test in network namespaces, with real nodes, is
tests/network/test_nat.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2p.config import NetworkConfig
from p2p.net import DialError
from p2p.net.host import open_host

ECHO = "/ipfs-accelerate/test/echo/1.0.0"


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "swarm-key"])
async def test_a_peer_reached_only_through_a_relay(net_config: Callable[..., NetworkConfig], keyed: bool) -> None:
    psk = bytes(range(32)) if keyed else None
    async with (
        open_host(create_new_key_pair(), net_config(relay_service=True, hole_punching=False), psk=psk) as r,
        open_host(create_new_key_pair(), net_config(hole_punching=False), psk=psk) as c,
        open_host(create_new_key_pair(), net_config(hole_punching=False), psk=psk) as a,
    ):
        async def echo(peer: str, payload: bytes) -> bytes:
            return b"echo:" + payload

        c.set_request_handler(ECHO, echo)
        await c.connect(r.listen_addrs()[0])
        await a.connect(r.listen_addrs()[0])
        with trio.fail_after(10):
            while not c.relays.is_relay(r.peer_id):  # identify tells C what R serves
                await trio.sleep(0.05)
        assert not c.relays.is_relay(a.peer_id)
        assert await c.relays.reserve(r.peer_id, r.listen_addrs(), c.peer_id)
        circuit = c.relays.circuit_addrs()
        assert circuit and circuit[0].endswith(f"/p2p/{r.peer_id}/p2p-circuit/p2p/{c.peer_id}"), circuit

        assert await a.connect(circuit[0]) == c.peer_id
        assert a.connection_kind(c.peer_id) == "relayed" and c.connection_kind(a.peer_id) == "relayed"
        assert a.connection_kind(r.peer_id) == "direct"
        assert await a.request(c.peer_id, ECHO, b"hello") == b"echo:hello"
        assert a.relays.state.relayed_dials == 1

        # closing the relayed connection leaves C's connection to the relay (and its reservation)
        await c.disconnect(a.peer_id)
        with trio.fail_after(10):
            await a.wait_disconnected(c.peer_id)
        assert c.is_connected(r.peer_id) and a.is_connected(r.peer_id)
        assert await a.connect(circuit[0]) == c.peer_id  # and A can come back through it

        # bad input: a circuit address without a peer at its end, and one to ourselves
        with pytest.raises(Exception, match="relayed address"):
            await a.connect(f"{r.listen_addrs()[0]}/p2p-circuit")
        with pytest.raises(DialError, match="ourselves"):
            await a.connect(f"{r.listen_addrs()[0]}/p2p-circuit/p2p/{a.peer_id}")


async def test_a_peer_that_is_not_a_relay_refuses_reservations(net_config: Callable[..., NetworkConfig]) -> None:
    async with (
        open_host(create_new_key_pair(), net_config(hole_punching=False)) as r,
        open_host(create_new_key_pair(), net_config(hole_punching=False)) as c,
    ):
        await c.connect(r.listen_addrs()[0])
        assert not await c.relays.reserve(r.peer_id, r.listen_addrs(), c.peer_id)
        assert c.relays.circuit_addrs() == [] and c.relays.state.reserve_failures == 1


async def test_a_reservation_is_for_the_peer_on_the_connection(net_config: Callable[..., NetworkConfig]) -> None:
    """Patch 9: a RESERVE naming someone else reserves for the sender, not for the name."""
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    async with (
        open_host(create_new_key_pair(), net_config(relay_service=True, hole_punching=False)) as r,
        open_host(create_new_key_pair(), net_config(hole_punching=False)) as c,
    ):
        await c.connect(r.listen_addrs()[0])
        fake = ID.from_pubkey(create_new_key_pair().public_key)
        stream = await c.libp2p_host.new_stream(ID.from_base58(r.peer_id), [PROTOCOL_ID])
        await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE, peer=PeerId(id=fake.to_bytes())))
        reply = await read_delimited_msg(stream, HopMessage)
        await stream.close()
        assert reply.type == HopMessage.STATUS
        manager = r.relays._protocol.resource_manager
        assert manager.has_reservation(ID.from_base58(c.peer_id)) and not manager.has_reservation(fake)


async def test_a_reservation_that_cannot_be_refreshed_is_dropped_without_spinning(
        net_config: Callable[..., NetworkConfig]) -> None:
    """Patch 10: the library retried a failed refresh at once, in a loop, until expiry."""
    import time

    from libp2p.crypto.ed25519 import create_new_key_pair as new_key
    from libp2p.peer.id import ID

    async with open_host(create_new_key_pair(), net_config(hole_punching=False)) as c:
        transport = c.relays._transport
        gone = ID.from_pubkey(new_key().public_key)  # a relay we are not connected to
        transport._reservations[gone] = time.time() + 10  # inside the refresh margin
        attempts = 0
        original = c.libp2p_host.new_stream

        async def counting(*args: object, **kw: object) -> object:
            nonlocal attempts
            attempts += 1
            return await original(*args, **kw)

        c.libp2p_host.new_stream = counting  # type: ignore[method-assign]
        with trio.fail_after(30):
            await transport._refresh_reservations_worker()  # returns once nothing is left to refresh
        assert gone not in transport._reservations and attempts == 1
        assert c.relays.circuit_addrs() == []


def test_relay_service_needs_a_key_and_the_dht_stays_off_with_an_allowlist() -> None:
    from types import SimpleNamespace

    from p2p.config import ClockConfig, SchedulerConfig, constraint_violations

    def problems(**network: object) -> list[str]:
        cfg = SimpleNamespace(scheduler=SchedulerConfig(), clock=ClockConfig(), network=NetworkConfig(**network))
        return [key for key, _ in constraint_violations(cfg)]

    peer = "12D3KooWAvoqAhABomc7GbbTexFhEndkT3g14TBC1u6qnXrxr1fz"
    assert problems(relay_service=True, open=True) == ["network.relay_service"]
    assert problems(relay_service=True, open=True, allow_peers=[peer]) == []  # a closed list will do
    assert problems(relay_service=True) == []  # private by default
    assert problems(dht="server", allow_peers=[peer]) == ["network.dht"]
    assert problems(dht="auto", allow_peers=[peer]) == []  # auto means off there
