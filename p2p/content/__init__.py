"""Content addressing: UnixFS CIDs that kubo agrees with, for model files and directories."""

from p2p.content.cache import CidCache
from p2p.content.unixfs import (
    ContentChangedError,
    ContentError,
    DirectoryTooLargeError,
    FileEntry,
    Root,
    dir_cid,
    dir_root,
    file_cid,
    file_root,
    iter_blocks,
    iter_file_blocks,
)

__all__ = [
    "CidCache",
    "ContentChangedError",
    "ContentError",
    "DirectoryTooLargeError",
    "FileEntry",
    "Root",
    "dir_cid",
    "dir_root",
    "file_cid",
    "file_root",
    "iter_blocks",
    "iter_file_blocks",
]
