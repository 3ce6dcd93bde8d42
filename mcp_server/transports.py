"""Serving the MCP server over stdio, streamable HTTP (/mcp) or SSE, on the node's trio loop.

py-libp2p is trio-only, so everything shares one trio event loop: stdio runs through anyio's
trio backend, and the SDK's ASGI apps are served by hypercorn's trio worker (the SDK's own
``run("streamable-http")`` uses uvicorn, which needs asyncio).
"""

from __future__ import annotations

import hmac
import ipaddress
import signal
from typing import Any, Awaitable, Callable

import structlog
import trio

from mcp_server.settings import Settings
from p2p.node import Node

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
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="ipfs-accelerate"')]})
                await send({"type": "http.response.body", "body": b'{"error":"missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


def check_bind(transport: str, host: str, token: str) -> None:
    """Refuse a non-loopback bind without a bearer token (before anything is opened)."""
    if not is_loopback(host) and not token:
        raise ServeError(f"binding MCP {transport} to {host} needs a bearer token: set mcp.auth_token (or IPFS_ACCELERATE_MCP__AUTH_TOKEN)")


def _host_patterns(host: str) -> tuple[list[str], list[str]]:
    name = f"[{host}]" if ":" in host else host
    return [f"{name}:*"], [f"http://{name}:*", f"https://{name}:*"]


def http_app(server: Any, transport: str, host: str, port: int, token: str, allowed_hosts: list[str] = ()) -> Any:
    """The SDK's ASGI app for ``transport``, with DNS-rebinding protection and optional auth.

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
    return BearerAuth(app, token) if token else app


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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, nursery.cancel_scope.cancel)
            if transport == "stdio":
                if on_ready:
                    await _maybe_await(on_ready(node, []))
                await server.run_stdio_async()
                nursery.cancel_scope.cancel()
            elif transport is None:
                if on_ready:
                    await _maybe_await(on_ready(node, []))
            else:
                app = http_app(server, transport, host, port, settings.mcp.auth_token, settings.mcp.allowed_hosts)
                binds = await nursery.start(serve_http, app, host, port)
                path = "/mcp" if transport == "http" else "/sse"
                urls = [f"{b}{path}" for b in binds]
                log.info("mcp serving", transport=transport, urls=urls, peer_id=node.peer_id)
                if on_ready:
                    await _maybe_await(on_ready(node, urls))


async def _maybe_await(x: Any) -> None:
    if x is not None and hasattr(x, "__await__"):
        await x
