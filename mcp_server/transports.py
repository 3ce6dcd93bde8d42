"""Serving the MCP server over stdio, streamable HTTP (/mcp) or SSE, on the node's trio loop.

py-libp2p is trio-only, so everything shares one trio event loop: stdio runs through anyio's
trio backend, and the SDK's ASGI apps are served by hypercorn's trio worker (the SDK's own
``run("streamable-http")`` uses uvicorn, which needs asyncio).
"""

from __future__ import annotations

import hmac
import json
import ipaddress
import signal
from typing import Any, Awaitable, Callable

import structlog
import trio

from mcp_server.settings import Settings
from p2p.node import Node
from p2p.taskdump import dump_on_sigusr1, install_slow_step_log

log = structlog.get_logger("mcp_server.transport")

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class ServeError(ValueError):
    """The server can't start as asked (e.g. a public bind without a token)."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if not hmac.compare_digest(headers.get(b"authorization", b""), self._expected):
                # the request body is left unread, so the connection cannot be reused: say so,
                # or a client reusing it races the server's close ("server disconnected
                # without sending a response" on its next request, seen in CI)
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                        (b"www-authenticate", b'Bearer realm="ipfs-accelerate"')]})
                await send({"type": "http.response.body", "body": b'{"error":"missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


# -------------------------------------------------------------- JSON-RPC ids the SDK misreads

INVALID_REQUEST = -32600


def bad_jsonrpc_id(message: Any) -> str | None:
    """Why ``message`` (one decoded JSON-RPC message) has an id MCP does not allow, or None.

    MCP ids are strings or integers. The SDK parses every message against a union in which a
    notification accepts anything and ignores extra keys, so ``{"id": {...}, "method": ...}``
    becomes a notification: over streamable HTTP the client gets a silent 202 and no answer,
    over stdio nothing at all. Only an error response may carry ``id: null`` (JSON-RPC 2.0,
    when the request it answers could not be read).
    """
    if not isinstance(message, dict) or "id" not in message:
        return None
    rid = message["id"]
    if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
        return None
    if rid is None and "error" in message and "method" not in message:
        return None
    kind = {dict: "an object", list: "an array", bool: "a boolean", float: "a fractional number",
            type(None): "null"}.get(type(rid), type(rid).__name__)
    return f"Invalid Request: a JSON-RPC id must be a string or an integer, got {kind}; nothing was done"


def _bad_id_in(payload: Any) -> str | None:
    for message in payload if isinstance(payload, list) else [payload]:
        why = bad_jsonrpc_id(message)
        if why:
            return why
    return None


def jsonrpc_error(message: str, code: int = INVALID_REQUEST) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class JsonRpcIdGuard:
    """ASGI middleware: a POSTed JSON-RPC message whose id is not a string or an integer gets
    HTTP 400 with a JSON-RPC ``Invalid Request`` error (id null) instead of the SDK's 202.

    The body is read once here and replayed to the app unchanged; anything that is not JSON is
    left to the SDK, which answers it with its own parse error.
    """

    def __init__(self, app: Any, max_body_bytes: int = 4 << 20) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes  # the SDK's own request limit (DEFAULT_MAX_REQUEST_BODY_SIZE)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= self.max_body_bytes:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left before sending its body
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = bool(msg.get("more_body", False))
        body = b"".join(chunks)
        why = None
        if not more:  # an oversize body goes on unread: the SDK refuses it (413)
            try:
                import pydantic_core

                why = _bad_id_in(pydantic_core.from_json(body))
            except ValueError:
                pass  # not JSON: the SDK answers with a parse error
        if why:
            log.info("json-rpc request refused", path=scope.get("path"), reason=why)
            data = json.dumps(jsonrpc_error(why)).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)


class GuardedLines:
    """stdin lines for the SDK's stdio transport, minus the messages with an id MCP forbids;
    each of those is answered with a JSON-RPC error line through the transport's own writer
    (one writer, so lines never interleave)."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.write_stream: Any = None

    async def _lines(self) -> Any:
        from mcp.shared.message import SessionMessage
        from mcp_types import ErrorData, JSONRPCError

        async for line in self._source:
            try:
                why = _bad_id_in(json.loads(line))
            except ValueError:
                why = None  # the SDK reports unparseable lines itself
            if why is None:
                yield line
                continue
            log.info("json-rpc request refused", transport="stdio", reason=why)
            if self.write_stream is not None:
                await self.write_stream.send(SessionMessage(JSONRPCError(
                    jsonrpc="2.0", id=None, error=ErrorData(code=INVALID_REQUEST, message=why))))

    def __aiter__(self) -> Any:
        return self._lines()


async def run_stdio(server: Any) -> None:
    """``server.run_stdio_async()`` with ids checked (see ``bad_jsonrpc_id``).

    Like the SDK, fd 0 points at the null device while serving (handlers and child processes
    must not read the wire), and is restored afterwards; the SDK claims stdout itself.
    """
    import io
    import os

    import anyio
    from mcp.server.stdio import stdio_server

    lowlevel = server._lowlevel_server  # the SDK's run_stdio_async does exactly this
    private_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        text = io.TextIOWrapper(os.fdopen(private_fd, "rb", closefd=False), encoding="utf-8", errors="replace")
        guarded = GuardedLines(anyio.wrap_file(text))
        async with stdio_server(stdin=guarded, stdout=None) as (read_stream, write_stream):  # type: ignore[arg-type]
            guarded.write_stream = write_stream
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    finally:
        # private_fd stays open: a worker thread may still block reading it (as in the SDK)
        os.dup2(private_fd, 0)


