"""Helpers for tests that run the real CLI in subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, VENV_BIN

CLI = str(VENV_BIN / "ipfs-accelerate")


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free TCP port below the kernel's ephemeral range. A port the kernel hands out for port
    0 comes from that range, where every outbound connection of every node also takes its local
    port: between this check and the node's bind, one took it once ("Address already in use")."""
    import random

    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the range below is crowded: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_SHARED_KEY: Path | None = None


def shared_swarm_key() -> Path:
    """One random swarm key for every node this test process starts (made once, removed at exit).

    Why: a node is private by default and creates its own key in its data dir, so nodes of one
    test started from separate data dirs would each make a different key and never connect. The
    harness gives them all this one (``network.psk_file`` through the environment), so the suite
    runs the private path; tests of the default key and of invites set the variable to "" to get
    the data dir's own key back."""
    global _SHARED_KEY
    if _SHARED_KEY is None or not _SHARED_KEY.exists():
        import atexit
        import shutil
        import tempfile

        from p2p.net.psk import generate_swarm_key

        d = Path(tempfile.mkdtemp(prefix="ia-test-key-"))
        atexit.register(shutil.rmtree, d, True)
        generate_swarm_key(d / "swarm.key")
        _SHARED_KEY = d / "swarm.key"
    return _SHARED_KEY


def cli_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI process under test: offline, the shared ONNX cache, and the
    shared network key (see :func:`shared_swarm_key`); ``extra`` wins over all of it."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        IPFS_ACCELERATE_INFERENCE__CACHE_DIR=str(cache_dir),
        IPFS_ACCELERATE_SCHEDULER__FLUSH_MS="2",
        IPFS_ACCELERATE_NETWORK__PSK_FILE=str(shared_swarm_key()),
    )
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the CLI with stdout+stderr to a log file (read it when a test fails)."""
    fh = open(log, "ab")
    return subprocess.Popen([CLI, *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_port(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("process did not stop on signal")
