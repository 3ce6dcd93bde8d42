"""mDNS on a private network: peers on the LAN are still found, but only peers with the key
connect. Three real nodes in network namespaces on one bridged LAN (as test_mdns_cluster), none
given a key or a bootstrap address: n1's first start creates its key, n2 holds the same key in
its data dir (as `p2p start --join` leaves it), n3 made its own. Skips where namespaces cannot
be made."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2p.net.psk import load_swarm_key
from tests.netns import bridged_lan
from tests.network.test_mdns_cluster import NsNode, _eventually, _start, _stop
from tests.procs import cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SUBNET = "10.78.0"  # only ever configured inside the namespaces below


@pytest.fixture
def lan() -> Iterator[list[str]]:
    with bridged_lan("imdns", 3, SUBNET) as nodes:
        yield nodes


def test_mdns_finds_every_peer_but_only_peers_with_the_key_connect(
    tmp_path: Path, shared_cache_dir: Path, lan: list[str]
) -> None:
    env = cli_env(
        shared_cache_dir,
        IPFS_ACCELERATE_NETWORK__PSK_FILE="",  # each node's own data dir key, as a user gets it
        IPFS_ACCELERATE_NETWORK__HEARTBEAT_S="0.5",
        IPFS_ACCELERATE_NETWORK__REANNOUNCE_S="1",
        IPFS_ACCELERATE_SCHEDULER__LEASE_S="3",
    )
    nodes = [NsNode(f"n{i + 1}", ns, f"{SUBNET}.{i + 1}", tmp_path / f"n{i + 1}", tmp_path / f"n{i + 1}.log")
             for i, ns in enumerate(lan)]
    n1, n2, n3 = nodes
    try:
        _start(n1, env)
        key = n1.data_dir / "swarm.key"
        n2.data_dir.mkdir(parents=True)
        shutil.copy(key, n2.data_dir / "swarm.key")
        _start(n2, env)
        _start(n3, {**env, "IPFS_ACCELERATE_LOGGING__LEVEL": "debug"})  # its failed mDNS dials are debug lines
        assert load_swarm_key(n3.data_dir / "swarm.key") != load_swarm_key(key)

        def peers_of(n: NsNode) -> set[str]:
            return {p["peer_id"] for p in n.call("list_peers")["peers"]}

        def sees(n: NsNode, other: NsNode) -> Callable[[], bool]:
            return lambda: other.peer_id in peers_of(n)

        _eventually(sees(n1, n2), 120, "n1 and n2 (same key) to find each other by mDNS", nodes)
        _eventually(sees(n2, n1), 120, "n2 to see n1", nodes)

        def n3_found_and_refused() -> bool:  # mDNS told n3 of both; the key refused both dials
            text = n3.log_text()
            return all(re.search(rf"mdns peer dial failed.*{o.peer_id}", text) for o in (n1, n2))

        _eventually(n3_found_and_refused, 120, "n3 to find n1 and n2 by mDNS and fail to connect", nodes)
        assert peers_of(n3) == set()
        assert n3.peer_id not in peers_of(n1) | peers_of(n2)
        assert n3.call("get_node_info")["clock"]["events"] == 0
    finally:
        for n in nodes:
            _stop(n)
    for n in nodes:
        assert "Traceback" not in n.log_text(), n.tail()
