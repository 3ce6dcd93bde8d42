"""Embeddings equal sentence-transformers' output on both backends, with the real default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_MODEL, SENTENCES
from inference.config import InferenceConfig
from inference.engine import InferenceEngine
from inference.errors import InputTooLongError, InvalidInputError, ModelNotFoundError, UnsupportedTaskError

LONG_TEXT = " ".join(["peer to peer inference spreads the work across many machines"] * 60)  # ~600 tokens


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
async def test_embeddings_match_sentence_transformers(backend: str, onnx_data_dir: Path, st_embeddings) -> None:
    _, ref = st_embeddings
    async with InferenceEngine.open(InferenceConfig(), onnx_data_dir) as engine:
        result = await engine.infer(DEFAULT_MODEL, SENTENCES, backend=backend)
    assert (result.model, result.task, result.backend, result.device) == (DEFAULT_MODEL, "embedding", backend, "cpu")
    assert len(result.outputs) == len(SENTENCES)
    for out, expected in zip(result.outputs, ref):
        assert out.embedding.dtype == np.float32 and out.embedding.shape == (384,)
        assert abs(np.linalg.norm(out.embedding) - 1.0) < 1e-4
        assert _cos(out.embedding, expected) >= 0.999
        assert not out.truncated and "truncated" not in out.to_json()


async def test_similarity_sanity(onnx_data_dir: Path) -> None:
    async with InferenceEngine.open(InferenceConfig(), onnx_data_dir) as engine:
        r = await engine.infer(None, SENTENCES[:3])  # default model, default (auto → onnx) backend
    assert r.backend == "onnx"
    cat, kitten, stocks = (o.embedding for o in r.outputs)
    assert 0.65 < _cos(cat, kitten) < 0.75
    assert -0.05 < _cos(cat, stocks) < 0.15


async def test_long_text_truncated_and_flagged(onnx_data_dir: Path, st_embeddings) -> None:
    st, _ = st_embeddings
    async with InferenceEngine.open(InferenceConfig(truncate=True), onnx_data_dir) as engine:
        r = await engine.infer(None, [LONG_TEXT, "short"])
    long_out, short_out = r.outputs
    assert long_out.truncated and long_out.to_json()["truncated"] is True
    assert not short_out.truncated and "truncated" not in short_out.to_json()
    # sentence-transformers truncates at the same 256 tokens.
    assert _cos(long_out.embedding, st.encode([LONG_TEXT])[0]) >= 0.999


async def test_long_text_refused_without_truncation(onnx_data_dir: Path) -> None:
    async with InferenceEngine.open(InferenceConfig(truncate=False), onnx_data_dir) as engine:
        with pytest.raises(InputTooLongError, match=r"input 1 has \d+ tokens, over the model's limit of 256"):
            await engine.infer(None, ["fine", LONG_TEXT])
        ok = await engine.infer(None, ["fine"])  # the engine still serves
        assert len(ok.outputs) == 1


async def test_request_errors_are_clear(onnx_data_dir: Path) -> None:
    async with InferenceEngine.open(InferenceConfig(), onnx_data_dir) as engine:
        with pytest.raises(InvalidInputError, match="input 1 is empty"):
            await engine.infer(None, ["hello", "   "])
        with pytest.raises(InvalidInputError, match="no input"):
            await engine.infer(None, [])
        with pytest.raises(UnsupportedTaskError, match="cannot do fill-mask; it supports: embedding"):
            await engine.infer(None, ["hello"], task="fill-mask")
        with pytest.raises(UnsupportedTaskError, match="unknown task"):
            await engine.infer(None, ["hello"], task="summarise")
        with pytest.raises(UnsupportedTaskError, match="unknown backend"):
            await engine.infer(None, ["hello"], backend="tensorflow")
        with pytest.raises(ModelNotFoundError):
            await engine.infer("nobody/nothing", ["hello"])
        with pytest.raises(ModelNotFoundError):
            engine.resolve("nobody/nothing")
        assert engine.resolve().name == DEFAULT_MODEL
        assert [m.name for m in engine.available_models()] == [DEFAULT_MODEL]
        assert engine.loaded_models() == []  # nothing valid was asked for, so nothing loaded
