"""The autoscaled inference worker pool (inference.pool, inference.autoscale, inference.worker).

The scaling rule is a pure function, tested with hypothesis. The pool itself is tested with real
worker processes running the packaged all-MiniLM-L6-v2: it scales up under a burst and back
down after ``worker_idle_s``; a worker killed with SIGKILL mid-batch loses no request; a model
that cannot load in a worker gets one clear error naming it while the pool keeps serving; bad
``workers_min``/``workers_max`` are refused with one line naming the key. Tests wait on the
pool's change events (``WorkerPool.wait_until``), never on the clock, and assert no speed.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from inference.autoscale import ScaleLimits, WorkerView, autoscale_target
from inference.config import InferenceConfig
from inference.engine import InferenceEngine
from inference.errors import InferenceError, ModelLoadError
from inference.pool import WorkerCrashedError

# --- the rule (pure) -------------------------------------------------------------------------

limits_st = st.builds(
    lambda lo, extra, idle, batch: ScaleLimits(lo, lo + extra, idle, batch),
    st.integers(1, 6), st.integers(0, 6), st.floats(0.01, 100), st.integers(1, 64),
)
workers_st = st.lists(st.builds(WorkerView, st.booleans(), st.floats(0, 1000)), max_size=12).map(tuple)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 5000), workers_st, st.integers(0, 4), st.floats(0, 2000), limits_st, st.booleans())
def test_target_stays_within_bounds_and_moves_only_for_a_reason(depth, workers, starting, now, limits, demanded) -> None:
    target = autoscale_target(depth, workers, starting, now, limits, demanded=demanded)
    live = len(workers) + starting
    floor = limits.min if demanded or depth else 0
    assert 0 <= target <= limits.max
    assert target >= floor
    if live <= limits.max and target > max(live, floor):
        # up only when items wait that the idle and starting workers cannot take as full batches
        assert depth > 0
        free = starting + sum(not w.busy for w in workers)
        assert -(-depth // limits.max_batch) > free
    if live <= limits.max and target < live and live > floor:
        # down only with nothing queued, and never below the busy workers nor by more than the
        # workers idle for idle_s
        assert depth == 0
        expired = sum(1 for w in workers if not w.busy and now - w.idle_since >= limits.idle_s)
        assert live - target <= expired
        assert target >= min(live, sum(w.busy for w in workers) + starting)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 64), limits_st)
def test_a_queue_with_every_worker_busy_scales_up_to_max(depth, busy, limits) -> None:
    workers = tuple(WorkerView(True, 0.0) for _ in range(min(busy, limits.max)))
    target = autoscale_target(depth, workers, 0, 10.0, limits, demanded=True)
    assert target == max(limits.min, min(limits.max, len(workers) + -(-depth // limits.max_batch)))
    assert target > len(workers) or len(workers) == limits.max


@settings(max_examples=200, deadline=None)
@given(workers_st, st.floats(0, 1000), limits_st)
def test_lazy_start_and_the_floor(workers, now, limits) -> None:
    assert autoscale_target(0, (), 0, now, limits, demanded=False) == 0  # no worker before the first inference
    assert autoscale_target(1, (), 0, now, limits, demanded=False) >= 1
    assert autoscale_target(0, workers, 0, now + 10 * limits.idle_s + 2000, limits, demanded=True) >= min(
        limits.min, limits.max)


def test_idle_workers_stop_only_after_idle_s() -> None:
    lim = ScaleLimits(min=1, max=4, idle_s=30.0, max_batch=32)
    ws = (WorkerView(False, 100.0), WorkerView(False, 110.0), WorkerView(True, 0.0))
    assert autoscale_target(0, ws, 0, 129.9, lim, demanded=True) == 3
    assert autoscale_target(0, ws, 0, 130.0, lim, demanded=True) == 2
    assert autoscale_target(0, ws, 0, 140.0, lim, demanded=True) == 1  # both idle ones stop; the busy one stays
    assert autoscale_target(5, ws, 0, 500.0, lim, demanded=True) == 3  # items waiting: none stops


# --- configuration ---------------------------------------------------------------------------

def test_bad_worker_bounds_are_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"inference.workers_max \(2\) is below inference.workers_min \(3\)"):
        InferenceConfig(workers_min=3, workers_max=2)
    for field in ("workers_min", "workers_max"):
        with pytest.raises(ValidationError, match=field):
            InferenceConfig(**{field: 0})
    from p2p.settings import SettingsError, load_settings

    bad = tmp_path / "bad.toml"
    bad.write_text("[inference]\nworkers_min = 3\nworkers_max = 2\n")
    with pytest.raises(SettingsError) as info:
        load_settings(bad)
    msg = str(info.value)
    assert "\n" not in msg and "inference.workers_max" in msg and "workers_min (3)" in msg
    bad.write_text("[inference]\nworkers_min = 0\n")
    with pytest.raises(SettingsError, match=r"inference\.workers_min"):
        load_settings(bad)


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 64), st.integers(0, 8))
def test_workers_never_outnumber_the_cores_unless_threads_are_set(lo: int, hi: int, cores: int, threads: int) -> None:
    """A node pinned to one core runs one single-threaded worker, not two taking turns; with
    ``threads`` set, the operator chose the split and ``workers_max`` stands."""
    cfg = InferenceConfig(workers_min=min(lo, hi), workers_max=max(lo, hi), threads=threads)
    n = cfg.max_workers(cores)
    assert cfg.workers_min <= n <= cfg.workers_max
    if threads:
        assert n == cfg.workers_max and cfg.worker_threads(cores) == threads
    else:
        assert n == max(cfg.workers_min, min(cfg.workers_max, cores))
        assert cfg.worker_threads(cores) == max(1, cores // n)
    assert InferenceConfig().max_workers(1) == 1 and InferenceConfig().max_workers(2) == 2


# --- the pool, with real workers ---------------------------------------------------------------

TEXTS = [f"sentence number {i} about peers sharing inference work across ordinary machines" for i in range(600)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_lazy_start_burst_scales_up_then_idle_scales_down(onnx_data_dir: Path) -> None:
    cfg = InferenceConfig(pool=True, workers_min=1, workers_max=2, worker_idle_s=0.5, max_batch=16)
    async with InferenceEngine.open(cfg, onnx_data_dir) as engine:
        pool = engine.pool
        assert engine.workers_info()["live"] == 0 and pool.spawned == 0  # lazy: nothing before the first inference
        solo = await engine.infer(None, TEXTS[:3])
        assert solo.backend == "onnx" and len(solo.outputs) == 3
        out: dict[int, np.ndarray] = {}

        async def one(i: int) -> None:
            out[i] = (await engine.infer(None, [TEXTS[i]])).outputs[0].embedding

        fresh: list[tuple[int, bool]] = []  # (pid, model loaded) of each worker seen before its first batch

        def second(p: Any) -> bool:
            fresh.extend((w.pid, bool(w.lanes)) for w in p.workers if w.batches == 0)
            return p.spawned >= 2

        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                for i in range(len(TEXTS)):
                    n.start_soon(one, i)
                await pool.wait_until(second)  # the burst started a second worker
            # it took work only once the model was loaded and a full batch run (``_preload``)
            assert fresh and all(loaded for _, loaded in fresh), fresh
            info = engine.workers_info()
            assert info["max"] == 2 and info["queue_depth"] == 0
            # down after worker_idle_s, to workers_min, and no further
            await pool.wait_until(lambda p: len(p.workers) == 1 and p.target == 1 and not p.starting)
        pids = [w["pid"] for w in engine.workers_info()["workers"]]
        assert max(h[1] for h in pool.history) == 2
        assert sorted(out) == list(range(len(TEXTS)))
        for i in range(3):
            assert float(out[i] @ solo.outputs[i].embedding) > 0.9999
        assert engine.capacity(64.0) >= 1.0
        loaded = engine.loaded_models()
        assert loaded[0]["items"] == 3 + len(TEXTS) and loaded[0]["task"] == "embedding"
    assert not any(_alive(p) for p in pids)  # closing the engine ended its workers


async def test_worker_killed_mid_batch_loses_no_request(onnx_data_dir: Path) -> None:
    """SIGKILL the busy worker, twice: its batches rerun on a respawned worker, or fail with the
    retryable WorkerCrashedError (the batch killed two workers), which the caller retries — as the
    scheduler does. Every request ends with its own correct embedding."""
    cfg = InferenceConfig(pool=True, workers_min=1, workers_max=1, worker_idle_s=60, max_batch=64)
    texts = [t + " and more words to make each batch take a while to run" for t in TEXTS[:256]]
    async with InferenceEngine.open(cfg, onnx_data_dir) as engine:
        pool = engine.pool
        ref = await engine.infer(None, texts[:4])
        out: dict[int, np.ndarray] = {}
        retried: list[str] = []
        killed: list[int] = []

        async def one(i: int) -> None:
            while True:
                try:
                    out[i] = (await engine.infer(None, [texts[i]])).outputs[0].embedding
                    return
                except WorkerCrashedError as exc:
                    retried.append(str(exc))

        async def killer() -> None:
            for _ in range(2):
                await pool.wait_until(lambda p: any(w.busy for w in p.workers) and not p.starting)
                w = next(w for w in pool.workers if w.busy)
                os.kill(w.pid, signal.SIGKILL)
                killed.append(w.pid)
                await pool.wait_until(lambda p: w not in p.workers)

        with trio.fail_after(150):
            async with trio.open_nursery() as n:
                n.start_soon(killer)
                await trio.sleep(0)
                for i in range(len(texts)):
                    n.start_soon(one, i)
        assert len(killed) == 2 and pool.crashes == 2
        assert sorted(out) == list(range(len(texts)))
        for i in range(4):
            assert float(out[i] @ ref.outputs[i].embedding) > 0.9999
        for msg in retried:
            assert "\n" not in msg and "killed by SIGKILL" in msg
        info = engine.workers_info()
        assert info["live"] == 1 and info["crashes"] == 2 and info["workers"][0]["pid"] not in killed
        assert (await engine.infer(None, ["still serving"])).outputs  # the node keeps serving


async def test_model_that_fails_to_load_in_a_worker_names_it(onnx_data_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models" / "broken-encoder"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (broken / "tokenizer.json").write_text("{ not a tokenizer")
    cfg = InferenceConfig(pool=True, workers_min=1, workers_max=1, model_dirs=[str(tmp_path / "models")])
    async with InferenceEngine.open(cfg, onnx_data_dir) as engine:
        with trio.fail_after(120):
            with pytest.raises(ModelLoadError) as info:
                await engine.infer("broken-encoder", ["hello"])
            msg = str(info.value)
            assert "\n" not in msg and "broken-encoder" in msg and "could not load" in msg
            ok = await engine.infer(None, ["the pool keeps serving other models"])  # same worker
        assert len(ok.outputs) == 1
        assert engine.workers_info()["crashes"] == 0


async def test_in_process_mode_stays_available(onnx_data_dir: Path) -> None:
    async with InferenceEngine.open(InferenceConfig(max_batch=8, pool=False), onnx_data_dir) as engine:
        assert engine.pool is None and engine.workers_info()["live"] == 0
        r = await engine.infer(None, ["in this very process"])
        info = engine.workers_info()
        assert r.outputs and info["mode"] == "in-process" and info["workers"][0]["pid"] == os.getpid()
        assert engine.capacity(2.0) == 2.0


async def test_no_worker_can_start_fails_requests_clearly(onnx_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot start (here: its interpreter is missing) fails the waiting request
    with one line, instead of leaving it waiting for ever."""
    import inference.pool as pool_mod

    monkeypatch.setattr(pool_mod, "SPAWN_BACKOFF_S", 0.05)
    monkeypatch.setattr(pool_mod, "WORKER_PYTHON", str(onnx_data_dir / "no-such-python"))
    async with InferenceEngine.open(InferenceConfig(pool=True), onnx_data_dir) as engine:
        with trio.fail_after(60), pytest.raises(InferenceError, match="no inference worker could be started"):
            await engine.infer(None, ["hello"])


