"""A cluster of real peers: `ipfs-accelerate p2p start` processes on loopback, driven over MCP."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio
from mcp import Client

from tests.procs import cli_env, free_port, start, stop, wait_port

PEER_ID = re.compile(r"^peer id: (\S+)", re.M)
ADDR = re.compile(r"^  (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\S+)", re.M)


@dataclass
class Peer:
    name: str
    data_dir: Path
    mcp_port: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    peer_id: str = ""
    addr: str = ""
    listen_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mcp_port}/mcp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def liveness_lines(self, limit: int = 40) -> str:
        """This node's log lines about leases, re-checks and pauses: what a failed liveness
        assertion needs to be diagnosed from a CI log alone."""
        keys = ("went silent", "re-check", "answered a ping", "pause", "resum", "peer alive", "disconnect")
        lines = [ln for ln in self.log_text().splitlines() if any(k in ln for k in keys)]
        return f"--- {self.name} ({self.peer_id}) ---\n" + "\n".join(lines[-limit:])


@dataclass
class Cluster:
    root: Path
    cache_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "IPFS_ACCELERATE_NETWORK__HEARTBEAT_S": "0.5",
            "IPFS_ACCELERATE_NETWORK__REANNOUNCE_S": "1",
            "IPFS_ACCELERATE_SCHEDULER__LEASE_S": "3",
        }
        return cli_env(self.cache_dir, **{**base, **self.env_extra, **extra})

    def start(self, name: str, *, bootstrap: list[Peer] = (), extra: list[str] = (), env: dict[str, str] | None = None,
              mdns: bool = False, port: int = 0, open: bool = False, _no_wait: bool = False) -> Peer:
        """Start (or restart) peer ``name``. Every peer runs with the harness's one network key
        (``tests.procs.shared_swarm_key``) unless ``open`` (an open network: no key, for peers
        that cannot speak py-libp2p's private network, such as js-libp2p) or ``env`` says else."""
        peer = self.peers.get(name)
        if peer is None:
            data = self.root / name
            args = ["p2p", "start", "--node-id", name, "--data-dir", str(data),
                    "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--mdns" if mdns else "--no-mdns",
                    "--mcp-port", str(free_port())]
            for b in bootstrap:
                args += ["--bootstrap", b.addr]
            if open:
                args.append("--open")
            args += list(extra)
            peer = Peer(name, data, int(args[args.index("--mcp-port") + 1]), args, self.root / f"{name}.log")
            self.peers[name] = peer
        keyless = {"IPFS_ACCELERATE_NETWORK__PSK_FILE": ""} if "--open" in peer.args else {}
        peer.proc = start(peer.args, self.env(**{**keyless, **(env or {})}), peer.log)
        if not _no_wait:
            self._await_up(peer)
        return peer

    def start_many(self, *specs: dict[str, Any]) -> list[Peer]:
        """Start several peers at once and wait until all are up; each spec is :meth:`start`'s
        keyword arguments plus ``name``. Why: a start is ~2 s of imports and loading, mostly
        waiting, and peers that only need an already running bootstrap peer need not queue."""
        peers = [self.start(spec["name"], **{k: v for k, v in spec.items() if k != "name"}, _no_wait=True)
                 for spec in specs]
        for peer in peers:
            self._await_up(peer)
        return peers

    def _await_up(self, peer: Peer, timeout: float = 120) -> None:
        assert peer.proc is not None
        wait_port(peer.mcp_port, peer.proc, peer.log, timeout)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = peer.log_text()
            ids, addrs = PEER_ID.findall(text), ADDR.findall(text)
            if ids and addrs:
                peer.peer_id, peer.addr = ids[-1], addrs[-1]
                peer.listen_port = int(peer.addr.split("/tcp/")[1].split("/")[0])
                return
            time.sleep(0.05)
        raise AssertionError(f"{peer.name} printed no peer id/addr:\n{peer.log_text()[-3000:]}")

    def pin_port(self, peer: Peer) -> None:
        """Restart on the same libp2p port (so bootstrap addresses stay valid)."""
        i = peer.args.index("--listen")
        peer.args[i + 1] = f"/ip4/127.0.0.1/tcp/{peer.listen_port}"

    def kill(self, peer: Peer, sig: int = signal.SIGKILL) -> int:
        assert peer.proc is not None
        code = stop(peer.proc, sig)
        peer.proc = None
        return code

    def stop_all(self) -> None:
        for p in self.peers.values():
            if p.proc is not None:
                try:
                    stop(p.proc, signal.SIGTERM, timeout=15)
                except AssertionError:
                    pass
                p.proc = None


async def call(peer: Peer, tool: str, /, **args: Any) -> Any:
    async with Client(peer.url) as client:
        res = await client.call_tool(tool, args)
    assert not res.is_error, f"{tool} on {peer.name}: {res.content}"
    return res.structured_content


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2) -> None:
    with trio.move_on_after(timeout):
        while True:
            if await check():
                return
            await trio.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")


