"""The CID cache: a real SQLite file, reused across instances, invalidated by a changed file."""

from __future__ import annotations

import os
from pathlib import Path

from p2p.content.cache import FILE_NAME, CidCache
from p2p.content.unixfs import CHUNK_SIZE, dir_cid, file_root


def test_a_second_start_hashes_nothing_and_gives_the_same_cids(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 5))
    (model / "sub" / "config.json").write_text("{}")
    cold = CidCache(tmp_path / "cache")
    first = dir_cid(model, cold)
    assert (cold.hits, cold.misses) == (0, 2)
    cold.close()
    assert (tmp_path / "cache" / FILE_NAME).stat().st_size > 0

    warm = CidCache(tmp_path / "cache")  # a restart: a new instance on the same file
    assert dir_cid(model, warm) == first == dir_cid(model)
    assert (warm.hits, warm.misses) == (2, 0)


def test_a_rewritten_file_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100)
    cache = CidCache(tmp_path / "cache")
    old = cache.file_root(path)
    st = path.stat()
    path.write_bytes(b"b" * 100)  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a new mtime, even on a coarse clock
    new = cache.file_root(path)
    assert new != old and new == file_root(path) and cache.misses == 2


def test_a_corrupt_cache_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / FILE_NAME).write_bytes(b"this is not sqlite" * 100)
    path = tmp_path / "f"
    path.write_bytes(b"content")
    cache = CidCache(tmp_path / "cache")
    assert cache.file_root(path) == file_root(path)
    assert (tmp_path / "cache" / (FILE_NAME + ".corrupt")).exists()


def test_a_foreign_row_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"content")
    cache = CidCache(tmp_path / "cache")
    right = cache.file_root(path)
    assert cache._db is not None
    cache._db.execute("UPDATE file_roots SET cid = x'00', tsize = 0")  # garbage someone else wrote
    assert cache.file_root(path) == right and cache.misses == 2
