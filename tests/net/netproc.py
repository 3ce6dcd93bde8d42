"""Spawning ``peer_proc.py`` peers in real processes and reading their JSON events."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[2]
PEER_PROC = Path(__file__).with_name("peer_proc.py")
PYTHON = sys.executable
READY_TIMEOUT_S = 60.0  # two shared cores: a cold libp2p import can take seconds

Event = dict[str, Any]


def free_tcp_port() -> int:
    """A port free on 127.0.0.1 right now (the OS may hand it out again later; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeerProc:
    """One running peer_proc: its events so far, and ways to command or kill it."""

    def __init__(self, proc: trio.Process, log_path: Path, name: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.name = name
        self.events: list[Event] = []
        self._changed = trio.Event()
        self.ready: Event = {}
        self._send_lock = trio.Lock()  # commands from concurrent tasks go out one line at a time

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.ready["addrs"][0])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.events.append(json.loads(line))
            self._changed.set()
            self._changed = trio.Event()
        self.events.append({"event": "eof"})
        self._changed.set()

    async def wait_for(self, pred: Callable[[Event], bool], timeout: float, since: int = 0) -> Event:
        """The first event from index ``since`` on that matches ``pred``; fails after ``timeout``."""
        with trio.move_on_after(timeout):
            i = since
            while True:
                while i < len(self.events):
                    ev = self.events[i]
                    i += 1
                    if pred(ev):
                        return ev
                    if ev["event"] == "eof":
                        raise AssertionError(f"{self.name} exited; log:\n{self.log_text()[-3000:]}")
                await self._changed.wait()
        raise AssertionError(f"{self.name}: no matching event in {timeout} s; events={self.events[-10:]}")

    async def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        async with self._send_lock:
            await self.proc.stdin.send_all((json.dumps(cmd) + "\n").encode())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the peer shuts down cleanly), then kill if it lingers."""
        if self.proc.stdin is not None:
            try:
                await self.proc.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.move_on_after(timeout):
            await self.proc.wait()
            return
        self.kill()
        await self.proc.wait()


@asynccontextmanager
async def spawn_peer(
    log_dir: Path, *args: str, name: str = "peer", netns: str | None = None
) -> AsyncIterator[PeerProc]:
    """Run peer_proc with ``args`` until the block ends; yields once it printed "ready"."""
    cmd = [PYTHON, str(PEER_PROC), *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log_file:
        proc = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, cwd=REPO, env=env
        )
    peer = PeerProc(proc, log_path, name)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer._read_stdout)
        try:
            peer.ready = await peer.wait_for(lambda e: e["event"] == "ready", READY_TIMEOUT_S)
            yield peer
        finally:
            with trio.CancelScope(shield=True):
                await peer.stop()
            nursery.cancel_scope.cancel()


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if s else math.nan
