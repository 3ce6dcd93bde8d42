"""inference.memory (glibc malloc settings and trimming give freed memory back to the OS) and the
engine's preload: the two things that keep a node's RSS flat across work already done.

The trim figures come from a fresh interpreter, so what other tests allocated does not blur them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from inference import memory

glibc_only = pytest.mark.skipif(memory._glibc() is None, reason="glibc only (mallopt, malloc_trim)")

# 200 MB of 4 KiB buffers (above pymalloc's limit, so glibc's), one in 64 kept: the heap is then
# mostly free but pinned by live chunks all along it, which glibc's own top-of-heap trim cannot
# return. The child prints RSS in MiB with the buffers, after freeing, after one Trimmer step.
_CHILD = r"""
import gc, sys
from inference import memory
assert memory.configure()
mib = lambda: memory.rss_bytes() >> 20
bufs = [bytearray(4096) for _ in range(50_000)]
held = mib()
keep = bufs[::64]
del bufs
gc.collect()
freed = mib()
t = memory.Trimmer()
t._step()
print(held, freed, mib(), t._step(), flush=True)
"""


def _child() -> tuple[int, int, int, bool]:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=True)
    held, freed, trimmed, again = out.stdout.splitlines()[-1].split()  # structlog, unconfigured, prints above
    return int(held), int(freed), int(trimmed), again == "True"


@glibc_only
def test_trim_returns_a_fragmented_heap_to_the_os() -> None:
    held, freed, trimmed, again = _child()
    assert held - trimmed > 150, f"RSS {held} MiB with the buffers, {trimmed} MiB after trimming"
    assert freed - trimmed > 150, f"freeing alone left {freed} MiB, trimming {trimmed} MiB: nothing to show"
    assert not again, "a second step with RSS unchanged trimmed again"


@glibc_only
def test_configure_is_idempotent() -> None:
    assert memory.configure() is True
    assert memory.configure() is True


async def test_preload_loads_the_default_model_before_the_block(onnx_data_dir) -> None:
    """A node pays its model's memory at start (RSS then stays flat across work): the model is
    loaded and has run a full batch before the caller's block begins; the first request reuses it."""
    from inference.config import InferenceConfig
    from inference.engine import InferenceEngine

    async with InferenceEngine.open(InferenceConfig(max_batch=8), onnx_data_dir, preload=True) as engine:
        loaded = engine.loaded_models()
        assert [(m["task"], m["batches"], m["items"]) for m in loaded] == [("embedding", 1, 8)]
        await engine.infer(None, ["hello"])
        assert engine.load_count == 1


async def test_preload_of_a_missing_model_does_not_stop_the_engine(onnx_data_dir) -> None:
    from inference.config import InferenceConfig
    from inference.engine import InferenceEngine
    from inference.errors import ModelNotFoundError

    async with InferenceEngine.open(InferenceConfig(default_model="nobody/no-such-model"), onnx_data_dir, preload=True) as engine:
        assert engine.loaded_models() == []
        with pytest.raises(ModelNotFoundError):
            await engine.infer(None, ["hello"])  # the request still gets the clear error
