"""Direct event push and replication speed (issue 9 items 3 and 4), push off vs on in one run.

Every peer is a real ``ipfs-accelerate p2p start`` process (TCP on 127.0.0.1, no mDNS, one
network key, MCP over streamable HTTP), started by :mod:`bench.bench_p2p`'s harness; each
configuration runs once with ``network.direct_push = false`` (gossip alone, as before) and once
with it on, in the same run:

1. **round trip**: one libp2p request/response between this bench process (its own host) and a
   peer: a heads request on the blocks protocol on a new stream, as our protocols make them, and
   one frame each way on a stream already open (the floor a direct push pays);
2. **remote dispatch**: a 1-task p2p-only workflow submitted on A runs on B; time until
   wait_for_workflow on A returns completed, against the same workflow local-only on A,
   interleaved; goal: remote / local at the median <= 1.25; the overhead (remote - local) is also
   given as a multiple of the round trip;
3. **replication**: 100 workflows submitted back to back on one peer (MCP, one client); the time
   from the last submit returning until every peer holds all 100 (get_node_info polled on every
   peer). Without inference: the submitter is the only peer serving the model and the
   workflows are p2p-only, so no peer may run them (pure submit ops, nothing competes for the
   CPU). Goals: 3 peers within 2 s; 5 peers within 1 s. With inference: every peer serves the
   model and each workflow is 10 p2p-eligible tasks, so inference runs while they replicate.

Run alone: ``.venv/bin/python -m bench.bench_replication``. Prints figures; never asserts speed.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.bench_mcp import MODEL, call, pct, sentences, shared_cache_dir, tasks_of  # noqa: E402
from bench.bench_p2p import FAILED_SECTIONS, open_clients, run_wf, section, start_peers, stop_all, wait_peers_see  # noqa: E402
from bench.check import BenchError, require  # noqa: E402

RTT_REPS = 200
DISPATCH_REPS = 30
BURST = 100
POLL_S = 0.02
RESULTS: dict[str, Any] = {}


def mode(push: bool) -> str:
    return "push on " if push else "push off"


def env_of(key: Path, push: bool, **extra: str) -> dict[str, str]:
    return {"IPFS_ACCELERATE_NETWORK__PSK_FILE": str(key), "IPFS_ACCELERATE_NETWORK__DIRECT_PUSH": str(push).lower(),
            "IPFS_ACCELERATE_INFERENCE__AUTO_PULL": "false", **extra}


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# ------------------------------------------------------------------------------ round trip

async def round_trips(key: Path, addr: str, peer_id: str) -> dict[str, float]:
    """Median ms of RTT_REPS heads requests on new streams, and of frames on one open stream."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from p2p.config import NetworkConfig
    from p2p.net import load_swarm_key, open_host
    from p2p.protocols.wire import HeadsReply, HeadsRequest, blocks_protocol, decode_reply, encode

    cfg = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False)
    req = encode(HeadsRequest())
    async with open_host(create_new_key_pair(), cfg, load_swarm_key(key)) as net:
        await net.connect(addr)
        fresh: list[float] = []
        for i in range(RTT_REPS + 20):
            t = time.perf_counter()
            reply = decode_reply(await net.request(peer_id, blocks_protocol(cfg.network), req))
            if i >= 20:  # warm-up first
                fresh.append(time.perf_counter() - t)
            require(isinstance(reply, HeadsReply), f"the peer answered a heads request with {reply!r}")
        reused: list[float] = []
        async with net.open_stream(peer_id, blocks_protocol(cfg.network)) as stream:
            for i in range(RTT_REPS + 20):
                t = time.perf_counter()
                await stream.write_frame(req)
                reply = decode_reply(await stream.read_frame())
                if i >= 20:
                    reused.append(time.perf_counter() - t)
                require(isinstance(reply, HeadsReply), f"the peer answered a heads request with {reply!r}")
    require(len(fresh) == len(reused) == RTT_REPS, "round trips: not every request was answered")
    return {"new_stream": statistics.median(fresh), "open_stream": statistics.median(reused),
            "new_stream_p99": pct(fresh, 99), "open_stream_p99": pct(reused, 99)}


# ------------------------------------------------------------------------- remote dispatch

