"""Errors of the inference layer.

Every message is one line a user (or an agent reading an MCP tool error) can act on, so the CLI
and the MCP server can show ``str(exc)`` as it is, without a traceback.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error this layer raises on purpose."""


class ModelNotFoundError(InferenceError):
    """The model reference matches no local directory, model dir, cache entry or built-in model."""

    def __init__(self, model: str, available: list[str] | None = None, reason: str | None = None) -> None:
        self.model = model
        self.available = list(available or [])
        msg = f"model not found: {model!r}"
        if reason:
            msg += f" ({reason})"
        msg += "; available: " + (", ".join(self.available) if self.available else "none")
        super().__init__(msg)


class UnsupportedTaskError(InferenceError):
    """The task is unknown, or the model cannot perform it."""


class InvalidInputError(InferenceError):
    """An input item is unusable (empty, not text, missing the mask token...)."""


class InputTooLongError(InvalidInputError):
    """An input exceeds the model's token limit and truncation is off."""


class BackendUnavailableError(InferenceError):
    """The requested backend or device cannot run here (not installed, no GPU, export failed)."""


class ModelLoadError(InferenceError):
    """The model files exist but could not be loaded or exported."""


class LoadCancelledError(ModelLoadError):
    """The engine closed while the model was loading (its export child was killed): no other
    backend is tried."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's text, with its type when the text is empty."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def unwrap_group(exc: BaseException) -> BaseException:
    """The single leaf of nested exception groups (trio wraps nursery errors), else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
