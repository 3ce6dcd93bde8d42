"""Private by default, with invites, between real `ipfs-accelerate` processes on loopback.

Every node here runs as a user gets it: no key given, so the first start creates one in the node's
own data dir (the harness's shared key is switched off with ``IPFS_ACCELERATE_NETWORK__PSK_FILE=""``).
A node without the invite never connects, and the network stays healthy while it keeps trying; a
node started with ``--join INVITE`` joins and takes work; a restarted joiner keeps the key and
``p2p join INVITE`` reconnects it while it runs. Bad input (a malformed invite, ``--join`` with
``--open``, another key in ``--psk-file``) exits non-zero with one line and creates nothing."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from p2p.identity import Identity
from p2p.net.psk import decode_invite, encode_invite, format_swarm_key, load_swarm_key
from tests.cluster import Cluster, Peer, call, eventually, wait_peers
from tests.conftest import DEFAULT_MODEL
from tests.procs import CLI, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OWN_KEY = {"IPFS_ACCELERATE_NETWORK__PSK_FILE": ""}  # each node's data dir key, as a user gets it


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return OWN_KEY


def _tasks(n: int) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"Invited sentence {i} about a heron by a lake."} for i in range(n)]


async def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([CLI, *args], capture_stdout=True, capture_stderr=True, env=cluster.env(), check=False)


async def _invite(cluster: Cluster, peer: Peer) -> str:
    proc = await _cli(cluster, "p2p", "invite", "--data-dir", str(peer.data_dir))
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, lines  # one line on stdout; the explanation goes to stderr
    return lines[0]


def _dial_failures(peer: Peer, target: Peer) -> int:
    return len(re.findall(rf"kept peer dial failed.*{target.peer_id}", peer.log_text()))


async def test_only_a_node_with_the_invite_joins_and_takes_work(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    key_file = n1.data_dir / "swarm.key"
    assert key_file.is_file() and (key_file.stat().st_mode & 0o077) == 0, "the first start creates a private key"
    assert "network: private" in n1.log_text()
    invite = await _invite(cluster, n1)
    inv = decode_invite(invite)
    assert inv.key == load_swarm_key(key_file) and inv.peer_id == n1.peer_id and n1.addr in inv.addrs

    # an outsider that knows n1's address but holds no invite: its first start made its own key
    outsider = cluster.start("out", bootstrap=[n1])
    assert load_swarm_key(outsider.data_dir / "swarm.key") != inv.key

    async def outsider_refused_twice() -> bool:
        return _dial_failures(outsider, n1) >= 2

    await eventually(outsider_refused_twice, 90, "the outsider's dials to n1 to fail twice")

    joiner = cluster.start("j", extra=["--join", invite])
    assert load_swarm_key(joiner.data_dir / "swarm.key") == inv.key, "--join stores the invite's key"
    await wait_peers(n1, [joiner])
    await wait_peers(joiner, [n1])

    # the joiner takes work: p2p-only never runs on the submitter, so every task runs on the joiner
    sub = await call(n1, "submit_workflow", name="invited", tasks=_tasks(12), tag="p2p-only")
    st = await call(n1, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=300, include_results=True, format="floats")
    assert st["state"] == "completed" and st["completed"] == 12, {k: v for k, v in st.items() if k != "tasks"}
    assert {t["peer"] for t in st["tasks"]} == {joiner.peer_id}
    assert all(len(t["result"]["embedding"]) == 384 for t in st["tasks"])

    # all along, the outsider kept dialling and never got in; n1 stayed healthy
    before = _dial_failures(outsider, n1)

    async def kept_trying() -> bool:
        return _dial_failures(outsider, n1) > before

    await eventually(kept_trying, 60, "the outsider to be refused again after the workflow")
    for p in (n1, joiner):
        assert outsider.peer_id not in {x["peer_id"] for x in (await call(p, "list_peers"))["peers"]}
    assert (await call(outsider, "list_peers"))["peers"] == []
    assert (await call(outsider, "get_node_info"))["workflows"] == 0, "nothing of the network reached it"
    # and it cannot talk its way in through a running-node join either: the key differs
    bad = await _cli(cluster, "p2p", "join", "--data-dir", str(outsider.data_dir), invite)
    assert bad.returncode != 0 and b"differs from this node's" in bad.stderr and b"Traceback" not in bad.stderr

    # a joiner restarted without --join keeps the key; `p2p join INVITE` reconnects it while it runs
    cluster.kill(joiner, signal.SIGTERM)
    i = joiner.args.index("--join")
    del joiner.args[i:i + 2]
    cluster.start("j")
    assert "network: private" in joiner.log_text() and load_swarm_key(joiner.data_dir / "swarm.key") == inv.key
    proc = await _cli(cluster, "p2p", "join", "--data-dir", str(joiner.data_dir), invite)
    assert proc.returncode == 0, proc.stderr.decode()
    assert n1.peer_id in proc.stdout.decode()
    await wait_peers(n1, [joiner])
    again = await call(n1, "submit_workflow", name="after-rejoin", tasks=_tasks(4), tag="p2p-only")
    st = await call(n1, "wait_for_workflow", workflow_id=again["workflow_id"], timeout_s=300)
    assert st["state"] == "completed" and {t["peer"] for t in st["tasks"]} == {joiner.peer_id}
    for p in (n1, outsider, joiner):
        assert "Traceback" not in p.log_text(), p.log_text()[-3000:]


async def test_an_open_node_creates_no_key_and_cannot_invite(cluster: Cluster) -> None:
    o = cluster.start("o", extra=["--open"])
    assert not (o.data_dir / "swarm.key").exists()
    assert "network: OPEN" in o.log_text()
    proc = await _cli(cluster, "p2p", "invite", "--data-dir", str(o.data_dir))
    assert proc.returncode != 0 and b"no network key" in proc.stderr
    assert not (o.data_dir / "swarm.key").exists()


# --- bad input: one line, non-zero, nothing created -------------------------------------------------

def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = cli_env(tmp_path / "cache", **OWN_KEY, **env)
    return subprocess.run([CLI, *args], env=full, capture_output=True, text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""
    return lines[0]


def _good_invite(key: bytes | None = None, network: str = "default") -> str:
    peer = Identity.generate().peer_id_str
    return encode_invite(key or secrets.token_bytes(32), network, [f"/ip4/127.0.0.1/tcp/9/p2p/{peer}"])


@pytest.mark.parametrize("command", [["p2p", "start"], ["mcp", "serve", "--transport", "http", "--port", "0"]])
def test_bad_joins_exit_non_zero_and_create_nothing(tmp_path: Path, command: list[str]) -> None:
    data = tmp_path / "node"
    good = _good_invite()
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--join", "ipfsacc1:notaninvite"], {}, "bad invite:"),
        (["--join", good[:-6]], {}, "bad invite: the invite's checksum does not match"),
        (["--join", "hello"], {}, "bad invite: not an invite"),
        (["--join", good, "--open"], {}, "--join and --open contradict"),
        (["--join", good], {"IPFS_ACCELERATE_NETWORK__OPEN": "true"}, "--join and --open contradict"),
        (["--join", _good_invite(network="other")], {}, "the invite is for network 'other'"),
        (["--join", good, "--no-network"], {}, "--join needs the network on"),
        (["--open", "--psk-file", str(tmp_path / "k")], {}, "network.open contradicts network.psk_file"),
    ]
    for extra, env, needle in cases:
        line = _one_error_line(_run([*command, "--data-dir", str(data), *extra], tmp_path, **env))
        assert needle in line, (extra, line)
        assert not data.exists(), f"{extra} created {sorted(data.rglob('*'))}"


def test_join_with_another_key_in_psk_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "node"
    mine = secrets.token_bytes(32)
    psk = tmp_path / "mine.key"
    psk.write_text(format_swarm_key(mine))
    line = _one_error_line(_run(["p2p", "start", "--data-dir", str(data), "--psk-file", str(psk), "--join", _good_invite()],
                                tmp_path))
    assert "differs from the key in" in line and "nothing was changed" in line
    assert not data.exists() and load_swarm_key(psk) == mine


def test_join_over_another_data_dir_key_keeps_the_old_one(tmp_path: Path) -> None:
    """Joining another network (or a rotated key) replaces the data dir's key; the old one stays
    beside it. The node is given a listen address it refuses after the key step, so the key
    handling runs for real and no node is left running."""
    data = tmp_path / "node"
    data.mkdir()
    old = secrets.token_bytes(32)
    (data / "swarm.key").write_text(format_swarm_key(old))
    new = secrets.token_bytes(32)
    proc = _run(["p2p", "start", "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/notaport",
                 "--join", _good_invite(new)], tmp_path)
    assert proc.returncode != 0
    assert load_swarm_key(data / "swarm.key") == new
    backups = list(data.glob("swarm.key.old-*"))
    assert len(backups) == 1 and load_swarm_key(backups[0]) == old


def test_invite_and_join_without_a_node_say_what_is_missing(tmp_path: Path) -> None:
    data = tmp_path / "none"
    assert "no network key at" in _one_error_line(_run(["p2p", "invite", "--data-dir", str(data)], tmp_path))
    assert not data.exists()
    data.mkdir()
    (data / "swarm.key").write_text(format_swarm_key(secrets.token_bytes(32)))
    assert "no identity in" in _one_error_line(_run(["p2p", "invite", "--data-dir", str(data)], tmp_path))
    assert sorted(p.name for p in data.iterdir()) == ["swarm.key"]
    assert "give an INVITE" in _one_error_line(_run(["p2p", "join", "--data-dir", str(data)], tmp_path))
    assert "bad invite" in _one_error_line(_run(["p2p", "join", "--data-dir", str(data), "nope"], tmp_path))


def test_invite_of_a_stopped_node_uses_its_fixed_listen_port(tmp_path: Path) -> None:
    """Without a running node, the invite carries network.listen when the port is fixed."""
    data = tmp_path / "n"
    data.mkdir()
    key = secrets.token_bytes(32)
    (data / "swarm.key").write_text(format_swarm_key(key))
    ident = Identity.load_or_create(data)
    proc = _run(["p2p", "invite", "--data-dir", str(data)], tmp_path,
                IPFS_ACCELERATE_NETWORK__LISTEN='["/ip4/127.0.0.1/tcp/4999"]')
    assert proc.returncode == 0, proc.stderr
    inv = decode_invite(proc.stdout.strip())
    assert inv.key == key and inv.addrs == (f"/ip4/127.0.0.1/tcp/4999/p2p/{ident.peer_id_str}",)
    port0 = _run(["p2p", "invite", "--data-dir", str(data)], tmp_path,
                 IPFS_ACCELERATE_NETWORK__LISTEN='["/ip4/127.0.0.1/tcp/0"]')
    assert "no fixed port" in _one_error_line(port0)