def bench_dispatch(tmp: Path, cache_dir: Path, key: Path, push: bool) -> None:
    import trio

    peers = start_peers([{"name": "A", **env_of(key, push)}, {"name": "B", "bootstrap": 0, **env_of(key, push)}],
                        tmp, cache_dir)
    a_peer, b_peer = peers
    res: dict[str, list[float]] = {"remote": [], "local": []}
    out: dict[str, Any] = {}
    try:
        async def main() -> None:
            async with AsyncExitStack() as stack:
                a, b = await open_clients(stack, peers)
                await wait_peers_see([a, b], 1)
                await run_wf(b, ["warm up b"], "local-only")
                await run_wf(a, ["warm up a"], "local-only")
                for i in range(3):
                    await run_wf(a, [f"warm remote {i}"], "p2p-only")
                out["rtt"] = await round_trips(key, b_peer.addr, b_peer.peer_id)
                for i in range(DISPATCH_REPS):
                    for kind in (("remote", "local") if i % 2 == 0 else ("local", "remote")):
                        tag = "p2p-only" if kind == "remote" else "local-only"
                        t0 = time.perf_counter()
                        sub = await call(a, "submit_workflow", name=f"{kind}-{i}", tasks=tasks_of([f"ping {kind} {i}"]), tag=tag)
                        st = await call(a, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=60)
                        res[kind].append(time.perf_counter() - t0)
                        require(st["state"] == "completed", f"{kind} {i}: workflow ended {st['state']}")
                        want = b_peer.peer_id if kind == "remote" else a_peer.peer_id
                        require(st["tasks"][0]["peer"] == want, f"{kind} {i}: ran on {st['tasks'][0]['peer']}, not {want}")

        trio.run(main)
    finally:
        stop_all(peers)
    rtt = out["rtt"]
    remote, local = statistics.median(res["remote"]), statistics.median(res["local"])
    ratio = remote / local
    over = remote - local
    RESULTS[f"dispatch {mode(push)}"] = {"remote": remote, "local": local, "ratio": ratio, "rtt": rtt}
    print(f"  libp2p round trip, bench process <-> B, median of {RTT_REPS}: heads request on a new stream "
          f"{rtt['new_stream'] * 1e3:.2f} ms (p99 {rtt['new_stream_p99'] * 1e3:.2f}); one frame each way on an open "
          f"stream {rtt['open_stream'] * 1e3:.2f} ms (p99 {rtt['open_stream_p99'] * 1e3:.2f})")
    print(f"  1-task workflow on A, {DISPATCH_REPS} each, interleaved, submit_workflow call -> wait_for_workflow completed:")
    print(f"    local-only on A {local * 1e3:.1f} ms (p99 {pct(res['local'], 99) * 1e3:.1f}); p2p-only, runs on B "
          f"{remote * 1e3:.1f} ms (p99 {pct(res['remote'], 99) * 1e3:.1f})")
    print(f"    remote / local = {ratio:.2f} (goal <= 1.25: {verdict(ratio <= 1.25)}); overhead {over * 1e3:.1f} ms = "
          f"{over / rtt['new_stream']:.1f} x the new-stream round trip, {over / rtt['open_stream']:.1f} x the open-stream one")


# ----------------------------------------------------------------------------- replication

