"""The baseline every throughput benchmark compares with: a bare onnxruntime session on the
engine's own exported graph (pooling and normalisation are inside it), fed batches of 32 by the
same tokenizer — no executor, no threads, no scheduler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from bench.check import require, require_count

BATCH = 32


def raw_ort_runner(model_path: Path, tokenizer_dir: Path, max_length: int, threads: int = 0) -> Callable[[list[str]], float]:
    """A function that embeds ``texts`` at batch 32 and returns sentences per second."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads > 0:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def run(texts: list[str]) -> float:
        require(texts, "raw onnxruntime baseline: no sentences to embed")
        rows = 0
        t = time.perf_counter()
        for i in range(0, len(texts), BATCH):
            encs = tok.encode_batch(texts[i : i + BATCH])
            feeds = {
                "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
            }
            rows += len(sess.run(None, {n: feeds[n] for n in names})[0])
        elapsed = time.perf_counter() - t
        require_count(rows, len(texts), "raw onnxruntime baseline: embeddings returned")
        return len(texts) / elapsed

    return run
