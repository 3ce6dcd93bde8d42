"""Process memory hygiene for a long-running node: glibc malloc settings and trimming.

Why this exists: a node's RSS climbed with work already done while its live Python objects
grew far less. glibc keeps freed memory: every thread that allocates gets its own malloc arena
(up to 8 per core; a node had 12-13), trio's worker threads (inference batches, SQLite reads,
crypto) come and go, and the same transient peaks are re-reached in one arena or another, each
keeping its own high-water mark. glibc gives back by itself only free memory at the top of a
heap. Measured on 4 nodes, 1,500 tasks a wave: across one wave a node's main arena grew 34 MB
and its free-but-held chunks 13 -> 50 MB, while tracemalloc counts ~7 KB of new live objects
per task folded (~10 MB a wave); one ``malloc_trim(0)`` returned 51 MB of a 451 MB RSS.

What it does, once per process (``configure``): caps the arena count (``M_ARENA_MAX``) and fixes
the mmap threshold so large short-lived buffers (model inputs and outputs) are mmapped and
unmapped instead of fragmenting a heap. ``Trimmer`` then calls ``malloc_trim(0)`` in a worker
thread every few seconds while RSS moves.

Elsewhere than glibc (macOS, musl) both are no-ops: those allocators behave differently and
``mallopt`` does not exist.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

import structlog
import trio

log = structlog.get_logger()

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENA_MAX = 2
# Allocations this large or larger are mmapped (and unmapped when freed). Setting it also stops
# glibc from raising the threshold dynamically, which otherwise moves large buffers onto heaps.
MMAP_THRESHOLD = 256 * 1024
TRIM_THRESHOLD = 1024 * 1024

_lock = threading.Lock()
_libc: ctypes.CDLL | None = None
_configured = False
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is not None:
        return _libc
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None  # not glibc (musl has no gnu_get_libc_version)
    _libc = libc
    return libc


def configure() -> bool:
    """Apply the malloc settings above once per process; True when they are in force.

    Call it early, before worker threads allocate (their arenas are made on first use)."""
    global _configured
    with _lock:
        if _configured:
            return True
        libc = _glibc()
        if libc is None:
            return False
        ok = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_ARENA_MAX, ARENA_MAX),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ))
        _configured = ok
        log.debug("memory.malloc_configured", ok=ok, arena_max=ARENA_MAX, mmap_threshold=MMAP_THRESHOLD)
        return ok


def trim() -> bool:
    """Return freed heap memory of every arena to the OS (blocking: call it from a worker thread)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def rss_bytes() -> int | None:
    """This process's resident set size (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class Trimmer:
    """Gives freed heap memory back to the OS every ``interval_s`` while the process runs.

    ``malloc_trim`` walks every arena (milliseconds), so it runs in a worker thread, never on the
    event loop. It is skipped while RSS has moved less than ``min_change`` bytes since the last
    trim: an idle node does not trim again and again for nothing."""

    def __init__(self, interval_s: float = 5.0, min_change: int = 1 << 20) -> None:
        self.interval_s = interval_s
        self.min_change = min_change
        self._after: int | None = None
        self.trims = 0

    def _step(self) -> bool:
        now = rss_bytes()
        if now is not None and self._after is not None and abs(now - self._after) < self.min_change:
            return False
        trim()
        self._after = rss_bytes()
        self.trims += 1
        return True

    async def run(self) -> None:
        """Trim forever (until cancelled); returns at once where malloc_trim does not exist."""
        if _glibc() is None:
            return
        while True:
            await trio.sleep(self.interval_s)
            await trio.to_thread.run_sync(self._step)
