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
