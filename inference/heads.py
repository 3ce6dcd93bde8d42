"""Task heads around a transformers model, shared by the torch backend and the ONNX export.

Putting pooling/softmax inside the module means both backends compute exactly the same thing
and the exported graph returns the final per-item vector (small), not per-token states.
transformers 5.x models take their inputs by keyword only, which the ONNX exporter cannot do,
so these wrappers also give them a positional signature. Imported only when torch is needed.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inference.errors import ModelLoadError, UnsupportedTaskError
from inference.models import ModelInfo, force_offline
from inference.tasks import EMBEDDING, FILL_MASK, TEXT_CLASSIFICATION


def accepts_token_type_ids(model: nn.Module) -> bool:
    try:
        return "token_type_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class _Head(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.use_token_type_ids = accepts_token_type_ids(model)

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (["token_type_ids"] if self.use_token_type_ids else [])

    def _call(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> Any:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs)


class EmbeddingHead(_Head):
    """Mean (or CLS) pooling over the attention mask, then L2 normalisation: sentence-transformers' output."""

    def __init__(self, model: nn.Module, pooling: str = "mean") -> None:
        super().__init__(model)
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self._call(input_ids, attention_mask, token_type_ids).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


class ClassificationHead(_Head):
    """Class probabilities: softmax, or sigmoid for multi-label models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = self._call(input_ids, attention_mask, token_type_ids).logits
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


class FillMaskHead(_Head):
    """Vocabulary probabilities at the (single) mask position of each row."""

    def __init__(self, model: nn.Module, mask_id: int) -> None:
        super().__init__(model)
        self.mask_id = int(mask_id)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = self._call(input_ids, attention_mask, token_type_ids).logits
        pos = (input_ids == self.mask_id).to(torch.int64).argmax(dim=1)
        idx = pos.view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
        return torch.softmax(logits.gather(1, idx).squeeze(1), dim=-1)


def build_head(info: ModelInfo, task: str, mask_id: int | None = None, device: str = "cpu") -> _Head:
    """Load the model's weights for a task (offline) and wrap them in the task's head, in eval mode."""
    force_offline()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # stderr is for logs, not weight-loading bars
    classes = {
        EMBEDDING: transformers.AutoModel,
        TEXT_CLASSIFICATION: transformers.AutoModelForSequenceClassification,
        FILL_MASK: transformers.AutoModelForMaskedLM,
    }
    if task not in classes:
        raise UnsupportedTaskError(f"no head for task {task!r}")
    try:
        model = classes[task].from_pretrained(str(Path(info.path)), dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {info.name} for {task}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    model.eval()
    head: _Head
    if task == EMBEDDING:
        head = EmbeddingHead(model, info.pooling)
    elif task == TEXT_CLASSIFICATION:
        head = ClassificationHead(model)
    else:
        if mask_id is None:
            raise ModelLoadError(f"{info.name} has no mask token, so it cannot do fill-mask")
        head = FillMaskHead(model, mask_id)
    return head.eval().to(device)

