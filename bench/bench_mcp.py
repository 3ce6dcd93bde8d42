"""The MCP path end to end, the clock fold, and status latency (issue 3).

1. 512 single-sentence embedding tasks in one workflow over MCP stdio (submit_workflow, then
   wait_for_workflow), against raw onnxruntime at batch 32 on the same exported graph (the
   graph already ends in mean pooling + L2 normalisation, so tokenize + session.run is the same
   work). Rounds are interleaved and the ratio is the median of per-round ratios. Target >= 0.95.
2. The clock: append + fold of the events a 10,000-task run writes (submits, then claim / start /
   done ops in events of up to 256 ops, done ops carrying a 1,536-byte embedding), and the fold on
   restart (reopen the SQLite file, fold every event into a fresh State — what Scheduler.load()
   does; target <= 0.5 s), for the batched clock and for 10,000 one-op events (worst case).
   Baseline: plain sqlite3 insert / select of the same block bytes.
3. get_workflow_status on a 1,000-task workflow: median / p99 over stdio and in memory, with and
   without results, against get_node_info in the same run.

Run alone: ``.venv/bin/python -m bench.bench_mcp``. Prints figures; never asserts speed.
"""

from __future__ import annotations

from bench.check import require, require_count, require_folded
from bench.raw_ort import raw_ort_runner

import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
CLI = str(REPO / ".venv" / "bin" / "ipfs-accelerate")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
N_SENTENCES = 512
BATCH = 32
ROUNDS = 4
EMBEDDING_BYTES = 1536
STATUS_TASKS = 1000


# --------------------------------------------------------------------------- shared helpers

def sentences(n: int, seed: int = 0) -> list[str]:
    """n distinct ~15-word sentences (the index makes each one unique)."""
    from bench.bench_inference import sentences as words

    return [f"{s[:-1]} item {seed}-{i}." for i, s in enumerate(words(n, seed))]


def shared_cache_dir() -> Path:
    """The ONNX cache the benchmarks share (inference.cache_dir, else <data_dir>/onnx)."""
    from inference.export import cache_root
    from mcp_server.settings import load_settings

    s = load_settings()
    root = cache_root(s.data_path, s.inference.cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def cli_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               IPFS_ACCELERATE_INFERENCE__CACHE_DIR=str(cache_dir))
    env.update(extra)
    return env


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def call(client: Any, name: str, /, **args: Any) -> dict[str, Any]:
    res = await client.call_tool(name, args)
    if res.is_error:
        raise RuntimeError(f"{name} failed: {res.content}")
    return res.structured_content


def tasks_of(texts: list[str]) -> list[dict[str, str]]:
    return [{"model": MODEL, "input": t} for t in texts]


async def read_all(client: Any, wid: str, n: int, include_results: bool) -> tuple[list[dict[str, Any]], int]:
    """Every task of a workflow, paging as the server asks (a page is cut to fit one 1 MiB
    reply: the next one starts at offset + limit). Returns (tasks, pages)."""
    tasks: list[dict[str, Any]] = []
    offset = pages = 0
    while True:
        st = await call(client, "get_workflow_status", workflow_id=wid, include_results=include_results,
                        offset=offset, limit=n, format="floats")
        pages += 1
        tasks += st["tasks"]
        require(st["tasks"] or not st["has_more"], f"get_workflow_status returned an empty page at offset {offset}")
        if not st["has_more"]:
            return tasks, pages
        offset += st["limit"]


# ------------------------------------------------------------------- 1. throughput over stdio

def _raw_ort(cache_dir: Path, threads: int = 0):
    """tokenizer + session.run at batch 32 on the engine's exported graph (bench.raw_ort)."""
    from inference.export import ensure_onnx
    from inference.models import resolve_model

    info = resolve_model(MODEL)
    art = ensure_onnx(info, "embedding", cache_dir, 17)
    run = raw_ort_runner(art.model_path, Path(info.path), info.max_length, threads)
    return run, art.model_path


def raw_ort_rate(threads: int = 1, n: int = N_SENTENCES, repeat: int = 2) -> float:
    """sent/s of raw onnxruntime at batch 32 (best of ``repeat`` after a warm-up); for subprocess baselines."""
    run, _ = _raw_ort(shared_cache_dir(), threads)
    run(sentences(64, seed=97))
    return max(run(sentences(n, seed=200 + i)) for i in range(repeat))


def _stdio_params(data_dir: Path, cache_dir: Path) -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=CLI,
        args=["--log-level", "warning", "mcp", "serve", "--transport", "stdio", "--data-dir", str(data_dir), "--no-network"],
        env=cli_env(cache_dir),
    )


