"""Model resolution: offline, by id, last segment, local path, model_dirs, HF cache; clear errors."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL
from inference.errors import ModelNotFoundError
from inference.models import available_models, infer_tasks, resolve_model


def test_default_model_resolves_from_the_package(default_model_path: Path) -> None:
    info = resolve_model(DEFAULT_MODEL)
    assert info.path == default_model_path
    assert info.source == "builtin"
    assert info.tasks == ("embedding",)
    assert info.pooling == "mean"
    assert info.max_length == 256  # sentence_bert_config.json's max_seq_length, as sentence-transformers uses


def test_last_segment_and_case_resolve_to_the_default() -> None:
    assert resolve_model("all-MiniLM-L6-v2").name == DEFAULT_MODEL
    assert resolve_model("SENTENCE-TRANSFORMERS/all-minilm-l6-v2").name == DEFAULT_MODEL


def test_unknown_model_fails_fast_naming_it_and_the_available_ones() -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("nobody/no-such-model")
    assert time.monotonic() - started < 5  # no network attempt, no hang
    msg = str(err.value)
    assert "nobody/no-such-model" in msg and DEFAULT_MODEL in msg and "\n" not in msg
    assert DEFAULT_MODEL in err.value.available


def test_local_directory(tiny_models: dict[str, Path]) -> None:
    info = resolve_model(str(tiny_models["tiny-bert-mlm"]))
    assert info.source == "local" and info.tasks == ("fill-mask",)
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tiny_models["root"]))  # a directory, but not a model


def test_model_dirs_match_by_name_and_last_segment(tiny_models: dict[str, Path]) -> None:
    dirs = [str(tiny_models["root"])]
    assert resolve_model("tiny-bert-classifier", dirs).path == tiny_models["tiny-bert-classifier"]
    assert resolve_model("someorg/tiny-bert-classifier", dirs).path == tiny_models["tiny-bert-classifier"]
    with pytest.raises(ModelNotFoundError):
        resolve_model("tiny-bert-classifier")  # not without the model dir


def test_hf_cache_is_searched_offline(tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--acme--tiny-mlm"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_models["tiny-bert-mlm"], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    info = resolve_model("acme/tiny-mlm")
    assert info.source == "hf_cache" and info.path == snap
    names = {m.name: m.tasks for m in available_models()}
    assert names["acme/tiny-mlm"] == ("fill-mask",)


def test_tasks_inferred_from_architectures(tiny_models: dict[str, Path], default_model_path: Path) -> None:
    assert infer_tasks(tiny_models["tiny-bert-classifier"])[0] == ("text-classification",)
    assert infer_tasks(tiny_models["tiny-bert-mlm"])[0] == ("fill-mask",)
    assert infer_tasks(default_model_path)[0] == ("embedding",)


def test_available_models_lists_tasks(tiny_models: dict[str, Path]) -> None:
    found = {m.name: m for m in available_models([str(tiny_models["root"])])}
    assert found[DEFAULT_MODEL].tasks == ("embedding",)
    assert found["tiny-bert-classifier"].tasks == ("text-classification",)
    assert found["tiny-bert-mlm"].tasks == ("fill-mask",)
    assert found["tiny-bert-mlm"].to_dict()["path"] == str(tiny_models["tiny-bert-mlm"])
