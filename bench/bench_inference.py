"""Inference throughput and CLI start-up on this machine.

Compares, on the default model (all-MiniLM-L6-v2) and 512 ~15-word sentences:
  * the batching executor: 512 concurrent single-sentence requests through InferenceEngine;
  * a raw onnxruntime session at batch 32 on the same exported graph (tokenize + run);
  * transformers + torch at batch 32 (tokenize + forward + mean pooling + normalise).
Rounds are interleaved (executor, ORT, torch, executor, ...) and medians reported, so a noisy
neighbour on a shared machine hurts all three alike. Target: executor >= 0.95 x raw ORT.
Then cold starts by subprocess: `ipfs-accelerate infer` on a warm cache, `ipfs-accelerate --help`
(target <= 0.5 s).
"""

from __future__ import annotations

from bench.check import require_count
from bench.raw_ort import raw_ort_runner

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N_SENTENCES = 512
BATCH = 32
ROUNDS = 5
WORDS = (
    "the a network peer model machine fast slow data result task clock graph node river city "
    "morning evening quickly carefully small large green blue question answer system share "
    "between across under over learns builds sends receives computes stores finds"
).split()


def sentences(n: int = N_SENTENCES, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(13, 17))).capitalize() + "." for _ in range(n)]


def _data_dir() -> Path:
    from mcp_server.settings import load_settings

    return load_settings().data_path


def _torch(model_dir: Path, texts: list[str], max_length: int):
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def run() -> float:
        rows = 0
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                enc = tok(texts[i : i + BATCH], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                rows += len(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1))
        elapsed = time.perf_counter() - t
        require_count(rows, len(texts), "transformers+torch baseline: embeddings returned")
        return len(texts) / elapsed

    return run


def throughput(data_dir: Path) -> dict[str, float]:
    import trio

    from inference.config import InferenceConfig
    from inference.engine import InferenceEngine
    from inference.export import cache_root, ensure_onnx
    from inference.models import resolve_model

    texts = sentences()
    info = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    art = ensure_onnx(info, "embedding", cache_root(data_dir), 17)
    run_raw = raw_ort_runner(art.model_path, Path(info.path), info.max_length)
    raw = lambda: run_raw(texts)  # noqa: E731
    tor = _torch(Path(info.path), texts, info.max_length)
    figures: dict[str, list[float]] = {"executor": [], "raw_ort": [], "torch": [], "ratio": []}

    async def bench() -> None:
        async with InferenceEngine.open(InferenceConfig(max_batch=BATCH), data_dir) as engine:
            await engine.infer(None, texts[:BATCH])  # load + warm up

            answered = [0]

            async def one(t: str) -> None:
                out = await engine.infer(None, [t])
                if out:
                    answered[0] += 1

            async def executor_round() -> float:
                answered[0] = 0
                start = time.perf_counter()
                async with trio.open_nursery() as n:
                    for t in texts:
                        n.start_soon(one, t)
                elapsed = time.perf_counter() - start
                require_count(answered[0], len(texts), "batching executor: requests answered")
                return len(texts) / elapsed

            raw(), tor()  # warm up both
            for r in range(ROUNDS):
                # executor and raw ORT back to back (a noisy neighbour hits both alike); torch
                # after them, then a pause so its spinning OpenMP threads do not slow the next pair.
                figures["executor"].append(await executor_round())
                figures["raw_ort"].append(raw())  # blocking on purpose: nothing else runs meanwhile
                figures["ratio"].append(figures["executor"][-1] / figures["raw_ort"][-1])
                figures["torch"].append(tor())
                time.sleep(0.5)
                print(
                    f"  round {r + 1}: executor {figures['executor'][-1]:.0f}  raw ORT {figures['raw_ort'][-1]:.0f}"
                    f"  (ratio {figures['ratio'][-1]:.3f})  torch {figures['torch'][-1]:.0f} sent/s",
                    flush=True,
                )
            stats = engine.executor.stats()
            lane = next(iter(stats.values()))
            print(f"  executor: {lane['requests']} requests in {lane['batches']} batches (largest {lane['largest_batch']})")

    trio.run(bench)
    return {k: statistics.median(v) for k, v in figures.items()}


def cold_start(args: list[str], repeat: int) -> float:
    exe = str(Path(sys.executable).with_name("ipfs-accelerate"))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run([exe, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise RuntimeError(f"ipfs-accelerate {' '.join(args)} failed: {p.stderr.strip().splitlines()[-1:]}")
    return statistics.median(times)


def main() -> None:
    from mcp_server.log import configure_logging

    configure_logging("warning")
    data_dir = _data_dir()
    print(f"inference benchmark: {N_SENTENCES} sentences of ~15 words, all-MiniLM-L6-v2, data dir {data_dir}", flush=True)
    f = throughput(data_dir)
    ratio = f["ratio"]  # median of the per-round ratios of adjacent measurements
    print(f"batching executor (512 concurrent requests): {f['executor']:7.0f} sent/s")
    print(f"raw onnxruntime, batch {BATCH}:                 {f['raw_ort']:7.0f} sent/s")
    print(f"transformers + torch, batch {BATCH}:           {f['torch']:7.0f} sent/s")
    print(f"executor / raw ORT = {ratio:.3f} (median of per-round ratios; target >= 0.95) {'OK' if ratio >= 0.95 else 'BELOW TARGET'}")
    print(f"raw ORT / torch    = {f['raw_ort'] / f['torch']:.2f}")
    infer_s = cold_start(["infer", "--data-dir", str(data_dir), "--json", "hello world"], 5)
    help_s = cold_start(["--help"], 7)
    print(f"cold start `ipfs-accelerate infer` (warm cache): {infer_s:.2f} s (median of 5)")
    print(f"cold start `ipfs-accelerate --help`:            {help_s:.3f} s (median of 7, target <= 0.5) {'OK' if help_s <= 0.5 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
