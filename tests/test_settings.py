"""Layered settings: default.toml < --config < IPFS_ACCELERATE_* < flags, validated."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mcp_server.settings import DEFAULT_TOML, Settings, SettingsError, load_settings
from tests.procs import CLI


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_toml_lists_every_setting_with_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(__import__("os").environ):
        if var.startswith("IPFS_ACCELERATE_"):
            monkeypatch.delenv(var)
    toml = _flatten(tomllib.loads(DEFAULT_TOML.read_text()))
    model = _flatten(Settings().model_dump())  # the models' own defaults, no TOML involved
    assert set(toml) == set(model)
    assert toml == model
    # and every key carries a comment line above it
    lines = DEFAULT_TOML.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_layers_apply_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "user.toml"
    user.write_text('node_id = "from-file"\n[inference]\nmax_batch = 8\nmax_wait_ms = 9.0\n[network]\nmdns = false\n')
    monkeypatch.setenv("IPFS_ACCELERATE_INFERENCE__MAX_BATCH", "16")
    s = load_settings(user, inference={"max_wait_ms": 1.5})
    assert s.node_id == "from-file"  # file over default
    assert s.inference.max_batch == 16  # env over file
    assert s.inference.max_wait_ms == 1.5  # flag over file
    assert s.network.mdns is False and s.network.heartbeat_s == 2.0  # untouched keys keep defaults


@pytest.mark.parametrize(
    "content,needle",
    [
        ("[inference]\nmax_batch = 0\n", "inference.max_batch"),
        ("[nope]\nx = 1\n", "nope"),
        ("[scheduler]\nmax_attempts = \"many\"\n", "scheduler.max_attempts"),
        ("this is not toml", "cannot read settings"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    user = tmp_path / "bad.toml"
    user.write_text(content)
    with pytest.raises(SettingsError) as err:
        load_settings(user)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[inference]\nmax_batch = -1\n")
    for args in (["--config", str(bad), "mcp", "serve"], ["--config", str(tmp_path / "missing.toml"), "models"]):
        proc = subprocess.run([CLI, *args], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode != 0
        err = proc.stderr.decode()
        assert "Traceback" not in err and err.startswith("error:") and proc.stdout == b""


def test_help_and_version_are_fast_paths() -> None:
    proc = subprocess.run([CLI, "--version"], capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.decode().startswith("ipfs-accelerate ")
    proc = subprocess.run([CLI, "--help"], capture_output=True, timeout=30)
    assert proc.returncode == 0
    for cmd in ("infer", "hardware", "mcp", "p2p", "models", "demo"):
        assert cmd in proc.stdout.decode()
