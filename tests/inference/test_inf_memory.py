"""inference.memory: glibc malloc settings and trimming give freed memory back to the OS.

Run in a fresh interpreter each, so what other tests allocated does not blur the figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from inference import memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc only (mallopt, malloc_trim)")

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


def test_trim_returns_a_fragmented_heap_to_the_os() -> None:
    held, freed, trimmed, again = _child()
    assert held - trimmed > 150, f"RSS {held} MiB with the buffers, {trimmed} MiB after trimming"
    assert freed - trimmed > 150, f"freeing alone left {freed} MiB, trimming {trimmed} MiB: nothing to show"
    assert not again, "a second step with RSS unchanged trimmed again"


def test_configure_is_idempotent() -> None:
    assert memory.configure() is True
    assert memory.configure() is True
