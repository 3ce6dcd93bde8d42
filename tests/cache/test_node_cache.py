"""The cache in a real node with the real default model (networking off, so a local cache key):
repeated inputs within a workflow run once, a repeat workflow is served wholly from the cache
with the original results and stats, ``cache: false`` runs everything, and the files on disk
hold no plaintext."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2p.cache.cache import STORE_FILE
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def node_config(tmp_path: Path, shared_cache_dir: Path) -> Any:
    """The conftest node, with the result cache on (it is off by default)."""
    from p2p.config import CacheConfig
    from tests.conftest import make_node_config

    return make_node_config(tmp_path / "node", shared_cache_dir).model_copy(update={"cache": CacheConfig(enabled=True)})

UNIQUE = [f"Result cache sentence number {i} about herons and otters." for i in range(6)]


async def _run(node: Any, texts: list[str], *, cache: bool = True) -> list[dict[str, Any]]:
    sub = await node.submit_workflow("cache", [{"model": DEFAULT_MODEL, "input": t} for t in texts],
                                     tag="local-only", cache=cache)
    wid = sub["workflow_id"]
    await node.wait_for_workflow(wid, 240)
    st = node.workflow_status(wid, include_results=True)
    assert st["state"] == "completed", st
    return st["tasks"]


async def test_repeats_run_once_and_a_repeat_workflow_comes_from_the_cache(node: Any) -> None:
    texts = UNIQUE + UNIQUE[:3] + UNIQUE[:3]  # half of the second half repeats earlier inputs
    first = await _run(node, texts)
    info = node.node_info()["cache"]
    assert info["misses"] == len(UNIQUE) and info["stored"] == len(UNIQUE), info  # six inferences, not twelve
    assert info["hits"] == 6 and not info["shared"], info
    cached = [t for t in first if t.get("cached")]
    assert len(cached) == 6
    by_text = {}
    for text, t in zip(texts, first):
        if not t.get("cached"):
            by_text[text] = t
    for text, t in zip(texts, first):  # a repeat carries the original's result and stats
        assert t["result"] == by_text[text]["result"] and t["stats"] == by_text[text]["stats"]

    again = await _run(node, texts)
    assert all(t.get("cached") for t in again)
    for a, b in zip(first, again):
        assert a["result"] == b["result"] and a["stats"] == b["stats"]
    assert node.node_info()["cache"]["hits"] == 6 + len(texts)

    before = node.node_info()["cache"]
    fresh = await _run(node, texts, cache=False)
    assert not any(t.get("cached") for t in fresh)
    after = node.node_info()["cache"]
    assert (after["hits"], after["misses"], after["stored"]) == (before["hits"], before["misses"], before["stored"])
    for a, b in zip(first, fresh):  # the same model on the same input: the same embedding
        assert np.allclose(a["result"]["embedding"], b["result"]["embedding"], atol=1e-5)

    data = Path(node.config.data_dir)
    disk = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith(STORE_FILE))
    assert disk, "no cache file"
    for text in UNIQUE:
        assert text.encode() not in disk and text.encode("utf-16-le") not in disk
    for t in first:
        raw = np.asarray(t["result"]["embedding"], dtype="<f4").tobytes()
        assert raw[:32] not in disk and raw[-32:] not in disk
    assert b"onnx" not in disk and DEFAULT_MODEL.encode() not in disk
