"""Text to model inputs, with the per-item checks that must not fail a whole batch.

Uses the Rust ``tokenizers`` library directly (tokenizer.json): it is what transformers' fast
tokenizers run underneath, it tokenizes a batch in parallel, and it keeps transformers out of
the ONNX path so a cold ``ipfs-accelerate infer`` starts quickly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from inference.errors import InferenceError, InputTooLongError, InvalidInputError, ModelLoadError

if TYPE_CHECKING:
    import numpy as np


@dataclass(slots=True)
class EncodedBatch:
    """Padded arrays for the items that passed the checks, and an error for each that did not."""

    feeds: dict[str, np.ndarray]
    rows: list[int]  # original item index of each feed row
    truncated: list[bool]  # per feed row
    errors: dict[int, InferenceError] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _token_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def check_text(item: Any, index: int) -> InvalidInputError | None:
    """The checks that need no tokenizer: text, not empty."""
    if not isinstance(item, str):
        return InvalidInputError(f"input {index} is not text ({type(item).__name__})")
    if not item.strip():
        return InvalidInputError(f"input {index} is empty")
    return None


class TextEncoder:
    """Tokenizes with truncation to the model's limit (flagging it) or refuses long inputs."""

    def __init__(self, path: Path, max_length: int, truncate: bool, mask_required: bool = False) -> None:
        from tokenizers import Tokenizer

        self.max_length = int(max_length)
        self.truncate = truncate
        tok_file = path / "tokenizer.json"
        if tok_file.is_file():
            base = Tokenizer.from_file(str(tok_file))
        else:  # only a slow vocab: let transformers convert it once
            try:
                from inference.models import force_offline

                force_offline()
                from transformers import AutoTokenizer

                base = AutoTokenizer.from_pretrained(str(path), use_fast=True).backend_tokenizer
            except Exception as exc:
                raise ModelLoadError(f"cannot load a tokenizer from {path}: {exc}") from None
        specials = {**_read_json(path / "tokenizer_config.json"), **_read_json(path / "special_tokens_map.json")}
        self.mask_token = _token_str(specials.get("mask_token"))
        self.mask_id = base.token_to_id(self.mask_token) if self.mask_token else None
        pad_token = _token_str(specials.get("pad_token")) or "[PAD]"
        pad_id = base.token_to_id(pad_token)
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self.mask_required = mask_required
        if mask_required and self.mask_id is None:
            raise ModelLoadError(f"the tokenizer in {path} has no mask token, so it cannot do fill-mask")
        # Two copies: one truncating (what runs), one not (only to report a refused input's length).
        base.no_padding()
        base.no_truncation()
        self._full = base
        self._tok = Tokenizer.from_str(base.to_str())
        self._tok.enable_truncation(max_length=self.max_length)

    def decode(self, token_id: int) -> str:
        text = self._tok.decode([token_id], skip_special_tokens=False).strip()
        return text or (self._tok.id_to_token(token_id) or "")

    def encode(self, texts: list[Any]) -> EncodedBatch:
        import numpy as np  # lazily: an idle node never imports numpy (10 MB of its RSS)
        errors: dict[int, InferenceError] = {}
        good: list[int] = []
        for i, t in enumerate(texts):
            err = check_text(t, i)
            if err is None:
                good.append(i)
            else:
                errors[i] = err
        encs = self._tok.encode_batch([texts[i] for i in good]) if good else []
        rows: list[int] = []
        kept = []
        truncated: list[bool] = []
        for i, enc in zip(good, encs):
            cut = bool(enc.overflowing)
            if cut and not self.truncate:
                n = len(self._full.encode(texts[i]).ids)
                errors[i] = InputTooLongError(
                    f"input {i} has {n} tokens, over the model's limit of {self.max_length} "
                    "(inference.truncate = true truncates instead)"
                )
                continue
            if self.mask_required:
                count = enc.ids.count(self.mask_id)
                if count != 1:
                    where = " (it was truncated away)" if count == 0 and cut else ""
                    errors[i] = InvalidInputError(
                        f"input {i} must contain the mask token {self.mask_token} exactly once, found {count}{where}"
                    )
                    continue
            rows.append(i)
            kept.append(enc)
            truncated.append(cut)
        length = max((len(e.ids) for e in kept), default=0)
        n = len(kept)
        ids = np.full((n, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        for r, e in enumerate(kept):
            k = len(e.ids)
            ids[r, :k] = e.ids
            mask[r, :k] = 1
            types[r, :k] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return EncodedBatch(feeds, rows, truncated, errors)
