"""text-classification and fill-mask on tiny random-weight BERT models (built in conftest.py from a
BertConfig and a 40-word vocabulary, since the hub is unreachable). Random weights make the
labels meaningless, so the reference is transformers run directly on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.config import InferenceConfig
from inference.engine import InferenceEngine
from inference.errors import InputTooLongError, InvalidInputError, UnsupportedTaskError

CLS_TEXTS = ["i liked this movie very good", "the film was terrible and bad", "a cat sat on the mat", "kitten"]
MLM_TEXTS = ["paris is the [MASK] of france .", "the [MASK] sat on the mat", "[MASK]"]


def _reference(model_dir: Path, texts: list[str], kind: str) -> list[np.ndarray]:
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cls = AutoModelForSequenceClassification if kind == "cls" else AutoModelForMaskedLM
    model = cls.from_pretrained(str(model_dir)).eval()
    out = []
    for t in texts:
        enc = tok(t, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**enc).logits[0]
        if kind == "mlm":
            logits = logits[int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])]
        out.append(torch.softmax(logits, -1).numpy())
    return out


@pytest.mark.parametrize("backend", ["onnx", "torch"])
async def test_text_classification(backend: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    ref = _reference(tiny_models["tiny-bert-classifier"], CLS_TEXTS, "cls")
    cfg = InferenceConfig(model_dirs=[str(tiny_models["root"])])
    async with InferenceEngine.open(cfg, tmp_path) as engine:
        r = await engine.infer("tiny-bert-classifier", CLS_TEXTS, backend=backend)  # task inferred
    assert r.task == "text-classification" and r.backend == backend
    for out, probs in zip(r.outputs, ref):
        labels = ["negative", "neutral", "positive"]
        assert list(out.scores) == labels
        np.testing.assert_allclose([out.scores[k] for k in labels], probs, atol=1e-4)
        assert out.label == labels[int(np.argmax(probs))]
        assert out.score == max(out.scores.values())
        assert abs(sum(out.scores.values()) - 1) < 1e-4
        j = out.to_json()
        assert set(j) == {"label", "score", "scores"}


@pytest.mark.parametrize("backend", ["onnx", "torch"])
async def test_fill_mask(backend: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_models["tiny-bert-mlm"]))
    ref = _reference(tiny_models["tiny-bert-mlm"], MLM_TEXTS, "mlm")
    async with InferenceEngine.open(InferenceConfig(), tmp_path) as engine:
        r = await engine.infer(str(tiny_models["tiny-bert-mlm"]), MLM_TEXTS, task="fill-mask", backend=backend, top_k=4)
    assert r.task == "fill-mask"
    for out, probs in zip(r.outputs, ref):
        assert len(out.predictions) == 4
        want = np.argsort(-probs)[:4]
        assert [p.token_id for p in out.predictions] == [int(i) for i in want]
        np.testing.assert_allclose([p.score for p in out.predictions], probs[want], atol=1e-4)
        assert [p.token for p in out.predictions] == [tok.decode([int(i)]).strip() for i in want]
        assert set(out.to_json()["predictions"][0]) == {"token", "score"}


async def test_fill_mask_input_errors(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = str(tiny_models["tiny-bert-mlm"])
    async with InferenceEngine.open(InferenceConfig(truncate=False), tmp_path) as engine:
        with pytest.raises(InvalidInputError, match=r"input 1 must contain the mask token \[MASK\] exactly once, found 0"):
            await engine.infer(model, ["the [MASK] sat", "no mask here"])
        with pytest.raises(InvalidInputError, match="found 2"):
            await engine.infer(model, ["[MASK] [MASK]"])
        with pytest.raises(InputTooLongError, match="limit of 64"):  # max_position_embeddings=64
            await engine.infer(model, ["the cat sat on the mat " * 20 + "[MASK]"])
        with pytest.raises(UnsupportedTaskError, match="cannot do embedding"):
            await engine.infer(model, ["the [MASK] sat"], task="embedding")


async def test_truncation_flag_on_a_tiny_model(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cfg = InferenceConfig(model_dirs=[str(tiny_models["root"])], truncate=True)
    async with InferenceEngine.open(cfg, tmp_path) as engine:
        r = await engine.infer("tiny-bert-classifier", ["the cat sat on the mat " * 20, "good"])
    assert r.outputs[0].truncated and r.outputs[0].to_json()["truncated"] is True
    assert "truncated" not in r.outputs[1].to_json()
