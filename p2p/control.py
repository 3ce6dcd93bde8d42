"""A local control socket in the data dir: how `ipfs-accelerate p2p join` reaches the node
that runs on that data dir. One JSON request line, one JSON reply line; mode 0600, so only the
node's user can drive it. It also keeps a second node from opening a data dir in use.

``{"cmd": "mcp", "peer": PEER_ID}`` is the one request that goes on after its reply: once the
node has opened an MCP stream to the peer (``/ipfs-accelerate/mcp/1.0.0``) and answered
``{"ok": true}``, the socket carries the session as newline-delimited JSON-RPC messages (the
stdio transport's lines), each line one frame on the stream, both ways, until either side
closes: how `ipfs-accelerate mcp connect PEER_ID` gives an agent a peer's tools.
"""

from __future__ import annotations

import json
import math
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

    @property
    def net(self) -> Any: ...

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
            if req.get("cmd") == "mcp":
                await _mcp_tunnel(node, stream, str(req.get("peer", "")), buf.split(b"\n", 1)[1] if b"\n" in buf else b"")
                return
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


MAX_LINE = 8 << 20  # one JSON-RPC message on the socket (the stream's frames are capped too)
DIAL_S = 30.0  # to open the stream to the peer (dialling it if need be)


async def _mcp_tunnel(node: Controlled, sock: trio.SocketStream, peer: str, rest: bytes) -> None:
    """Open an MCP stream to ``peer``, answer ``{"ok": true}``, then carry lines to frames and
    frames to lines until either side ends (see the module docstring)."""
    from p2p.net.errors import NetError
    from p2p.protocols.mcp_tunnel import MCP_PROTOCOL

    async def refuse(why: str) -> None:
        await sock.send_all(json.dumps({"ok": False, "error": why}).encode() + b"\n")

    try:
        from libp2p.peer.id import ID

        ID.from_base58(peer)
    except Exception:  # noqa: BLE001 - base58 and multihash errors alike
        await refuse(f"{peer!r} is not a peer id (list_peers shows them, e.g. 12D3KooW…)")
        return
    if node.net is None:
        await refuse("this node runs without networking")
        return
    if peer == node.net.peer_id:
        await refuse(f"{peer} is this node: use `mcp serve --transport stdio` for its own tools")
        return
    opened = False
    try:
        with trio.CancelScope(deadline=trio.current_time() + DIAL_S) as dial:
            async with node.net.open_stream(peer, MCP_PROTOCOL) as stream:
                dial.deadline = math.inf  # dialled: the session itself has no time limit
                opened = True
                await sock.send_all(b'{"ok": true}\n')
                log.info("mcp tunnel open", peer=peer)
                try:
                    await _carry(sock, stream, rest)
                except Exception as exc:  # noqa: BLE001 - (an ExceptionGroup from the nursery) ends this session only
                    log.info("mcp tunnel ended", peer=peer, error=repr(exc)[:300])
                else:
                    log.info("mcp tunnel closed", peer=peer)
        if dial.cancelled_caught:
            await refuse(f"cannot open an MCP session with peer {peer}: no answer within {DIAL_S:g} s")
    except NetError as exc:
        if opened:  # the session had begun (closing it failed): the agent sees its end, not a second reply
            log.info("mcp tunnel ended", peer=peer, error=str(exc))
            return
        await refuse(f"cannot open an MCP session with peer {peer}: {exc} (is it connected, a member of this "
                     "network, and serving MCP to peers: mcp.serve_peers?)")


async def _carry(sock: trio.SocketStream, stream: Any, rest: bytes) -> None:
    """The agent's lines to frames and the peer's frames to lines, until the peer ends."""
    async with trio.open_nursery() as nursery:
        async def up() -> None:
            buf = rest
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        await stream.write_frame(line)
                if len(buf) > MAX_LINE:
                    raise NodeError(f"a JSON-RPC line over {MAX_LINE} bytes")
                chunk = await sock.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
            await stream.close_write()  # the session ends when the peer has answered

        nursery.start_soon(up)
        async for frame in stream.frames():
            await sock.send_all(frame + b"\n")
        nursery.cancel_scope.cancel()


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