async def _status_latency(client: Any, wid: str, n_plain: int, n_results: int) -> dict[str, list[float]]:
    """Interleaved: get_node_info, all 1,000 tasks' status (one page unless cut to fit a reply),
    and (every few) all 1,000 with include_results (several pages: each reply stays under 1 MiB)."""
    out: dict[str, list[float]] = {"get_node_info": [], "status": [], "status+results": [], "pages": [], "pages+results": []}
    every = max(1, n_plain // max(1, n_results))
    for i in range(n_plain):
        t = time.perf_counter()
        await call(client, "get_node_info")
        out["get_node_info"].append(time.perf_counter() - t)
        t = time.perf_counter()
        tasks, pages = await read_all(client, wid, STATUS_TASKS, False)
        out["status"].append(time.perf_counter() - t)
        out["pages"].append(pages)
        require_count(len(tasks), STATUS_TASKS, "get_workflow_status: tasks read")
        if i % every == 0 and len(out["status+results"]) < n_results:
            t = time.perf_counter()
            tasks, pages = await read_all(client, wid, STATUS_TASKS, True)
            out["status+results"].append(time.perf_counter() - t)
            out["pages+results"].append(pages)
            require_count(sum(len((x.get("result") or {}).get("embedding") or ()) == 384 for x in tasks),
                          STATUS_TASKS, "get_workflow_status with results: 384-d embeddings")
    return out


def _latency_table(title: str, lat: dict[str, list[float]]) -> None:
    base = statistics.median(lat["get_node_info"])
    print(f"  {title}")
    print(f"    {'call':<40} {'n':>4} {'median ms':>10} {'p99 ms':>9} {'/ node_info':>12}")
    pages = {"status": lat.get("pages"), "status+results": lat.get("pages+results")}
    for name, label in (("get_node_info", "get_node_info (baseline)"), ("status", f"get_workflow_status {STATUS_TASKS} tasks"),
                        ("status+results", "  ... include_results=true")):
        xs = lat[name]
        if xs:
            note = f"   ({max(pages[name])} page(s) of <= 1 MiB)" if pages.get(name) else ""
            print(f"    {label:<40} {len(xs):>4} {statistics.median(xs) * 1e3:>10.2f} {pct(xs, 99) * 1e3:>9.2f} "
                  f"{statistics.median(xs) / base:>11.1f}x{note}")


def bench_stdio(tmp: Path, cache_dir: Path) -> tuple[Path, str]:
    """Throughput rounds, then the 1,000-task status latency over stdio. Returns (data dir, wid)."""
    import trio
    from mcp import Client

    raw, model_path = _raw_ort(cache_dir)
    print(f"  model {MODEL}, ONNX graph {model_path}")
    data_dir = tmp / "stdio-node"
    figures: dict[str, list[float]] = {"mcp": [], "raw": [], "ratio": [], "results_s": []}
    result: dict[str, Any] = {}

    async def main() -> None:
        t = time.perf_counter()
        async with Client(_stdio_params(data_dir, cache_dir), read_timeout_seconds=600) as client:
            print(f"  stdio server up in {time.perf_counter() - t:.2f} s", flush=True)
            warm = await call(client, "submit_workflow", name="warm-up", tasks=tasks_of(sentences(64, seed=99)))
            await call(client, "wait_for_workflow", workflow_id=warm["workflow_id"], timeout_s=600)
            print(f"  warm-up workflow (64 tasks, model load included) done {time.perf_counter() - t:.2f} s after start", flush=True)
            raw(sentences(N_SENTENCES, seed=98))  # warm the raw session too
            for r in range(ROUNDS):
                texts = sentences(N_SENTENCES, seed=r + 1)
                t0 = time.perf_counter()
                sub = await call(client, "submit_workflow", name=f"round-{r}", tasks=tasks_of(texts))
                st = await call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=600)
                elapsed = time.perf_counter() - t0
                if st["state"] != "completed" or st["completed"] != N_SENTENCES:
                    raise RuntimeError(f"round {r}: workflow ended {st['state']} with {st['completed']}/{N_SENTENCES}")
                t1 = time.perf_counter()
                full, _ = await read_all(client, sub["workflow_id"], N_SENTENCES, True)
                figures["results_s"].append(time.perf_counter() - t1)
                require_count(sum(1 for x in full if x.get("result")), N_SENTENCES, f"round {r}: results returned")
                figures["mcp"].append(N_SENTENCES / elapsed)
                figures["raw"].append(raw(sentences(N_SENTENCES, seed=100 + r)))  # blocking: the server is idle
                figures["ratio"].append(figures["mcp"][-1] / figures["raw"][-1])
                print(f"    round {r + 1}: MCP stdio {figures['mcp'][-1]:6.0f} sent/s   raw ORT {figures['raw'][-1]:6.0f} sent/s"
                      f"   ratio {figures['ratio'][-1]:.3f}", flush=True)
            # a 1,000-task workflow for the status latency, over this same stdio connection
            sub = await call(client, "submit_workflow", name="status-1000", tasks=tasks_of(sentences(STATUS_TASKS, seed=7)))
            st = await call(client, "wait_for_workflow", workflow_id=sub["workflow_id"], timeout_s=600)
            require(st["state"] == "completed" and st["completed"] == STATUS_TASKS,
                    f"status-1000 workflow ended {st['state']} with {st['completed']}/{STATUS_TASKS}")
            result["wid"] = sub["workflow_id"]
            result["lat"] = await _status_latency(client, sub["workflow_id"], n_plain=100, n_results=15)

    trio.run(main)
    m, rw, ratio = (statistics.median(figures[k]) for k in ("mcp", "raw", "ratio"))
    print()
    print(f"  {'path (512 distinct ~15-word sentences)':<52} {'sent/s':>8}")
    print(f"  {'MCP stdio: submit_workflow -> wait_for_workflow':<52} {m:>8.0f}")
    print(f"  {'raw onnxruntime, batch 32 (tokenize + run)':<52} {rw:>8.0f}")
    print(f"  ratio MCP / raw ORT = {ratio:.3f} (median of {ROUNDS} per-round ratios; target >= 0.95) "
          f"{'OK' if ratio >= 0.95 else 'BELOW TARGET'}")
    print(f"  reading the 512 results afterwards (get_workflow_status include_results): "
          f"{statistics.median(figures['results_s']) * 1e3:.0f} ms median (not in the figure above)")
    print()
    _latency_table("status latency over stdio (1,000-task completed workflow):", result["lat"])
    return data_dir, result["wid"]


