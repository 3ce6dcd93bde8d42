"""torch (transformers) backend: runs any model transformers can load, on CUDA/MPS/CPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from inference.errors import BackendUnavailableError
from inference.models import ModelInfo


def select_device(device: str = "auto") -> str:
    """cuda when usable, then mps, else cpu; an explicit device that is not usable is an error."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device == "cuda" and not cuda:
        raise BackendUnavailableError("device 'cuda' requested but torch sees no usable CUDA device")
    if device == "mps" and not mps:
        raise BackendUnavailableError("device 'mps' requested but torch sees no usable MPS device")
    return device


class TorchBackend:
    """A task head (inference/heads.py) in eval mode under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, info: ModelInfo, task: str, device: str = "auto", threads: int = 0, mask_id: int | None = None) -> None:
        try:
            import torch
        except Exception as exc:
            raise BackendUnavailableError(f"torch is not usable: {exc}") from None
        from inference.heads import build_head

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = select_device(device)
        self.head: Any = build_head(info, task, mask_id=mask_id, device=self.device)
        self.input_names = tuple(self.head.input_names)
        self._torch = torch

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        args = [torch.from_numpy(feeds[n]).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            out = self.head(*args)
        return out.float().cpu().numpy()
