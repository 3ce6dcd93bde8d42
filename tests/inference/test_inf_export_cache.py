"""The ONNX export is cached per model and reused; a corrupt or partial entry is rebuilt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from conftest import DEFAULT_MODEL
from inference import export
from inference.config import InferenceConfig
from inference.engine import InferenceEngine


def _export_id(data_dir: Path) -> str:
    """Each export writes a fresh id into its manifest: the same id means the entry was reused."""
    return json.loads((_entry(data_dir) / "manifest.json").read_text())["export_id"]


def _entry(data_dir: Path) -> Path:
    entries = [p for p in (data_dir / "onnx").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


async def _embed(data_dir: Path) -> np.ndarray:
    async with InferenceEngine.open(InferenceConfig(), data_dir) as engine:
        r = await engine.infer(DEFAULT_MODEL, ["A cat sits on the mat."], backend="onnx")
    return r.outputs[0].embedding


async def test_second_engine_reuses_the_export(onnx_data_dir: Path) -> None:
    entry = _entry(onnx_data_dir)
    mtime = (entry / "model.onnx").stat().st_mtime_ns
    before = _export_id(onnx_data_dir)
    await _embed(onnx_data_dir)
    await _embed(onnx_data_dir)
    assert _export_id(onnx_data_dir) == before
    assert (entry / "model.onnx").stat().st_mtime_ns == mtime
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["task"] == "embedding" and manifest["opset"] == 17
    assert manifest["files"]["model.onnx"]["size"] == (entry / "model.onnx").stat().st_size


async def test_corrupt_cache_is_rebuilt(onnx_data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(onnx_data_dir, data)  # corrupt a copy, not the shared cache
    good = await _embed(data)
    entry = _entry(data)
    with open(entry / "model.onnx", "r+b") as f:  # same size, flipped bytes in the middle
        f.seek(40_000_000)
        f.write(b"\xff" * 4096)
    before = _export_id(data)
    again = await _embed(data)
    assert _export_id(data) != before
    assert float(good @ again) > 0.9999
    manifest, why = export.verify_entry(_entry(data), full=True)
    assert manifest is not None, why


async def test_partial_cache_is_rebuilt(onnx_data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(onnx_data_dir, data)
    entry = _entry(data)
    (entry / "manifest.json").unlink()  # as if a writer died before committing
    with open(entry / "model.onnx", "r+b") as f:
        f.truncate(1000)
    emb = await _embed(data)
    assert "export_id" in json.loads((_entry(data) / "manifest.json").read_text())  # a new export
    assert emb.shape == (384,)
    assert export.verify_entry(_entry(data))[0] is not None
