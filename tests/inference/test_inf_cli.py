"""The CLI commands, run as the user runs them (subprocess), on a warm ONNX cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_MODEL

EXE = str(Path(sys.executable).with_name("ipfs-accelerate"))


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(p: subprocess.CompletedProcess[str], contains: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and contains in lines[0], lines[0]
    assert p.stdout == ""


def test_help() -> None:
    p = run("--help")
    assert p.returncode == 0 and "infer" in p.stdout and "hardware" in p.stdout
    p = run("infer", "--help")
    assert p.returncode == 0 and "--backend" in p.stdout and "--json" in p.stdout


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_infer_json(backend: str, onnx_data_dir: Path) -> None:
    p = run("infer", "--json", "--backend", backend, "--data-dir", str(onnx_data_dir), "A cat sits on the mat.", "Hello world")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # exactly one JSON object
    assert set(doc) == {"model", "task", "backend", "device", "outputs"}
    assert (doc["model"], doc["task"], doc["backend"], doc["device"]) == (DEFAULT_MODEL, "embedding", backend, "cpu")
    assert len(doc["outputs"]) == 2
    for out in doc["outputs"]:
        vec = np.array(out["embedding"])
        assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1) < 1e-4
    assert "Traceback" not in p.stderr


def test_infer_summary_and_truncated_flag(onnx_data_dir: Path) -> None:
    long = "word " * 400
    p = run("infer", "--data-dir", str(onnx_data_dir), "short text", long)
    assert p.returncode == 0, p.stderr
    assert "384-dim" in p.stdout and "(truncated)" in p.stdout
    p = run("infer", "--json", "--data-dir", str(onnx_data_dir), long)
    assert json.loads(p.stdout)["outputs"][0]["truncated"] is True


def test_infer_errors(onnx_data_dir: Path, tmp_path: Path) -> None:
    dd = ["--data-dir", str(onnx_data_dir)]
    assert_one_line_error(run("infer", *dd), "no input text")
    assert_one_line_error(run("infer", *dd, "--model", "nobody/nothing", "x"), "model not found: 'nobody/nothing'")
    assert_one_line_error(run("infer", *dd, "--task", "fill-mask", "x"), "cannot do fill-mask")
    assert_one_line_error(run("infer", *dd, "--task", "summarise", "x"), "unknown task")
    assert_one_line_error(run("infer", *dd, "hello", ""), "input 1 is empty")
    cfg = tmp_path / "strict.toml"
    cfg.write_text("[inference]\ntruncate = false\n")
    assert_one_line_error(run("--config", str(cfg), "infer", *dd, "word " * 400), "over the model's limit of 256")
    p = run("infer", "--backend", "jax", "x")
    assert p.returncode != 0 and "Traceback" not in p.stderr


def test_infer_rebuilds_a_corrupt_cache(onnx_data_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(onnx_data_dir, data)
    (entry,) = [p for p in (data / "onnx").iterdir() if p.is_dir() and not p.name.startswith(".")]
    (entry / "model.onnx").write_bytes(b"not an onnx model")
    p = run("infer", "--json", "--data-dir", str(data), "hello")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "onnx.cache_corrupt_rebuilding" in p.stderr
    assert len(json.loads(p.stdout)["outputs"][0]["embedding"]) == 384


def test_hardware_models_demo(onnx_data_dir: Path) -> None:
    p = run("hardware", "--json")
    assert p.returncode == 0, p.stderr
    hw = json.loads(p.stdout)
    assert "CPUExecutionProvider" in hw["onnx_providers"] and hw["cpu_logical"] >= 1
    p = run("models", "--json")
    assert p.returncode == 0, p.stderr
    assert {"name": DEFAULT_MODEL, "tasks": ["embedding"]}.items() <= json.loads(p.stdout)[0].items()
    p = run("demo", "--data-dir", str(onnx_data_dir))
    assert p.returncode == 0, p.stderr
    assert "cosine similarity" in p.stdout and "0.70" in p.stdout