async def test_a_hung_worker_is_killed_and_its_batch_rerun(onnx_data_dir: Path) -> None:
    """A worker that stops answering (SIGSTOP: a frozen or deadlocked process, which a crash
    check never sees) is killed once a batch has waited ``batch_timeout_s``; the batch reruns
    on a new worker and every request ends with its own correct embedding."""
    cfg = InferenceConfig(pool=True, workers_min=1, workers_max=1, worker_idle_s=60, max_batch=8, batch_timeout_s=3)
    async with InferenceEngine.open(cfg, onnx_data_dir) as engine:
        pool = engine.pool
        ref = await engine.infer(None, TEXTS[:4])  # the model is loaded: later batches get batch_timeout_s alone
        frozen: list[int] = []
        out: dict[int, np.ndarray] = {}
        retried: list[str] = []

        async def one(i: int) -> None:
            while True:
                try:
                    out[i] = (await engine.infer(None, [TEXTS[i]])).outputs[0].embedding
                    return
                except WorkerCrashedError as exc:
                    retried.append(str(exc))

        async def freezer() -> None:
            await pool.wait_until(lambda p: any(w.busy for w in p.workers))
            w = next(w for w in pool.workers if w.busy)
            os.kill(w.pid, signal.SIGSTOP)
            frozen.append(w.pid)

        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                n.start_soon(freezer)
                await trio.sleep(0)
                for i in range(4):
                    n.start_soon(one, i)
        assert frozen and pool.hung == 1 and pool.crashes == 1, (frozen, pool.hung, pool.crashes)
        assert sorted(out) == [0, 1, 2, 3]
        for i in range(4):
            assert float(out[i] @ ref.outputs[i].embedding) > 0.9999
        for msg in retried:
            assert "\n" not in msg and "hung" in msg and "gave no answer in 3 s" in msg, msg
        with trio.fail_after(30):
            while _alive(frozen[0]):  # killed (a stopped process still dies of SIGKILL), and reaped
                await trio.sleep(0.05)
        info = engine.workers_info()
        assert info["hung"] == 1 and frozen[0] not in [w["pid"] for w in info["workers"]]
        assert (await engine.infer(None, ["still serving"])).outputs