# ------------------------------------------------------------------------------- 2. the clock

def _raw_sqlite_insert(path: Path, blocks: list[bytes]) -> float:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE blocks (cid BLOB PRIMARY KEY, data BLOB)")
    t = time.perf_counter()
    for i, data in enumerate(blocks):
        db.execute("BEGIN")
        db.execute("INSERT INTO blocks VALUES (?, ?)", (i.to_bytes(8, "big"), data))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t
    db.close()
    return elapsed


def _raw_sqlite_select(path: Path) -> tuple[float, int]:
    t = time.perf_counter()
    db = sqlite3.connect(str(path))
    n = sum(1 for _ in db.execute("SELECT data FROM blocks ORDER BY rowid"))
    db.close()
    return time.perf_counter() - t, n


_ADVERT = {"op": "peer.advertise", "capacity": 2.0, "models": [MODEL]}


def _submit_op(wid: str, texts: list[str]) -> dict[str, Any]:
    return {"op": "workflow.submit", "workflow_id": wid, "name": wid, "priority": 5, "tag": "p2p-eligible",
            "tasks": [{"model": MODEL, "input": t} for t in texts], "created_at": time.time()}


def _task_ops(tid: str, emb: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    return (
        {"op": "task.claim", "task_id": tid, "attempt": 1, "capacity": 2.0},
        {"op": "task.start", "task_id": tid, "attempt": 1},
        {"op": "task.done", "task_id": tid, "attempt": 1,
         "result": {"embedding_f32": emb, "truncated": False},
         "stats": {"ms": 61.3, "backend": "onnx", "device": "cpu", "task": "embedding"}},
    )


def batched_stream(peer_id: str, n_tasks: int = 10_000, per_wf: int = 1000, per_event: int = 256) -> list[list[dict[str, Any]]]:
    """What the scheduler writes for n_tasks: per workflow a submit, its claims in 256-op events,
    then start/done in execution order (batches of 32), packed in 256-op events. Workflow ids
    are bound to ``peer_id``, the submitter (the fold rejects any other)."""
    from p2p.scheduler.ops import new_workflow_id

    emb = os.urandom(EMBEDDING_BYTES)
    events: list[list[dict[str, Any]]] = [[_ADVERT]]  # the fold counts a claim only after its author's advert
    texts = sentences(n_tasks, seed=3)
    for w in range(n_tasks // per_wf):
        wid = new_workflow_id(peer_id)
        events.append([_submit_op(wid, texts[w * per_wf:(w + 1) * per_wf])])
        ops = [_task_ops(f"{wid}/{i}", emb) for i in range(per_wf)]
        claims = [o[0] for o in ops]
        run: list[dict[str, Any]] = []
        for b in range(0, per_wf, BATCH):
            run += [o[1] for o in ops[b:b + BATCH]] + [o[2] for o in ops[b:b + BATCH]]
        for seq in (claims, run):
            events += [seq[i:i + per_event] for i in range(0, len(seq), per_event)]
    return events


def single_op_stream(peer_id: str, n_events: int = 10_000) -> list[list[dict[str, Any]]]:
    """n_events one-op events: one submit of (n-1)/3 tasks, then claim, start, done for each."""
    from p2p.scheduler.ops import new_workflow_id

    emb = os.urandom(EMBEDDING_BYTES)
    n_tasks = (n_events - 1) // 3
    wid = new_workflow_id(peer_id)
    events = [[_submit_op(wid, sentences(n_tasks, seed=4))], [_ADVERT]]  # a claim counts after its author's advert
    for i in range(n_tasks):
        events += [[op] for op in _task_ops(f"{wid}/{i}", emb)]
    return events


class _NoPeers:
    """The peer view of a Scheduler that only loads (nobody is alive; nothing is decided)."""

    def live_peers(self) -> list[Any]:
        return []

    def is_alive(self, peer_id: str) -> bool:
        return False

    def is_compatible(self, peer_id: str) -> bool:
        return False


def _expected_tasks(events: list[list[dict[str, Any]]]) -> int:
    return sum(len(op["tasks"]) for ops in events for op in ops if op.get("op") == "workflow.submit")


def _clock_case(tmp: Path, key: str, label: str, events: list[list[dict[str, Any]]], ident: Any) -> list[str]:
    """Append + fold ``events`` as ``ident``, then the fold on restart; raises BenchError unless
    every op was accepted and every submitted task ends done (before any figure is printed)."""
    from p2p.clock import MerkleClock
    from p2p.config import SchedulerConfig
    from p2p.scheduler.scheduler import Scheduler
    from p2p.scheduler.state import State, apply_event

    expected = _expected_tasks(events)
    path = tmp / f"clock-{key}.sqlite"
    clock = MerkleClock.open(path, ident)
    state = State()
    n_ops = sum(len(e) for e in events)
    t_append = t_fold = 0.0
    for ops in events:
        t = time.perf_counter()
        ev = clock.append(ops)
        t2 = time.perf_counter()
        apply_event(state, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
        t_append += t2 - t
        t_fold += time.perf_counter() - t2
    require_folded(state, expected, f"{label}: append + fold")
    blocks = [e.data for e in clock.events()]
    mb = sum(len(b) for b in blocks) / 1e6
    clock.close()
    base_insert = _raw_sqlite_insert(tmp / f"raw-{key}.sqlite", blocks)
    total = t_append + t_fold

    # restart: reopen, fold everything into a fresh State (the body of Scheduler.load()).
    # Each measurement 3 times, median (a shared machine; the first read also warms the page cache).
    runs: dict[str, list[float]] = {"restart": [], "open": [], "decode": [], "fold": [], "load": [], "select": []}
    for _ in range(3):
        t = time.perf_counter()
        clock = MerkleClock.open(path, ident)
        fresh = State()
        for ev in clock.events():
            apply_event(fresh, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
        runs["restart"].append(time.perf_counter() - t)
        t = time.perf_counter()
        decoded = list(clock.events())
        runs["decode"].append(time.perf_counter() - t)
        t = time.perf_counter()
        again = State()
        for ev in decoded:
            apply_event(again, bytes(ev.cid), ev.author, ev.height, ev.ops, parents=[bytes(p) for p in ev.parents], seq=ev.seq)
        runs["fold"].append(time.perf_counter() - t)
        clock.close()
        del decoded, again
        t = time.perf_counter()
        clock = MerkleClock.open(path, ident)
        runs["open"].append(time.perf_counter() - t)
        sched = Scheduler(clock, None, _NoPeers(), SchedulerConfig())  # type: ignore[arg-type]
        t = time.perf_counter()
        sched.load()
        runs["load"].append(time.perf_counter() - t)
        clock.close()
        sel, n_raw = _raw_sqlite_select(tmp / f"raw-{key}.sqlite")
        runs["select"].append(sel)
    # (the live state keeps result dicts in written key order, the reloaded one in DAG-CBOR order,
    # so compare the reloaded states with each other and the statuses with the live one)
    require_folded(fresh, expected, f"{label}: fold on restart")
    require_folded(sched.state, expected, f"{label}: Scheduler.load()")
    require(fresh.snapshot() == sched.state.snapshot(), f"{label}: the restart fold and Scheduler.load() disagree")
    require({t: fresh.task_status(x) for t, x in fresh.tasks.items()} == {t: state.task_status(x) for t, x in state.tasks.items()},
            f"{label}: the restart fold disagrees with the live fold")
    require(n_raw == len(events) == fresh.events, f"{label}: {n_raw} raw rows, {len(events)} events written, {fresh.events} folded")
    med = {k: statistics.median(v) for k, v in runs.items()}
    restart, base_select = med["restart"], med["select"]
    n = len(events)
    return [
        f"  {label}: {n} events, {n_ops} ops, {len(state.tasks)} tasks, {mb:.1f} MB of blocks",
        f"    append+fold   {n / total:>8.0f} events/s {n_ops / total:>8.0f} ops/s  ({total:.2f} s: append {t_append:.2f} s, "
        f"fold {t_fold:.2f} s) | raw sqlite insert, 1 commit/event {base_insert:.2f} s -> ratio {total / base_insert:.1f}x",
        f"    restart fold  {restart:.3f} s (open + decode + fold into a fresh State; target <= 0.5 s "
        f"{'OK' if restart <= 0.5 else 'ABOVE TARGET'})",
        f"                  parts: open {med['open']:.3f} s, read+decode {med['decode']:.3f} s, fold {med['fold']:.3f} s; "
        f"Scheduler.load() (fold + its checks) {med['load']:.3f} s  (medians of 3)",
        f"                  raw sqlite select of the same bytes {base_select:.3f} s -> ratio {restart / base_select:.0f}x",
    ]


def bench_clock(tmp: Path, n: int = 10_000) -> None:
    from p2p.identity import Identity

    cases = (("batched", "batched (<= 256 ops/event)", lambda pid: batched_stream(pid, n_tasks=n, per_wf=min(1000, n))),
             ("single", "one op per event (worst case)", lambda pid: single_op_stream(pid, n_events=n)))
    for key, label, make in cases:
        ident = Identity.generate()
        for line in _clock_case(tmp, key, label, make(ident.peer_id_str), ident):
            print(line, flush=True)


# ------------------------------------------------------------ 3. status latency in memory

def bench_in_memory(data_dir: Path, wid: str, cache_dir: Path) -> None:
    """The stdio server's data dir reopened in this process; the tools through Client(build_server)."""
    import trio
    from mcp import Client

    from inference.config import InferenceConfig
    from mcp_server.server import build_server
    from p2p.config import NetworkConfig, NodeConfig
    from p2p.node import Node

    cfg = NodeConfig(data_dir=data_dir, node_name="bench", inference=InferenceConfig(cache_dir=str(cache_dir)),
                     network=NetworkConfig(enabled=False, mdns=False))
    out: dict[str, Any] = {}

    async def main() -> None:
        t = time.perf_counter()
        async with Node.open(cfg) as node:
            out["open_s"] = time.perf_counter() - t
            out["events"] = len(node.clock)
            async with Client(build_server(node), raise_exceptions=True) as client:
                await _status_latency(client, wid, 10, 2)  # warm
                out["lat"] = await _status_latency(client, wid, n_plain=200, n_results=20)

    trio.run(main)
    require(out["events"] > 0, f"the reopened data dir {data_dir} holds no clock events")
    print(f"  node restart on that data dir ({out['events']} events in the clock): Node.open {out['open_s']:.3f} s")
    _latency_table("status latency in memory, Client(build_server(node)):", out["lat"])


def main() -> None:
    from mcp_server.log import configure_logging

    configure_logging("warning")
    cache_dir = shared_cache_dir()
    print(f"bench_mcp: ONNX cache {cache_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as d:
        tmp = Path(d)
        print("\n[1] 512 single-sentence embedding tasks, one workflow, MCP stdio vs raw onnxruntime", flush=True)
        data_dir, wid = bench_stdio(tmp, cache_dir)
        print("\n[2] Merkle clock: append + fold, and fold on restart", flush=True)
        bench_clock(tmp)
        print("\n[3] get_workflow_status on a 1,000-task workflow, in memory", flush=True)
        bench_in_memory(data_dir, wid, cache_dir)


if __name__ == "__main__":
    main()