def bench_burst(tmp: Path, cache_dir: Path, key: Path, push: bool, n_peers: int, inference: bool) -> None:
    import trio

    one = {"IPFS_ACCELERATE_INFERENCE__THREADS": "1"}
    serve_none = {} if inference else {"IPFS_ACCELERATE_INFERENCE__SERVE": "[]"}
    specs = [{"name": "P0", **env_of(key, push, **one)}]
    specs += [{"name": f"P{i}", "bootstrap": 0, **env_of(key, push, **one, **serve_none)} for i in range(1, n_peers)]
    peers = start_peers(specs, tmp, cache_dir)
    out: dict[str, Any] = {}
    try:
        async def main() -> None:
            async with AsyncExitStack() as stack:
                clients = await open_clients(stack, peers)
                await wait_peers_see(clients, n_peers - 1, timeout=60) if inference else await _see_all(clients, n_peers - 1)
                base = [(await call(c, "get_node_info"))["workflows"] for c in clients]
                submitted = trio.Event()
                done: dict[str, float] = {}

                async def submit_all() -> None:
                    t0 = time.perf_counter()
                    for k in range(BURST):
                        if inference:
                            texts, tag = sentences(10, seed=2000 + k), "p2p-eligible"
                        else:
                            texts, tag = [f"replicate {k}"], "p2p-only"  # nobody else serves the model: never runs
                        await call(clients[0], "submit_workflow", name=f"burst-{k}", tasks=tasks_of(texts), tag=tag)
                    done["first"] = t0
                    done["last"] = time.perf_counter()
                    submitted.set()

                async with trio.open_nursery() as n:
                    n.start_soon(submit_all)
                    with trio.fail_after(300):
                        while True:
                            counts = [(await call(c, "get_node_info"))["workflows"] for c in clients]
                            now = time.perf_counter()
                            if all(x - b >= BURST for x, b in zip(counts, base)):
                                await submitted.wait()
                                out["held"] = now
                                break
                            await trio.sleep(POLL_S)
                out.update(done)

        trio.run(main)
    finally:
        stop_all(peers)
    lag = max(0.0, out["held"] - out["last"])
    goal = 2.0 if n_peers <= 3 else 1.0
    what = "with inference running" if inference else "no inference"
    RESULTS[f"burst {n_peers} {what} {mode(push)}"] = lag
    print(f"  {BURST} workflows submitted back to back on P0 in {(out['last'] - out['first']):.2f} s; every one of "
          f"{n_peers} peers holds all {BURST} {lag:.2f} s after the last submit returned "
          f"(goal <= {goal:g} s: {verdict(lag <= goal)})")


async def _see_all(clients: list[Any], n_others: int, timeout: float = 60) -> None:
    """Until every peer lists n_others live peers (serving a model or not)."""
    import trio

    with trio.fail_after(timeout):
        while True:
            counts = [len((await call(c, "list_peers"))["peers"]) for c in clients]
            if all(n >= n_others for n in counts):
                return
            await trio.sleep(0.1)


def main() -> None:
    from inference.export import ensure_onnx
    from inference.models import resolve_model
    from mcp_server.log import configure_logging
    from p2p.net.psk import generate_swarm_key

    configure_logging("warning")
    cache_dir = shared_cache_dir()
    ensure_onnx(resolve_model(MODEL), "embedding", cache_dir, 17)
    FAILED_SECTIONS.clear()
    with tempfile.TemporaryDirectory(prefix="bench-repl-") as d:
        tmp = Path(d)
        key = tmp / "swarm.key"
        generate_swarm_key(key)
        for push in (False, True):
            section(f"remote dispatch, {mode(push)}", bench_dispatch, tmp / f"dispatch-{push}", cache_dir, key, push)
        for n_peers, inference in ((3, False), (5, False), (3, True)):
            for push in (False, True):
                what = "inference running" if inference else "no inference"
                section(f"{BURST} back-to-back submits, {n_peers} peers, {what}, {mode(push)}", bench_burst,
                        tmp / f"burst-{n_peers}-{inference}-{push}", cache_dir, key, push, n_peers, inference)
    print("\n[summary: push off -> on]")
    for push in (False, True):
        r = RESULTS.get(f"dispatch {mode(push)}")
        if r:
            print(f"  dispatch {mode(push)}: remote {r['remote'] * 1e3:.1f} ms / local {r['local'] * 1e3:.1f} ms = "
                  f"{r['ratio']:.2f} (goal <= 1.25: {verdict(r['ratio'] <= 1.25)}); overhead = "
                  f"{(r['remote'] - r['local']) / r['rtt']['new_stream']:.1f} round trips")
    for k, v in RESULTS.items():
        if k.startswith("burst"):
            goal = 2.0 if " 3 " in k else 1.0
            print(f"  {k}: held everywhere {v:.2f} s after the last submit (goal <= {goal:g} s: {verdict(v <= goal)})")
    if not RESULTS:
        raise BenchError("bench_replication measured nothing")
    if FAILED_SECTIONS:
        raise BenchError(f"{len(FAILED_SECTIONS)} section(s) failed: {'; '.join(FAILED_SECTIONS)}")


if __name__ == "__main__":
    main()
