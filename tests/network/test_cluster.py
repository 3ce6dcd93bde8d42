"""Real peers in separate processes on loopback: discovery, replication, assignment, failover."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster import Cluster, Peer, call, clock_ops, eventually, wait_all_peers, wait_peers
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _tasks(n: int, tag: str = "") -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"{tag}Distributed sentence {i} about a cat on a mat."} for i in range(n)]




async def _same_view(a: Peer, b: Peer, wid: str, timeout: float = 30) -> None:
    async def same() -> bool:
        sa = await call(a, "get_workflow_status", workflow_id=wid)
        try:
            sb = await call(b, "get_workflow_status", workflow_id=wid)
        except AssertionError:
            return False
        ia, ib = await call(a, "get_node_info"), await call(b, "get_node_info")
        return sa == sb and ia["clock"]["hash"] == ib["clock"]["hash"]

    await eventually(same, timeout, f"{a.name} and {b.name} to agree on {wid} and the clock hash")


async def test_three_peers_share_a_p2p_only_workflow(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    n2 = cluster.start("n2", bootstrap=[n1])
    n3 = cluster.start("n3", bootstrap=[n2])  # n1 learns n3 from its peers
    await wait_peers(n1, [n2, n3])
    await wait_peers(n3, [n1, n2])

    sub = await call(n1, "submit_workflow", name="spread", tasks=_tasks(60), tag="p2p-only")
    wid = sub["workflow_id"]
    st = await call(n1, "wait_for_workflow", workflow_id=wid, timeout_s=300, include_results=True, format="floats")
    assert st["state"] == "completed" and st["completed"] == 60
    used = {t["peer"] for t in st["tasks"]}
    assert used == {n2.peer_id, n3.peer_id}, "both workers are used and never the submitter"
    assert all(len(t["result"]["embedding"]) == 384 for t in st["tasks"])
    for worker in (n2, n3):  # get_node_info reports the inference workers and replication
        info = await call(worker, "get_node_info")
        ran = sum(1 for t in st["tasks"] if t["peer"] == worker.peer_id and not t.get("cached"))
        assert sum(w["items"] for w in info["workers"]["workers"]) >= ran > 0, info["workers"]
        assert info["replication"]["synced_events"] > 0, info["replication"]
    await _same_view(n1, n3, wid)
    on3 = await call(n3, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    assert [t["result"] for t in on3["tasks"]] == [t["result"] for t in st["tasks"]]


@pytest.mark.parametrize("chunked", [False, True], ids=["inline", "chunked"])
async def test_kill_9_a_worker_mid_workflow(cluster: Cluster, chunked: bool) -> None:
    """A worker killed with -9 holding queued tasks: they go to the other worker. ``chunked``:
    the submitter keeps the inputs in chunks and the fold has records only for tasks ops are
    about (a lazy workflow), so the survivor takes over tasks it may have to fetch inputs for."""
    slow = {"IPFS_ACCELERATE_SCHEDULER__MAX_INFLIGHT": "1"}
    n1 = cluster.start("n1", env={"IPFS_ACCELERATE_SCHEDULER__INLINE_INPUTS_BYTES": "0"} if chunked else None)
    n2, n3 = cluster.start_many({"name": "n2", "bootstrap": [n1], "env": slow}, {"name": "n3", "bootstrap": [n1], "env": slow})
    # every peer knows every other before the submit: a worker that has not heard of n3 yet
    # would claim n3's share itself, and a claim written over a known claim is late
    await wait_all_peers([n1, n2, n3])
    sub = await call(n1, "submit_workflow", name="failover", tasks=_tasks(80), tag="p2p-only")
    wid = sub["workflow_id"]

    async def n3_tasks() -> list[tuple[str, str]]:
        st = await call(n1, "get_workflow_status", workflow_id=wid)
        return sorted((t["task_id"], t["state"]) for t in st["tasks"] if t.get("peer") == n3.peer_id)

    def premise(mine: list[tuple[str, str]]) -> bool:
        # it has finished one and still owns some it has not finished: the premise of the test
        return any(s == "done" for _, s in mine) and any(s == "claimed" for _, s in mine)

    async def n3_working() -> bool:
        return premise(await n3_tasks())

    # n3 runs a task in milliseconds, so what n1 reported may be over by the kill. Freeze n3
    # (SIGSTOP: it sends nothing more), wait until n1's view of n3's tasks stops changing (what
    # n3 sent before the freeze has been received and folded: a busy n1 can lag seconds), and
    # kill it only if n1 still sees it owning unfinished work; otherwise let it go on and retry.
    for _ in range(20):
        await eventually(n3_working, 120, "n3 to finish a task while it still owns queued ones")
        assert n3.proc is not None
        n3.proc.send_signal(signal.SIGSTOP)
        seen: list[tuple[str, str]] | None = None
        for _ in range(30):
            await trio.sleep(1.0)
            now = await n3_tasks()
            if now == seen:
                break
            seen = now
        if seen is not None and premise(seen):
            break
        n3.proc.send_signal(signal.SIGCONT)
    else:
        raise AssertionError("n3 never held unfinished work once frozen")
    cluster.kill(n3, signal.SIGKILL)
    st = await call(n1, "wait_for_workflow", workflow_id=wid, timeout_s=300, include_results=True, format="floats")
    assert st["state"] == "completed" and st["completed"] == 80, st
    assert all("embedding" in t["result"] for t in st["tasks"])
    retried = [t for t in st["tasks"] if t["attempts"] > 1]
    assert retried, "n3 owned queued tasks when it died; they must show a second attempt"
    for t in retried:
        assert t["peer"] == n2.peer_id
        assert any("silent" in e["error"] for e in t["errors"]), t
    assert {t["peer"] for t in st["tasks"]} == {n2.peer_id, n3.peer_id}
    (submit,) = [op for _, op in clock_ops(n1.data_dir) if op.get("op") == "workflow.submit" and op["workflow_id"] == wid]
    assert ("chunks" in submit) is chunked and ("inputs" in submit) is not chunked, sorted(submit)


async def test_restart_the_submitter_mid_workflow(cluster: Cluster) -> None:
    n1 = cluster.start("n1", env={"IPFS_ACCELERATE_SCHEDULER__MAX_INFLIGHT": "1"})
    n2 = cluster.start("n2", bootstrap=[n1], env={"IPFS_ACCELERATE_SCHEDULER__MAX_INFLIGHT": "1"})
    await wait_peers(n1, [n2])
    sub = await call(n1, "submit_workflow", name="resume", tasks=_tasks(60), tag="p2p-eligible")
    wid = sub["workflow_id"]

    async def started() -> bool:
        return (await call(n1, "get_workflow_status", workflow_id=wid))["completed"] >= 4

    await eventually(started, 120, "some progress")
    cluster.pin_port(n1)
    cluster.kill(n1, signal.SIGKILL)
    n1 = cluster.start("n1")
    st = await call(n1, "wait_for_workflow", workflow_id=wid, timeout_s=300, include_results=True, format="floats")
    assert st["state"] == "completed" and st["completed"] == 60
    assert {t["peer"] for t in st["tasks"]} == {n1.peer_id, n2.peer_id}
    await _same_view(n1, n2, wid)


async def test_a_late_joiner_picks_up_pending_work(cluster: Cluster) -> None:
    n1 = cluster.start("n1")
    sub = await call(n1, "submit_workflow", name="waiting", tasks=_tasks(10), tag="p2p-only")
    wid = sub["workflow_id"]
    st = await call(n1, "wait_for_workflow", workflow_id=wid, timeout_s=2)
    assert st["state"] == "pending"  # nobody but the submitter, who may not run it
    n2 = cluster.start("n2", bootstrap=[n1])
    st = await call(n1, "wait_for_workflow", workflow_id=wid, timeout_s=300)
    assert st["state"] == "completed" and {t["peer"] for t in st["tasks"]} == {n2.peer_id}
    listed = await call(n2, "list_workflows")
    assert wid in {w["workflow_id"] for w in listed["workflows"]}


async def test_join_a_running_node_from_the_cli(cluster: Cluster) -> None:
    from tests.procs import CLI

    n1, n2 = cluster.start_many({"name": "n1"}, {"name": "n2"})
    proc = await trio.run_process([CLI, "p2p", "join", "--data-dir", str(n2.data_dir), "--bootstrap", n1.addr],
                                  capture_stdout=True, capture_stderr=True, env=cluster.env(), check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert n1.peer_id in proc.stdout.decode()
    await wait_peers(n2, [n1])
    await wait_peers(n1, [n2])
    bad = await trio.run_process([CLI, "p2p", "join", "--data-dir", str(n2.data_dir), "--bootstrap", "/ip4/1.2.3.4"],
                                 capture_stdout=True, capture_stderr=True, env=cluster.env(), check=False)
    assert bad.returncode != 0 and b"Traceback" not in bad.stderr and bad.stderr.strip()


async def test_connect_peer_tool(cluster: Cluster) -> None:
    n1, n2 = cluster.start_many({"name": "n1"}, {"name": "n2"})
    res = await call(n2, "connect_peer", multiaddr=n1.addr)
    assert res == {"peer_id": n1.peer_id, "connected": True}
    await wait_peers(n2, [n1])
    peers = await call(n2, "list_peers")
    (p,) = peers["peers"]
    assert p["name"] == "n1" and DEFAULT_MODEL in p["models"] and p["last_seen_s"] < 5
    assert p["addrs"] and "cpu" in str(p["hardware"]).lower()


async def test_forged_events_are_rejected_and_the_node_keeps_working(cluster: Cluster) -> None:
    from tests.conftest import REPO, VENV_BIN

    n1 = cluster.start("n1")
    sub = await call(n1, "submit_workflow", name="victim", tasks=_tasks(2), tag="local-only")
    wid = sub["workflow_id"]
    before = await call(n1, "wait_for_workflow", workflow_id=wid, timeout_s=120, include_results=True, format="floats")
    assert before["state"] == "completed"
    events = (await call(n1, "get_node_info"))["clock"]["events"]

    proc = await trio.run_process(
        [str(VENV_BIN / "python"), str(REPO / "tests" / "network" / "attacker.py"), n1.addr, wid],
        capture_stdout=True, capture_stderr=True, env=cluster.env(), check=False, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    attack = __import__("json").loads(proc.stdout.decode().strip().splitlines()[-1])

    async def logged() -> bool:
        text = n1.log_text()
        # the tampered block is refused by the clock; the validly signed event is stored but its
        # op counts for nothing (it follows no submit in the DAG, and its author holds no claim)
        return "blocks rejected" in text and ("op ignored: its author holds no claim" in text or "op rejected" in text)

    await eventually(logged, 30, "the victim to log both forgeries")
    text = n1.log_text()
    assert attack["bad_sig"] in text and "signature" in text
    after = await call(n1, "get_workflow_status", workflow_id=wid, include_results=True, format="floats")
    assert after == before  # the forged result and the forged cancel changed nothing
    info = await call(n1, "get_node_info")
    assert info["clock"]["events"] == events + 1  # the validly signed event is kept, its op ignored
    again = await call(n1, "submit_workflow", name="still-works", tasks=_tasks(3), tag="local-only")
    st = await call(n1, "wait_for_workflow", workflow_id=again["workflow_id"], timeout_s=120)
    assert st["state"] == "completed"


async def test_a_peer_with_the_wrong_psk_cannot_join(cluster: Cluster, tmp_path: Path) -> None:
    from p2p.net import generate_swarm_key

    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    generate_swarm_key(key_a)
    generate_swarm_key(key_b)
    n1 = cluster.start("n1", extra=["--psk-file", str(key_a)])
    outsider, member = cluster.start_many({"name": "out", "bootstrap": [n1], "extra": ["--psk-file", str(key_b)]},
                                          {"name": "mem", "bootstrap": [n1], "extra": ["--psk-file", str(key_a)]})
    await wait_peers(n1, [member])
    await trio.sleep(2)
    seen = {p["peer_id"] for p in (await call(n1, "list_peers"))["peers"]}
    assert outsider.peer_id not in seen and member.peer_id in seen
    assert (await call(outsider, "list_peers"))["peers"] == []


async def test_large_results_travel_as_blocks(tmp_path: Path, shared_cache_dir: Path) -> None:
    """inline_result_bytes=0: every result is its own block, fetched by the submitter."""
    c = Cluster(tmp_path, shared_cache_dir, env_extra={"IPFS_ACCELERATE_SCHEDULER__INLINE_RESULT_BYTES": "0"})
    try:
        n1 = c.start("n1")
        n2 = c.start("n2", bootstrap=[n1])
        await wait_peers(n1, [n2])
        direct = await call(n1, "run_inference", model=DEFAULT_MODEL, inputs=[_tasks(1)[0]["input"]], format="floats")
        sub = await call(n1, "submit_workflow", name="blocks", tasks=_tasks(5), tag="p2p-only")
        await call(n1, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=300)

        async def fetched() -> bool:
            st = await call(n1, "get_workflow_status", workflow_id=sub["workflow_id"], include_results=True, format="floats")
            return all("result" in t for t in st["tasks"])

        await eventually(fetched, 30, "n1 to fetch every result block")
        st = await call(n1, "get_workflow_status", workflow_id=sub["workflow_id"], include_results=True, format="floats")
        assert {t["peer"] for t in st["tasks"]} == {n2.peer_id}
        a, b = direct["outputs"][0]["embedding"], st["tasks"][0]["result"]["embedding"]
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    finally:
        c.stop_all()


async def test_garbage_on_the_control_socket_harms_nothing(cluster: Cluster) -> None:
    import socket as pysocket

    from p2p.control import call as control_call

    n1 = cluster.start("n1")
    path = str(n1.data_dir / "control.sock")
    for payload in (b"[]\n", b"1\n", b"{not json\n", b'{"cmd": "nope"}\n', b""):
        with pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(payload)  # and hang up without reading the reply
    assert (n1.data_dir / "control.sock").stat().st_mode & 0o077 == 0  # owner only
    info = control_call(n1.data_dir, {"cmd": "info"})
    assert info["ok"] and info["info"]["peer_id"] == n1.peer_id
    assert (await call(n1, "get_node_info"))["peer_id"] == n1.peer_id
