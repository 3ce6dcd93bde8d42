"""UnixFS CID throughput against plain sha256 of the same bytes, in the same run (issue 10).

A kubo-compatible CID hashes every byte once with sha256 (per 256 KiB leaf) plus one small
dag-pb node per 174 leaves, so it should run near sha256's speed; the goal is a ratio near 1.
Both read the same file from the page cache (written just before, read once to warm it),
best of 3 runs each, interleaved. Also: streaming every block out (what a block exchange
serves from), and a cached lookup of the model directory (what a restart costs).
Run: python -m bench.bench_unixfs   (BENCH_UNIXFS_MB sets the file size, default 256)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.check import require
from p2p.content.cache import CidCache
from p2p.content.unixfs import CHUNK_SIZE, dir_cid, file_root, iter_file_blocks


def _best_of(fn: Callable[[], int], repeat: int = 3) -> tuple[float, int]:
    best, out = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sha256_file(path: Path) -> int:
    """Plain sha256 over the file in 1 MiB reads: the floor any content hash pays."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    n_total = 0
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            n_total += n
    require(len(h.digest()) == 32, "sha256 gave no digest")
    return n_total


def cid_file(path: Path) -> int:
    root = file_root(path)
    require(root.cid[:2] == b"\x01\x70", f"a multi-chunk file must have a dag-pb root, got {root.cid[:2].hex()}")
    return root.size


def stream_blocks(path: Path) -> int:
    return sum(len(block) for cid, block in iter_file_blocks(path) if cid[1] == 0x55)


def main() -> None:
    mb = int(os.environ.get("BENCH_UNIXFS_MB", "256"))
    size = mb * (1 << 20) + 12_345  # not a multiple of the chunk: a short last leaf
    with tempfile.TemporaryDirectory(prefix="bench-unixfs-") as d:
        path = Path(d) / "blob"
        with open(path, "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(12_345))
        sha256_file(path)  # warm the page cache

        t_sha = t_cid = float("inf")
        for _ in range(3):  # interleaved, so drift on a shared machine hits both alike
            t, n = _best_of(lambda: sha256_file(path), 1)
            require(n == size, f"sha256 read {n} of {size} bytes")
            t_sha = min(t_sha, t)
            t, n = _best_of(lambda: cid_file(path), 1)
            require(n == size, f"the CID covered {n} of {size} bytes: it hashed nothing or too little")
            t_cid = min(t_cid, t)
        t_stream, n = _best_of(lambda: stream_blocks(path), 1)
        require(n == size, f"the block stream gave {n} of {size} leaf bytes")

        sha_mbs, cid_mbs = size / t_sha / 1e6, size / t_cid / 1e6
        print(f"{size / 1e6:,.0f} MB file ({-(-size // CHUNK_SIZE):,} leaves): sha256 {sha_mbs:,.0f} MB/s, "
              f"UnixFS CID {cid_mbs:,.0f} MB/s, ratio CID/sha256 = {cid_mbs / sha_mbs:.2f} (goal ~1); "
              f"every block streamed {size / t_stream / 1e6:,.0f} MB/s")

        try:
            from inference.models import resolve_model

            model = resolve_model("sentence-transformers/all-MiniLM-L6-v2").path
        except Exception as exc:  # noqa: BLE001 - the model is optional for this figure
            print(f"default model not installed ({exc}); no cached-lookup figure")
            return
        cache = CidCache(Path(d) / "cache")
        t_cold, _ = _best_of(lambda: len(dir_cid(model, cache)[1]), 1)
        t_warm, nfiles = _best_of(lambda: len(dir_cid(model, cache)[1]))
        require(nfiles > 0 and cache.hits >= nfiles, f"the cached lookup hashed again ({cache.hits} hits, {nfiles} files)")
        print(f"default model dir ({nfiles} files): first CID {t_cold * 1e3:,.0f} ms, cached {t_warm * 1e3:,.1f} ms")


if __name__ == "__main__":
    main()