async def wait_peers(peer: Peer, others: list[Peer], timeout: float = 60) -> None:
    want = {o.peer_id for o in others}

    async def seen() -> bool:
        listed = await call(peer, "list_peers")
        return want <= {p["peer_id"] for p in listed["peers"] if p["models"]}

    await eventually(seen, timeout, f"{peer.name} to see {[o.name for o in others]}")


# --- Whole-status reads, field-by-field comparison and the clock's own record (issue 7 tests) ---

PAGE_FIELDS = ("offset", "limit", "has_more")


async def full_status(peer: Peer, wid: str, *, include_results: bool = True, page: int = 100) -> dict[str, Any]:
    """Every page of ``get_workflow_status`` joined: the summary fields once, every task in order.

    A summary that changes between pages (the workflow moved while we paged) is recorded under
    ``"torn"`` so a comparison fails and the caller asks again once the network has settled."""
    summary: dict[str, Any] | None = None
    tasks: list[dict[str, Any]] = []
    torn = False
    offset = 0
    while True:
        st = await call(peer, "get_workflow_status", workflow_id=wid, include_results=include_results,
                        offset=offset, limit=page, format="floats")
        page_tasks = st.pop("tasks")
        tasks += page_tasks
        more = st["has_more"]
        head = {k: v for k, v in st.items() if k not in PAGE_FIELDS}
        if summary is None:
            summary = head
        elif head != summary:
            torn = True
        if not more:
            break
        assert page_tasks, f"{peer.name}: an empty page of {wid} at offset {offset} says more follow"
        offset = st["offset"] + len(page_tasks)  # the server may cut a page short to fit one reply
    assert summary is not None
    out = {**summary, "tasks": tasks}
    if torn:
        out["torn"] = True
    return out


def status_diff(a: dict[str, Any], b: dict[str, Any], limit: int = 12) -> list[str]:
    """Field-by-field differences between two full statuses (empty when they agree on everything)."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        if k == "tasks":
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            out.append(f"{k}: {a.get(k, '<absent>')!r} != {b.get(k, '<absent>')!r}")
    ta, tb = a.get("tasks", []), b.get("tasks", [])
    if len(ta) != len(tb):
        out.append(f"len(tasks): {len(ta)} != {len(tb)}")
    for x, y in zip(ta, tb):
        for k in sorted(set(x) | set(y)):
            if x.get(k, "<absent>") != y.get(k, "<absent>"):
                vx, vy = repr(x.get(k, "<absent>"))[:160], repr(y.get(k, "<absent>"))[:160]
                out.append(f"{x.get('task_id')}.{k}: {vx} != {vy}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def clock_ops(data_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every (author, op) in a node's clock, in the order the node applied its events.

    Read-only from the node's own SQLite file (WAL: safe while the node runs). This is the
    ground truth for "how many times did a task run": each ``task.done`` is one finished
    execution, whatever the fold later made of it."""
    import sqlite3

    from p2p.clock import codec

    db = sqlite3.connect(f"file:{data_dir / 'clock.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT b.data FROM events e JOIN blocks b ON b.cid = e.cid ORDER BY e.ord").fetchall()
    finally:
        db.close()
    out: list[tuple[str, dict[str, Any]]] = []
    for (data,) in rows:
        ev = codec.decode(data)
        out += [(ev["author"], op) for op in ev["ops"]]
    return out


@dataclass
class RunCounts:
    """Executions and re-claims of one set of tasks, counted from the clock's ops."""

    done: dict[str, int]  # task id -> task.done ops (distinct author, attempt)
    claims: dict[str, int]  # task id -> task.claim ops
    superseding: int  # claims that supersede an earlier attempt (lease expiry)
    expired_fails: int  # task.fail ops with expired=True

    @property
    def ran_twice(self) -> list[str]:
        return sorted(t for t, n in self.done.items() if n > 1)

    @property
    def reclaimed(self) -> list[str]:
        return sorted(t for t, n in self.claims.items() if n > 1)

    @property
    def extra_runs(self) -> int:
        return sum(n - 1 for n in self.done.values() if n > 1)


