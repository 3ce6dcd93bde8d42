"""An ONNX export child never outlives the process that asked for it: killed with -9, the parent
cannot stop it on the way out, so the child notices and exits by itself (inference/export.py,
``_exit_with_parent``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[2]

PARENT = f"""
import sys
from pathlib import Path
from inference.models import resolve_model
from inference.export import _export_in_child
info = resolve_model({DEFAULT_MODEL!r})
_export_in_child(info, "embedding", 17, None, Path(sys.argv[1]))
"""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_an_export_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "export")], env=env, cwd=REPO,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        kids: list[int] = []
        while not kids and time.monotonic() < deadline and parent.poll() is None:
            kids = _children(parent.pid)
            time.sleep(0.05)
        assert kids, "the parent started no export child"
        child = kids[0]
        time.sleep(1.0)  # the child is under way (importing torch)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 15
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), f"export child {child} outlived its parent"
        assert not (tmp_path / "export" / "model.onnx").exists()
    finally:
        if parent.poll() is None:
            parent.kill()
