"""Small file-system helpers shared by the modules that write files atomically."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir_best_effort(directory: Path) -> None:
    """Make a rename into ``directory`` durable; ignored where a directory cannot be fsynced
    (some file systems and platforms refuse it, and the file itself is already synced)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