def run_counts(ops: list[tuple[str, dict[str, Any]]], wids: set[str] | None = None) -> RunCounts:
    done: dict[str, set[tuple[str, int]]] = {}
    claims: dict[str, int] = {}
    superseding = expired = 0
    for author, op in ops:
        tid = op.get("task_id")
        if not isinstance(tid, str) or (wids is not None and tid.split("/")[0] not in wids):
            continue
        kind = op.get("op")
        if kind == "task.done":
            done.setdefault(tid, set()).add((author, op.get("attempt", 0)))
        elif kind == "task.claim":
            claims[tid] = claims.get(tid, 0) + 1
            superseding += bool(op.get("supersedes"))
        elif kind == "task.fail" and op.get("expired"):
            expired += 1
    return RunCounts({t: len(s) for t, s in done.items()}, claims, superseding, expired)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def children_rss_kib(pid: int) -> list[int]:
    """RSS of each process ``pid`` started (its inference workers), in KiB."""
    import psutil

    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out.append(child.memory_info().rss // 1024)
        except psutil.NoSuchProcess:  # a worker stopped meanwhile
            pass
    return out


async def call_error(peer: Peer, tool: str, /, **args: Any) -> str:
    """A tool call that must fail: its error text."""
    from mcp import Client

    async with Client(peer.url) as client:
        res = await client.call_tool(tool, args)
    assert res.is_error, f"{tool} on {peer.name} succeeded: {res.structured_content}"
    return " ".join(getattr(c, "text", "") for c in res.content)


async def wait_done(peer: Peer, wid: str, timeout: float = 300) -> dict[str, Any]:
    """Wait (in wait_for_workflow's 60 s slices) until ``wid`` is terminal on ``peer``; its summary."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{wid} not finished on {peer.name} after {timeout:g} s: {st}")
        try:
            st = await call(peer, "wait_for_workflow", workflow_id=wid, timeout_s=min(60.0, left), limit=1)
        except AssertionError as exc:
            if "unknown workflow id" not in str(exc):
                raise
            await trio.sleep(0.2)  # submitted elsewhere and not replicated here yet
            continue
        if st["state"] in ("completed", "failed", "cancelled"):
            st.pop("tasks")
            return st


async def settled(peers: list[Peer], wids: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Wait until every peer reports one clock hash and identical full statuses (every field of
    every page, results included) for every workflow in ``wids``; return those statuses.
    On timeout, the assertion names the first differing fields."""
    last: list[str] = []

    async def agree() -> bool:
        nonlocal last
        hashes = [(await call(p, "get_node_info"))["clock"]["hash"] for p in peers]
        if len(set(hashes)) != 1:
            last = [f"clock hashes differ: {dict(zip([p.name for p in peers], hashes))}"]
            return False
        for wid in wids:
            ref = await full_status(peers[0], wid)
            for p in peers[1:]:
                other = await full_status(p, wid)
                diff = status_diff(ref, other) + (["torn page"] if "torn" in ref or "torn" in other else [])
                if diff:
                    last = [f"{wid} {peers[0].name} vs {p.name}:"] + diff
                    return False
        after = [(await call(p, "get_node_info"))["clock"]["hash"] for p in peers]
        if after != hashes:
            last = ["clock moved while comparing"]
            return False
        return True

    try:
        await eventually(agree, timeout, "every peer to agree field by field", every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(last)) from None
    return {wid: await full_status(peers[0], wid) for wid in wids}


async def wait_known(peer: Peer, wids: list[str], timeout: float = 60) -> None:
    """Wait until ``peer`` knows every workflow in ``wids`` (submitted elsewhere, replicated here)."""
    async def known() -> bool:
        listed = await call(peer, "list_workflows", limit=10_000)
        return set(wids) <= {w["workflow_id"] for w in listed["workflows"]}

    await eventually(known, timeout, f"{peer.name} to know {len(wids)} workflows")


async def wait_all_peers(peers: list[Peer], timeout: float = 60) -> None:
    """Return once every peer sees every other one."""
    for p in peers:
        await wait_peers(p, [o for o in peers if o is not p], timeout)