def check_bind(transport: str, host: str, token: str) -> None:
    """Refuse a non-loopback bind without a bearer token (before anything is opened)."""
    if not is_loopback(host) and not token:
        raise ServeError(f"binding MCP {transport} to {host} needs a bearer token: set mcp.auth_token (or IPFS_ACCELERATE_MCP__AUTH_TOKEN)")


def _host_patterns(host: str) -> tuple[list[str], list[str]]:
    name = f"[{host}]" if ":" in host else host
    return [f"{name}:*"], [f"http://{name}:*", f"https://{name}:*"]


def http_app(server: Any, transport: str, host: str, port: int, token: str, allowed_hosts: list[str] = (),
             metrics: Any = None, page: Any = None) -> Any:
    """The SDK's ASGI app for ``transport``, with DNS-rebinding protection and optional auth;
    with ``metrics`` (a :class:`mcp_server.metrics.NodeMetrics`) also ``GET /metrics``, and with
    ``page`` (a :class:`mcp_server.dashboard.NetworkPage`) the network page at ``/`` and its
    ``/api/state``, all behind the same token and the same Host/Origin check.

    The SDK protects only 127.0.0.1, localhost and ::1 by itself, so every other bind gets an
    explicit Host/Origin allowlist: the bind address, loopback, and ``mcp.allowed_hosts``. A
    wildcard bind (0.0.0.0, ::) with no allowed_hosts is reached under names we can't know, so
    there the bearer token (required off loopback) is the guard and the Host check is off.
    """
    from mcp.server.transport_security import TransportSecuritySettings

    check_bind(transport, host, token)
    security = None
    if host not in LOOPBACK_NAMES:
        hosts, origins = ["127.0.0.1:*", "localhost:*", "[::1]:*"], ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
        wildcard = host in ("0.0.0.0", "::")
        for h in ([] if wildcard else [host]) + list(allowed_hosts):
            hp, op = _host_patterns(h)
            hosts += hp
            origins += op
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=not (wildcard and not allowed_hosts),
            allowed_hosts=hosts,
            allowed_origins=origins,
        )
    if transport == "http":
        app = server.streamable_http_app(host=host, transport_security=security)
    else:
        app = server.sse_app(host=host, transport_security=security)
    app = JsonRpcIdGuard(app)
    # the SDK's own default for a 127.0.0.1/localhost/::1 bind, which it applies only to its routes
    loopback = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    if metrics is not None:
        from mcp_server.metrics import MetricsRoute

        app = MetricsRoute(app, metrics, security if security is not None else loopback)
    if page is not None:
        from mcp_server.dashboard import NetworkPageRoute

        app = NetworkPageRoute(app, page, security if security is not None else loopback)
    if not token:
        return app
    app = BearerAuth(app, token)
    if page is not None:  # a browser's way to the token: /?token=… once, then a cookie (page paths only)
        from mcp_server.dashboard import PageLogin

        app = PageLogin(app, token)
    return app


async def serve_http(app: Any, host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve an ASGI app with hypercorn's trio worker until cancelled; reports the bound URLs."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    await serve(app, config, task_status=task_status)


async def _stop_on_signals(cancel: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", signal=signal.Signals(signum).name)
            cancel()
            return


async def serve_node(
    settings: Settings,
    transport: str | None,
    host: str,
    port: int,
    *,
    on_ready: Callable[[Node, list[str]], Awaitable[None] | None] | None = None,
) -> None:
    """Open the node and serve MCP over ``transport`` (None: no MCP) until stdin closes (stdio)
    or SIGTERM/SIGINT."""
    from mcp_server.server import build_server

    if transport in ("http", "sse"):
        check_bind(transport, host, settings.mcp.auth_token)
    async with Node.open(settings.node_config()) as node:
        server = build_server(node, page_size=settings.mcp.status_page_size)
        if node.net is not None and settings.mcp.serve_peers:
            if node.members_only:
                from mcp_server.peer_mcp import offer_to_peers

                offer_to_peers(node, build_server(node, page_size=settings.mcp.status_page_size, for_peers=True))
            else:
                log.info("mcp for peers not offered: an open network (no key, no allow_peers)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope.cancel)
            nursery.start_soon(dump_on_sigusr1)
            install_slow_step_log()
            if transport == "stdio":
                if on_ready:
                    await _maybe_await(on_ready(node, []))
                await run_stdio(server)
                nursery.cancel_scope.cancel()
            elif transport is None:
                if on_ready:
                    await _maybe_await(on_ready(node, []))
            else:
                metrics = await nursery.start(_hold_metrics, node)
                page = await nursery.start(_hold_page, node)
                app = http_app(server, transport, host, port, settings.mcp.auth_token, settings.mcp.allowed_hosts,
                               metrics=metrics, page=page)
                binds = await nursery.start(serve_http, app, host, port)
                path = "/mcp" if transport == "http" else "/sse"
                urls = [f"{b}{path}" for b in binds]
                log.info("mcp serving", transport=transport, urls=urls, peer_id=node.peer_id)
                log.info("network page", urls=[f"{b}/" for b in binds])
                if on_ready:
                    await _maybe_await(on_ready(node, urls))


async def _hold_metrics(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The node's metrics (``/metrics`` on the HTTP port) for as long as the server runs; only
    HTTP/SSE servers pay for them (prometheus_client is imported here, not by stdio nodes)."""
    from mcp_server.metrics import NodeMetrics

    metrics = NodeMetrics(node)
    try:
        task_status.started(metrics)
        await trio.sleep_forever()
    finally:
        metrics.close()


async def _hold_page(node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """The network page's state (``/`` on the HTTP port) for as long as the server runs."""
    from mcp_server.dashboard import NetworkPage

    await NetworkPage(node).run(task_status=task_status)


async def _maybe_await(x: Any) -> None:
    if x is not None and hasattr(x, "__await__"):
        await x
