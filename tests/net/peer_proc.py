"""A test peer in its own process: ``python tests/net/peer_proc.py --listen ... [--bootstrap ...]``.

stdout carries one JSON object a line (events); stdin takes JSON commands. It serves
``ECHO_PROTOCOL`` (each request frame is answered with the same bytes) and republishes every
gossip message it gets on ``PING_TOPIC`` to ``PONG_TOPIC`` unchanged. It exits cleanly on
stdin EOF or SIGTERM.

Events: ready {peer_id, addrs}, connected/disconnected {peer}, gossip {from, topic, data(hex)},
reply {id, ok, data|error}. Commands: connect {addr}, publish {topic, data}, request {id, peer, data}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import structlog  # noqa: E402
import trio  # noqa: E402
from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402

from p2p.config import NetworkConfig  # noqa: E402
from p2p.net import NetHost, load_swarm_key, open_host  # noqa: E402

ECHO_PROTOCOL = "/ipfs-accelerate/test/echo/1.0.0"
PING_TOPIC = "/ipfs-accelerate/test/ping"
PONG_TOPIC = "/ipfs-accelerate/test/pong"


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def echo(peer: str, payload: bytes) -> bytes:
    return payload


async def relay_pings(net: NetHost, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with net.subscribe(PING_TOPIC) as messages:
        task_status.started()
        async for from_peer, data in messages:
            emit("gossip", **{"from": from_peer, "topic": PING_TOPIC, "data": data.hex()})
            await net.publish(PONG_TOPIC, data)


async def report_peers(net: NetHost) -> None:
    async with net.peer_events() as events:
        async for ev in events:
            emit(ev.kind.value, peer=ev.peer_id)


async def handle_command(net: NetHost, cmd: dict[str, object]) -> None:
    name = cmd.get("cmd")
    if name == "connect":
        try:
            peer = await net.connect(str(cmd["addr"]))
            emit("dialed", peer=peer, ok=True)
        except Exception as exc:  # noqa: BLE001
            emit("dialed", ok=False, error=str(exc))
    elif name == "publish":
        await net.publish(str(cmd["topic"]), bytes.fromhex(str(cmd["data"])))
    elif name == "request":
        try:
            kwargs = {"timeout": float(cmd["timeout"])} if "timeout" in cmd else {}  # type: ignore[arg-type]
            reply = await net.request(str(cmd["peer"]), ECHO_PROTOCOL, bytes.fromhex(str(cmd["data"])), **kwargs)
            emit("reply", id=cmd.get("id"), ok=True, data=reply.hex())
        except Exception as exc:  # noqa: BLE001
            emit("reply", id=cmd.get("id"), ok=False, error=str(exc))


async def read_commands(net: NetHost, nursery: trio.Nursery) -> None:
    # FdStream reads are cancellable (a thread blocked in readline() would hold up SIGTERM).
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return  # parent gone or done: shut down
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    nursery.start_soon(handle_command, net, json.loads(line))


async def main(args: argparse.Namespace) -> None:
    seed = bytes.fromhex(args.key_seed) if args.key_seed else None
    key_pair = create_new_key_pair(seed)
    config = NetworkConfig(
        listen=[args.listen],
        bootstrap=args.bootstrap,
        mdns=args.mdns,
        allow_peers=args.allow,
        max_frame_bytes=args.max_frame_bytes,
        reconnect_max_backoff_s=args.reconnect_max_backoff_s,
    )
    psk = load_swarm_key(args.psk_file) if args.psk_file else None
    async with open_host(key_pair, config, psk=psk) as net:
        net.set_request_handler(ECHO_PROTOCOL, echo)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_peers, net)
            await nursery.start(relay_pings, net)  # subscribed before "ready"
            emit("ready", peer_id=net.peer_id, addrs=net.listen_addrs())
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
                await read_commands(net, nursery)
            nursery.cancel_scope.cancel()
    emit("stopped")


async def _cancel_on_signal(signals: object, scope: trio.CancelScope) -> None:
    async for _ in signals:  # type: ignore[attr-defined]
        scope.cancel()
        return


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--psk-file", default="")
    p.add_argument("--key-seed", default="", help="64 hex digits: a fixed identity (same peer id on restart)")
    p.add_argument("--mdns", action="store_true")
    p.add_argument("--allow", action="append", default=[])
    p.add_argument("--max-frame-bytes", type=int, default=4096)
    p.add_argument("--reconnect-max-backoff-s", type=float, default=2.0)
    return p.parse_args()


if __name__ == "__main__":
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    trio.run(main, parse_args())
