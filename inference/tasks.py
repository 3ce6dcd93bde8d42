"""Task names and the shape of each task's output.

Outputs keep numpy float32 internally (cheap to build in the batch thread, cheap to compare in
tests) and become plain JSON only at the edge, through ``to_json()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    import numpy as np

from inference.errors import UnsupportedTaskError

EMBEDDING = "embedding"
TEXT_CLASSIFICATION = "text-classification"
FILL_MASK = "fill-mask"
TASKS: tuple[str, ...] = (EMBEDDING, TEXT_CLASSIFICATION, FILL_MASK)

# Names other tools use for the same tasks, so a request written for HF pipelines still works.
_ALIASES = {
    "embeddings": EMBEDDING,
    "feature-extraction": EMBEDDING,
    "sentence-similarity": EMBEDDING,
    "classification": TEXT_CLASSIFICATION,
    "sentiment-analysis": TEXT_CLASSIFICATION,
    "sequence-classification": TEXT_CLASSIFICATION,
    "fill_mask": FILL_MASK,
    "masked-lm": FILL_MASK,
}

DEFAULT_TOP_K = 5
WARM_TEXT = "a warm-up sentence of about the length most inputs have."  # what a model's first, warm-up batch holds


def normalize_task(task: str) -> str:
    """The canonical task name; an unknown name is an error naming the known ones."""
    name = task.strip().lower().replace("_", "-") if isinstance(task, str) else ""
    name = _ALIASES.get(name, name)
    if name not in TASKS:
        raise UnsupportedTaskError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return name


def _with_truncated(d: dict[str, Any], truncated: bool) -> dict[str, Any]:
    if truncated:
        d["truncated"] = True
    return d


@dataclass(slots=True)
class EmbeddingOutput:
    """An L2-normalised sentence embedding (mean pooling over the attention mask)."""

    embedding: np.ndarray
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        import numpy as np

        return _with_truncated({"embedding": self.embedding.astype(np.float32).tolist()}, self.truncated)


@dataclass(slots=True)
class ClassificationOutput:
    """The best label, its probability, and every label's probability."""

    label: str
    score: float
    scores: dict[str, float]
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return _with_truncated({"label": self.label, "score": self.score, "scores": dict(self.scores)}, self.truncated)


@dataclass(slots=True)
class TokenScore:
    token: str
    score: float
    token_id: int

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "score": self.score}


@dataclass(slots=True)
class FillMaskOutput:
    """The most probable tokens for the mask, best first."""

    predictions: list[TokenScore] = field(default_factory=list)
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        return _with_truncated({"predictions": [p.to_json() for p in self.predictions]}, self.truncated)


TaskOutput = Union[EmbeddingOutput, ClassificationOutput, FillMaskOutput]


def embedding_output(row: np.ndarray, truncated: bool) -> EmbeddingOutput:
    import numpy as np

    return EmbeddingOutput(np.asarray(row, dtype=np.float32), truncated)


def classification_output(probs: np.ndarray, labels: list[str], truncated: bool) -> ClassificationOutput:
    import numpy as np

    best = int(np.argmax(probs))
    scores = {labels[i]: float(p) for i, p in enumerate(probs)}
    return ClassificationOutput(labels[best], float(probs[best]), scores, truncated)


def fill_mask_output(probs: np.ndarray, decode: Callable[[int], str], top_k: int, truncated: bool) -> FillMaskOutput:
    import numpy as np

    k = max(1, min(int(top_k), probs.shape[-1]))
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return FillMaskOutput([TokenScore(decode(int(i)), float(probs[i]), int(i)) for i in idx], truncated)
