"""onnxruntime backend: the default, ~1.5x torch on CPU here, and GPU providers when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import structlog

from inference.errors import BackendUnavailableError

log = structlog.get_logger()

# Best first. TensorRT is left out: it compiles engines on first use (minutes), which is a
# deployment choice, not a default.
_PREFERENCE = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)
_DEVICE_OF = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "ROCMExecutionProvider": "rocm",
    "MIGraphXExecutionProvider": "rocm",
    "DmlExecutionProvider": "directml",
    "CoreMLExecutionProvider": "coreml",
    "OpenVINOExecutionProvider": "openvino",
    "CPUExecutionProvider": "cpu",
}
_FOR_DEVICE = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider"),
    "mps": ("CoreMLExecutionProvider",),
}


def select_providers(available: list[str] | tuple[str, ...], device: str = "auto") -> list[str]:
    """Execution providers to ask for, best first, from those this onnxruntime build has."""
    if device == "auto":
        chosen = [p for p in _PREFERENCE if p in available]
    else:
        wanted = _FOR_DEVICE.get(device, ())
        chosen = [p for p in _PREFERENCE if p in available and p in wanted]
        if not chosen:
            raise BackendUnavailableError(
                f"device {device!r} is not usable by onnxruntime here (providers: {', '.join(available) or 'none'})"
            )
    if "CPUExecutionProvider" in available and "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # fallback for ops a GPU provider lacks
    if not chosen:
        raise BackendUnavailableError("onnxruntime has no usable execution provider")
    return chosen


class OnnxBackend:
    """One InferenceSession; ``run`` is thread-safe (onnxruntime allows concurrent runs)."""

    name = "onnx"

    def __init__(self, model_path: Path, input_names: tuple[str, ...], output_name: str, device: str = "auto", threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except Exception as exc:
            raise BackendUnavailableError(f"onnxruntime is not usable: {exc}") from None
        providers = select_providers(ort.get_available_providers(), device)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only: ORT warnings would go to stderr unstructured
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        active = self.session.get_providers()  # a GPU provider that failed to load is silently dropped
        self.providers = tuple(active)
        self.device = _DEVICE_OF.get(active[0], active[0]) if active else "cpu"
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_name = output_name
        log.debug("onnx.session", path=str(model_path), providers=list(active))

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run([self.output_name], {n: feeds[n] for n in self.input_names})[0]
        return np.asarray(out, dtype=np.float32)
