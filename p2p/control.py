"""A local control socket in the data dir: how `ipfs-accelerate p2p join` reaches the node
that runs on that data dir. One JSON request line, one JSON reply line; mode 0600, so only the
node's user can drive it. It also keeps a second node from opening a data dir in use.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from p2p.errors import NodeError



class Controlled(Protocol):
    """What the control socket drives (the Node); a protocol, so control never imports the node."""

    @property
    def config(self) -> Any: ...

    def node_info(self) -> dict[str, Any]: ...

    async def connect(self, multiaddr: str) -> str: ...

log = structlog.get_logger("p2p.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / SOCKET_NAME


def _in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


async def serve_control(node: Controlled, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    path = socket_path(node.config.data_dir)
    if path.exists():
        if _in_use(path):
            raise NodeError(f"another node is running on {node.config.data_dir} (its control socket answers)")
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)  # owner-only from birth: no window in which another user could connect
    try:
        await sock.bind(str(path))
    except OSError as exc:
        raise NodeError(f"cannot open the control socket {path}: {exc.strerror or exc} (another node on this data dir?)") from None
    finally:
        os.umask(old_umask)
    sock.listen(16)
    try:
        task_status.started()
        await trio.serve_listeners(lambda stream: _handle(node, stream), [trio.SocketListener(sock)])
    finally:
        path.unlink(missing_ok=True)


async def _handle(node: Controlled, stream: trio.SocketStream) -> None:
    """One request; any failure ends this connection only, never the node."""
    try:
        await _serve_one(node, stream)
    except Exception:  # noqa: BLE001 - e.g. the client went away before the reply
        log.warning("control request failed", exc_info=True)


async def _serve_one(node: Controlled, stream: trio.SocketStream) -> None:
    async with stream:
        buf = b""
        with trio.move_on_after(10):
            while b"\n" not in buf and len(buf) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
        try:
            req = json.loads(buf.split(b"\n", 1)[0] or b"{}")
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            reply = await _dispatch(node, req)
        except NodeError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, TypeError, KeyError) as exc:
            reply = {"ok": False, "error": f"bad control request: {exc}"}
        await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _dispatch(node: Controlled, req: dict[str, Any]) -> dict[str, Any]:
    cmd = req.get("cmd")
    if cmd == "info":
        return {"ok": True, "info": node.node_info()}
    if cmd == "connect":
        peer = await node.connect(str(req["multiaddr"]))
        return {"ok": True, "peer_id": peer}
    raise NodeError(f"unknown control command {cmd!r}")


def call(data_dir: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Blocking client (the CLI): send one request to the node running on ``data_dir``."""
    path = socket_path(data_dir)
    if not path.exists():
        raise NodeError(f"no node is running on {Path(data_dir).expanduser()} (no {SOCKET_NAME}); start one with `ipfs-accelerate p2p start`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError:
            raise NodeError(f"no node is running on {Path(data_dir).expanduser()} (stale {SOCKET_NAME})") from None
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf or b"{}")
