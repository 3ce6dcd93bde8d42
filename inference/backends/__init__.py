"""Backends run a task head on a padded batch and return one row per item.

Both take the feeds a ``TextEncoder`` builds (input_ids, attention_mask, token_type_ids as
int64 numpy arrays) and return a float32 array (batch, ...). Everything above them (batching,
tokenization, output shaping) is backend-independent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np


BACKENDS = ("auto", "onnx", "torch")


class Backend(Protocol):
    name: str  # onnx | torch
    device: str  # cpu, cuda, cuda:0, mps, coreml...

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...
