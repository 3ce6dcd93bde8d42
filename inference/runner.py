"""A loaded model for one task on one backend: tokenizer + backend + output shaping.

``run_batch`` is what the batching executor calls in a worker thread; it never raises for a
bad item, it returns that item's error in its slot so the rest of the batch is unaffected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from inference.backends import Backend
from inference.config import InferenceConfig
from inference.errors import BackendUnavailableError, InferenceError, LoadCancelledError, ModelLoadError
from inference.models import ModelInfo, labels_of
from inference.tasks import (
    EMBEDDING,
    FILL_MASK,
    TEXT_CLASSIFICATION,
    TaskOutput,
    classification_output,
    embedding_output,
    fill_mask_output,
)
from inference.tokenizer import TextEncoder

if TYPE_CHECKING:
    import numpy as np

log = structlog.get_logger()


@dataclass(slots=True)
class RawItem:
    """One item's model output row before it is shaped for its task."""

    row: np.ndarray
    truncated: bool


class ModelRunner:
    def __init__(self, info: ModelInfo, task: str, encoder: TextEncoder, backend: Backend) -> None:
        self.info = info
        self.task = task
        self.encoder = encoder
        self.backend = backend
        self.labels = labels_of(info.path) if task == TEXT_CLASSIFICATION else []
        self.loaded_at = time.time()
        self.batches = 0
        self.items = 0

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    def run_batch(self, texts: list[str]) -> list[RawItem | InferenceError]:
        """Encode, run once, split per item. Items failing the checks get their error, not a row."""
        enc = self.encoder.encode(texts)
        out: list[RawItem | InferenceError | None] = [None] * len(texts)
        for i, err in enc.errors.items():
            out[i] = err
        if enc.rows:
            arr = self.backend.run(enc.feeds)
            for r, i in enumerate(enc.rows):
                out[i] = RawItem(arr[r], enc.truncated[r])
        self.batches += 1
        self.items += len(texts)
        return out  # type: ignore[return-value]

    def postprocess(self, raw: RawItem, top_k: int) -> TaskOutput:
        if self.task == EMBEDDING:
            return embedding_output(raw.row, raw.truncated)
        if self.task == TEXT_CLASSIFICATION:
            return classification_output(raw.row, self.labels, raw.truncated)
        return fill_mask_output(raw.row, self.encoder.decode, top_k, raw.truncated)


def _onnx_backend(info: ModelInfo, task: str, config: InferenceConfig, data_dir: Path, mask_id: int | None) -> Backend:
    from inference.backends.onnx_backend import OnnxBackend
    from inference.export import cache_root, ensure_onnx

    root = cache_root(data_dir, config.cache_dir)

    art = ensure_onnx(info, task, root, config.onnx_opset, mask_id=mask_id)
    try:
        return OnnxBackend(art.model_path, art.input_names, art.output_name, config.device, config.threads)
    except BackendUnavailableError:
        raise
    except Exception as exc:  # checksum fine but onnxruntime refuses it: rebuild once
        if art.exported_now:
            raise ModelLoadError(f"onnxruntime cannot load the exported {info.name}: {str(exc).splitlines()[0]}") from None
        log.warning("onnx.session_failed_rebuilding", model=info.name, error=str(exc).splitlines()[0])
        art = ensure_onnx(info, task, root, config.onnx_opset, mask_id=mask_id, rebuild=True)
        return OnnxBackend(art.model_path, art.input_names, art.output_name, config.device, config.threads)


def load_runner(info: ModelInfo, task: str, backend: str, config: InferenceConfig, data_dir: Path) -> ModelRunner:
    """Build the runner (blocking: export, session creation, weight loading). ``auto`` = onnx, else torch."""
    started = time.perf_counter()
    encoder = TextEncoder(Path(info.path), info.max_length, config.truncate, mask_required=task == FILL_MASK)
    mask_id = encoder.mask_id if task == FILL_MASK else None
    be: Backend
    if backend in ("auto", "onnx"):
        try:
            be = _onnx_backend(info, task, config, data_dir, mask_id)
        except (BackendUnavailableError, ModelLoadError) as exc:
            if backend == "onnx" or isinstance(exc, LoadCancelledError):
                raise
            log.warning("backend.onnx_unusable_using_torch", model=info.name, task=task, reason=str(exc))
            from inference.backends.torch_backend import TorchBackend

            be = TorchBackend(info, task, config.device, config.threads, mask_id)
    elif backend == "torch":
        from inference.backends.torch_backend import TorchBackend

        be = TorchBackend(info, task, config.device, config.threads, mask_id)
    else:
        raise BackendUnavailableError(f"unknown backend {backend!r}; use auto, onnx or torch")
    log.debug("model.loaded", model=info.name, task=task, backend=be.name, device=be.device, seconds=round(time.perf_counter() - started, 3))
    return ModelRunner(info, task, encoder, be)
