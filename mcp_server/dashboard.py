"""The network page: a live web view of the node and its peers at ``/`` on the MCP HTTP port.

What it shows (issue 13 item 4): this node and every peer (name, id, hardware, models, queue,
workers as each heartbeat reports them, RTT, connection), the newest workflows with progress
bars and each peer's share of their done tasks, the most recent Merkle-clock events drawn as a
DAG, and task results per interval over the last minutes. The page (``static/network.html``: plain HTML/CSS/JS, nothing
fetched from the internet) polls ``GET /api/state`` every 1.5 s; this module builds that JSON.

Why these sources, and why they are cheap. Every read runs on the node's trio loop,
synchronously and without disk:

- peers and this node: ``Node.list_peers()`` (the peer table, in memory), the engine's
  ``workers_info()``, and the libp2p host's connection set;
- workflows: ``Node.list_workflows()`` (the fold's listing index and per-workflow counts, O(1)
  per workflow). The fold keeps no per-peer tally, so shares are counted here, from the tasks
  in memory, under a budget of ``SHARE_BUDGET`` task reads per refresh: each workflow shown is
  walked from a cursor, what each task was attributed to is remembered, and a workflow whose
  counts have not moved since its last full pass costs nothing. A 10,000-task workflow is thus
  never read whole on one refresh; until a pass has covered it the page says how many done
  tasks its shares count (``shares_counted``);
- clock events: a clock listener (``MerkleClock.subscribe``) keeps the last ``RECENT_EVENTS``
  applied events (a reference each: no encoding on the hot path) and counts their
  ``task.done`` ops into ``INTERVAL_S`` buckets (the throughput). Events applied before the page
  started are read once at start from the heads (``collect_blocks``: a read-only connection in a
  worker thread), so a restarted node shows its history too. A catch-up from a peer shows as a
  burst of results: they are results this node folded in that interval.

Several browsers polling share one state: it is rebuilt at most every ``MIN_REBUILD_S``.

The routes sit behind the MCP bearer token (``transports.BearerAuth``) and the MCP transport's
Host/Origin check, like ``/metrics``. A browser cannot send an ``Authorization`` header from the
address bar, so ``PageLogin`` (outside the token check) turns ``/?token=…`` into an HttpOnly,
SameSite=Strict cookie, and that cookie into the header, for the page's own two paths only:
never for ``/mcp``, whose tools a cookie must not reach.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections import deque
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import structlog
import trio

log = structlog.get_logger("mcp_server.dashboard")

PAGE_PATH = "/"
STATE_PATH = "/api/state"
PAGE_PATHS = (PAGE_PATH, STATE_PATH)
RECENT_EVENTS = 40  # clock events kept for the DAG
INTERVAL_S = 5.0  # one throughput bucket
INTERVALS = 60  # buckets shown: 5 minutes
WORKFLOWS_SHOWN = 12  # newest workflows on the page
SHARE_BUDGET = 1_000  # task reads per refresh for the per-peer shares, over all workflows shown (<= ~15 ms)
MIN_REBUILD_S = 0.5  # pollers within this share one built state
SEED_BYTES = 8 << 20  # read budget of the start-up read of the clock's recent events
COOKIE_PREFIX = "ia_page_token_"


# ---------------------------------------------------------------------------------- state

def _hardware(hw: Any) -> dict[str, Any]:
    """A few words of a hardware dict (a peer's comes off the wire: keep what has the right type)."""
    if not isinstance(hw, dict):
        return {}
    out: dict[str, Any] = {}
    cpus = hw.get("cpu_usable", hw.get("cpu_logical"))
    if isinstance(cpus, int) and not isinstance(cpus, bool):
        out["cpus"] = cpus
    ram = hw.get("ram_total_bytes")
    if isinstance(ram, (int, float)) and not isinstance(ram, bool) and math.isfinite(ram):
        out["ram_gb"] = round(ram / 2**30, 1)
    accel = hw.get("accelerators")
    if isinstance(accel, list):
        out["accelerators"] = [str(a)[:80] for a in accel[:8]]
    cuda = hw.get("cuda_devices")
    if isinstance(cuda, list) and cuda:
        out["cuda_devices"] = [str(d.get("name", d) if isinstance(d, dict) else d)[:80] for d in cuda[:8]]
    machine = hw.get("machine")
    if isinstance(machine, str):
        out["machine"] = machine[:32]
    return out


def _workers(w: Any) -> dict[str, Any] | None:
    """The few worker numbers the page shows, from ``workers_info()`` or a peer's summary."""
    if not isinstance(w, dict):
        return None
    return {k: w.get(k) for k in ("mode", "live", "busy", "starting", "target", "queue_depth")}


class _Shares:
    """Each workflow's per-peer tally of done tasks, counted from the tasks under a budget.

    ``by_task[i]`` is the peers task ``i`` was last seen done by (absent: not done when last
    read), ``tally`` their sum per peer. A pass walks the tasks from ``cursor``; when it wraps,
    the counts it started from are remembered, and while they stay the same the workflow is
    not read again (a done task's peer nearly never changes without the counts moving: a
    replicated verdict re-decided between the same states is the exception, and shows at the
    next pass that some other change starts)."""

    __slots__ = ("cursor", "by_task", "tally", "pass_counts", "settled_counts")

    def __init__(self) -> None:
        self.cursor = 0
        self.by_task: dict[int, tuple[str, ...]] = {}
        self.tally: dict[str, int] = {}
        self.pass_counts: tuple[int, ...] | None = None  # counts when the current pass began
        self.settled_counts: tuple[int, ...] | None = None  # counts a full pass ended on

    def record(self, i: int, peers: tuple[str, ...]) -> None:
        old = self.by_task.get(i)
        if old == peers:
            return
        for p in old or ():
            n = self.tally[p] - 1
            if n:
                self.tally[p] = n
            else:
                del self.tally[p]
        if peers:
            self.by_task[i] = peers
            for p in peers:
                self.tally[p] = self.tally.get(p, 0) + 1
        else:
            self.by_task.pop(i, None)


class NetworkPage:
    """The state behind the page for one node: a clock listener (recent events, throughput),
    the per-workflow share tallies, and the JSON builder. Run :meth:`run` in the server's
    nursery (it reads the history once, then waits); :meth:`close` stops the listener."""

    def __init__(self, node: Any, *, recent: int = RECENT_EVENTS) -> None:
        self.node = node
        self.recent: deque[tuple[Any, float]] = deque(maxlen=recent)  # (Event, wall time applied)
        self._buckets: deque[list[float]] = deque(maxlen=INTERVALS + 1)  # [bucket start, results]
        self._shares: dict[str, _Shares] = {}
        self._built: tuple[float, bytes] | None = None
        self._closed = False
        self.page_html = _load_page()  # (body, Content-Security-Policy)
        node.clock.subscribe(self._on_event)

    # -- the listener: O(ops) per event, no encoding (events are turned into JSON when read)
    def _on_event(self, event: Any) -> None:
        if self._closed:
            return
        now = time.time()
        self.recent.append((event, now))
        done = sum(1 for op in event.ops if op.get("op") == "task.done")
        if done:
            start = now - now % INTERVAL_S
            if self._buckets and self._buckets[-1][0] == start:
                self._buckets[-1][1] += done
            else:
                self._buckets.append([start, done])

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Read the events applied before the page started (once, off the loop), then wait."""
        task_status.started(self)
        try:
            await self._seed()
            await trio.sleep_forever()
        finally:
            self.close()

    async def _seed(self) -> None:
        from p2p.clock.cids import cid_from_bytes, cid_raw
        from p2p.clock.event import load_stored_event

        clock = self.node.clock
        room = self.recent.maxlen - len(self.recent) if self.recent.maxlen else 0
        heads = [cid_raw(h) for h in clock.heads()]
        if room <= 0 or not heads:
            return
        try:
            blocks = await clock.collect_blocks(heads, 1, self.recent.maxlen, SEED_BYTES)
        except Exception as exc:  # noqa: BLE001 - the page starts without history rather than failing the server
            log.warning("network page: clock history not read", error=f"{type(exc).__name__}: {exc}")
            return
        events = []
        for raw, data in blocks:  # breadth-first from the heads: newest first, roughly
            try:
                events.append(load_stored_event(cid_from_bytes(raw), data, -1))
            except Exception:  # noqa: BLE001 - a plain block, not an event
                continue
        have = {cid_raw(e.cid) for e, _ in self.recent}
        older = [(e, 0.0) for e in _causal(list(reversed(events))) if cid_raw(e.cid) not in have]
        merged = older + list(self.recent)
        self.recent = deque(merged[-self.recent.maxlen:], maxlen=self.recent.maxlen)

    def close(self) -> None:
        """Stop listening (the clock has no unsubscribe: the listener returns at once from now on)."""
        self._closed = True

    # -- the JSON
    def state_bytes(self) -> bytes:
        """The state as JSON, rebuilt at most every ``MIN_REBUILD_S`` (pollers share it)."""
        now = time.monotonic()
        if self._built is None or now - self._built[0] >= MIN_REBUILD_S:
            self._built = (now, json.dumps(self.state(), separators=(",", ":")).encode())
        return self._built[1]

    def state(self) -> dict[str, Any]:
        node = self.node
        listed = node.list_peers()
        names = {listed["self"]["peer_id"]: listed["self"]["name"]}
        names.update((p["peer_id"], p["name"]) for p in listed["peers"])
        return {
            "generated_at": time.time(),
            "node": self._self(listed["self"]),
            "peers": [self._peer(p) for p in listed["peers"]],
            "workflows": self._workflows(names),
            "clock": self._clock(names),
            "throughput": self._throughput(),
        }

    def _self(self, me: dict[str, Any]) -> dict[str, Any]:
        from p2p.node import VERSION

        node = self.node
        try:
            workers = node.engine.workers_info()
        except Exception:  # noqa: BLE001 - an engine without workers_info: inference in this process
            workers = {"mode": "in-process", "live": 1}
        return {
            "peer_id": me["peer_id"], "name": me["name"], "version": VERSION, "self": True,
            "uptime_s": round(time.time() - node.started_at, 1), "addrs": me["addrs"],
            "hardware": _hardware(me["hardware"]), "models": me["models"], "queue": me["queue"],
            "capacity": me["capacity"], "running": len(node.scheduler.running),
            "workers": _workers(workers),
            "networking": node.net is not None,
        }

    def _peer(self, p: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        pid = p["peer_id"]
        connection = None
        if node.net is not None:  # open or not, for how long, and how: direct, relayed or hole-punched
            since = node.net.connected_since(pid)
            connection = {"open": node.net.is_connected(pid),
                          "for_s": None if since is None else round(time.monotonic() - since, 1),
                          "kind": p.get("connection")}
        return {
            "peer_id": pid, "name": p["name"], "hardware": _hardware(p["hardware"]), "models": p["models"],
            "queue": p["queue"], "capacity": p["capacity"], "rtt_ms": p["rtt_ms"], "last_seen_s": p["last_seen_s"],
            "alive": node.peers.is_alive(pid), "compatible": p["compatible"],
            "incompatible_keys": p["incompatible_keys"], "outvoted": p["outvoted"], "connection": connection,
            "workers": _workers(p.get("workers")),  # as its heartbeat says (None from a peer that does not)
        }

    def _workflows(self, names: dict[str, str]) -> list[dict[str, Any]]:
        flows = self.node.list_workflows(limit=WORKFLOWS_SHOWN)
        budget = SHARE_BUDGET
        out = []
        for wf in flows:
            shares, budget = self._shares_of(wf, budget)
            counted = sum(shares.tally.values())
            total = wf["total"]
            finished = wf["completed"] + wf["failed"] + wf["cancelled"]
            out.append({
                **wf,
                "finished": finished,
                "progress": 1.0 if total == 0 else round(finished / total, 4),
                "shares": [{"peer_id": pid, "name": names.get(pid), "done": n, "share": round(n / counted, 4)}
                           for pid, n in sorted(shares.tally.items(), key=lambda kv: (-kv[1], kv[0]))],
                "shares_counted": len(shares.by_task),
            })
        shown = {wf["workflow_id"] for wf in flows}
        for wid in [w for w in self._shares if w not in shown]:
            del self._shares[wid]
        return out

    def _shares_of(self, summary: dict[str, Any], budget: int) -> tuple[_Shares, int]:
        """Advance the workflow's share count by up to ``budget`` task reads; returns what is left."""
        from p2p.scheduler.state import TaskStatus
        from p2p.scheduler.views import task_view

        wid = summary["workflow_id"]
        sh = self._shares.setdefault(wid, _Shares())
        counts = (summary["completed"], summary["failed"], summary["cancelled"], summary["running"],
                  summary["pending"])
        if counts == sh.settled_counts or budget <= 0:
            return sh, budget
        if summary["completed"] == 0:  # nothing done: nothing to attribute, nothing to read
            if sh.by_task:
                self._shares[wid] = sh = _Shares()
            sh.settled_counts = counts
            return sh, budget
        state = self.node.scheduler.state
        wf = state.workflows.get(wid)
        if wf is None:
            return sh, budget
        ids = wf.task_ids
        n = len(ids)
        if sh.cursor == 0:
            sh.pass_counts = counts
        steps = min(budget, n - sh.cursor)
        done = TaskStatus.DONE
        gone = state.dropped.get(wid)
        if gone is not None:  # compacted, its records dropped: who ran what is in its snapshot
            try:
                records = self.node.snapshot_pages.records(gone, sh.cursor, steps)
            except Exception:  # noqa: BLE001 - a chunk not here: no attribution, never a broken page
                records = []
            for i, r in enumerate(records, start=sh.cursor):
                sh.record(i, tuple(r.get("peers") or [r.get("peer") or "?"]) if r.get("state") == done.value else ())
        else:
            for i in range(sh.cursor, sh.cursor + steps):
                task = state.task(ids[i])
                peers: tuple[str, ...] = ()
                # the fold's cached status first (a dict read, 0.2 µs); only a done task is looked at
                # further: its standing result (~4 µs), or with replicas the tool's view (~15 µs)
                if task is not None and state.logical_status(task) is done:
                    if wf.replicas <= 1:
                        result = task.result
                        peers = (result.peer if result is not None else "?",)
                    else:  # every peer whose result agreed ran it
                        view = task_view(state, task, False, _no_blocks)
                        peers = tuple(view.get("peers") or [view.get("peer") or "?"])
                sh.record(i, peers)
        sh.cursor += steps
        if sh.cursor >= n:
            sh.cursor = 0
            sh.settled_counts = sh.pass_counts  # a change during the pass makes the next pass run
        return sh, budget - steps

    def _clock(self, names: dict[str, str]) -> dict[str, Any]:
        from p2p.clock.cids import cid_raw

        clock = self.node.clock
        heads = clock.heads()
        head_keys = {cid_raw(h) for h in heads}
        events = []
        for event, at in list(self.recent):
            kinds: dict[str, int] = {}
            for op in event.ops:
                k = str(op.get("op"))
                kinds[k] = kinds.get(k, 0) + 1
            events.append({
                "cid": _cid_text(event.cid), "author": event.author, "author_name": names.get(event.author),
                "seq": event.seq, "height": event.height if event.height >= 0 else None,
                "parents": [_cid_text(p) for p in event.parents], "ops": kinds, "at": at or None,
                "head": cid_raw(event.cid) in head_keys,
            })
        return {"events": events, "total": len(clock), "heads": len(heads)}

    def _throughput(self) -> dict[str, Any]:
        now = time.time()
        last = now - now % INTERVAL_S
        have = {start: n for start, n in self._buckets}
        starts = [last - INTERVAL_S * k for k in range(INTERVALS - 1, -1, -1)]
        return {"interval_s": INTERVAL_S, "what": "task results folded by this node",
                "buckets": [{"t": t, "done": int(have.get(t, 0))} for t in starts]}


def _causal(events: list[Any]) -> list[Any]:
    """``events`` reordered so each comes after those of its parents that are among them (a
    breadth-first walk from several heads, reversed, can put a child first); else as given."""
    from p2p.clock.cids import cid_raw

    by_key = {cid_raw(e.cid): e for e in events}
    out: list[Any] = []
    placed: set[bytes] = set()
    for first in events:
        stack = [(first, False)]
        while stack:  # depth-first, parents before the event (no recursion: a chain may be long)
            e, expanded = stack.pop()
            key = cid_raw(e.cid)
            if key in placed:
                continue
            if expanded:
                placed.add(key)
                out.append(e)
                continue
            stack.append((e, True))
            for p in reversed(e.parents):
                pk = cid_raw(p)
                if pk in by_key and pk not in placed:
                    stack.append((by_key[pk], False))
    return out


_CID_TEXT: dict[bytes, str] = {}


def _cid_text(cid: Any) -> str:
    """A CID's usual text (base32 CIDv1, what ``str`` gives), ~30x faster than multiformats'
    ``str`` (~250 µs a CID here), memoised: a refresh prints ~120 of them, mostly the same."""
    from p2p.clock.cids import cid_raw

    raw = cid_raw(cid)
    text = _CID_TEXT.get(raw)
    if text is None:
        if len(_CID_TEXT) > 4 * RECENT_EVENTS * 8:
            _CID_TEXT.clear()
        text = _CID_TEXT[raw] = "b" + base64.b32encode(raw).decode().lower().rstrip("=")
    return text


def _no_blocks(_cid: Any) -> None:
    return None  # results are never loaded for the page


# ------------------------------------------------------------------------------------ page

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _load_page() -> tuple[bytes, str]:
    """The page (read once, at start) and its Content-Security-Policy: the inline script and
    style are allowed by their hashes, nothing else may load, the page may only fetch its own
    origin, and no other site may frame it."""
    text = resources.files("mcp_server").joinpath("static/network.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(text):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    scripts = " ".join(hashes["script"]) or "'none'"
    styles = " ".join(hashes["style"]) or "'none'"
    csp = (f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text.encode(), csp


class NetworkPageRoute:
    """ASGI middleware: ``GET /`` is the page, ``GET /api/state`` its JSON; every other request
    goes to ``app``. Put it inside the bearer-token check (like ``MetricsRoute``); ``security``
    is the MCP transport's Host/Origin allowlist."""

    def __init__(self, app: Any, page: NetworkPage, security: Any = None) -> None:
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app = app
        self.page = page
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in PAGE_PATHS:
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import Response

        request = Request(scope, receive)
        nocache = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
        head = scope.get("method") == "HEAD"
        if scope.get("method") not in ("GET", "HEAD"):
            response = Response("the network page is read with GET\n", status_code=405, headers={"Allow": "GET, HEAD"})
        elif (refused := await self._security.validate_request(request, is_post=False)) is not None:
            response = refused
        elif path == PAGE_PATH:
            body, csp = self.page.page_html
            response = Response(b"" if head else body, media_type="text/html; charset=utf-8",
                                headers={**nocache, "Content-Security-Policy": csp, "X-Frame-Options": "DENY"})
        else:
            try:
                body = self.page.state_bytes()
            except Exception as exc:  # noqa: BLE001 - the page shows the error; the server goes on
                log.exception("network page state failed")
                body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                response = Response(body, status_code=500, media_type="application/json", headers=nocache)
            else:
                response = Response(b"" if head else body, media_type="application/json", headers=nocache)
        await response(scope, receive, send)


class PageLogin:
    """ASGI middleware outside the bearer check, for a browser: ``GET /?token=T`` with the right
    token answers 303 to ``/`` and sets an HttpOnly, SameSite=Strict cookie; on the page's own
    paths a request with that cookie is sent on as ``Authorization: Bearer T``. The cookie holds
    HMAC-SHA256(T, "network page"), never T itself: cookies ignore ports, so any other server on
    the host sees it, and it must not work as a bearer token for ``/mcp`` (which never reads the
    cookie anyway). Nothing else changes: a wrong token or cookie goes on without a header (the
    bearer check answers 401). The cookie is named per port (browsers share cookies across the
    ports of a host)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()
        self._cookie_value = hmac.new(self._token, b"ipfs-accelerate network page", hashlib.sha256).hexdigest()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") not in PAGE_PATHS or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers") or [])
        server = scope.get("server") or ("", 0)
        cookie_name = f"{COOKIE_PREFIX}{server[1] or 0}"
        if scope.get("path") == PAGE_PATH:
            given = parse_qs((scope.get("query_string") or b"").decode("latin-1")).get("token", [None])[0]
            if given is not None and hmac.compare_digest(given.encode(), self._token):
                cookie = f"{cookie_name}={self._cookie_value}; Path=/; HttpOnly; SameSite=Strict"
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                                        (b"cache-control", b"no-store"), (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
                return
        if not any(k == b"authorization" for k, _ in headers):
            value = _cookie(headers, cookie_name)
            if value is not None and hmac.compare_digest(value.encode(), self._cookie_value.encode()):
                scope = {**scope, "headers": [*headers, (b"authorization", b"Bearer " + self._token)]}
        await self.app(scope, receive, send)


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for k, v in headers:
        if k != b"cookie":
            continue
        for part in v.decode("latin-1").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                return value
    return None
