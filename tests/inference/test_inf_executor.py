"""Batching executor: few batches for many requests, per-caller order, per-request failures,
structured shutdown. Uses plain Python batch functions (deterministic) and the real engine."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from conftest import DEFAULT_MODEL
from inference.config import InferenceConfig
from inference.engine import InferenceEngine
from inference.errors import InvalidInputError
from inference.executor import BatchCallError, BatchingExecutor, ExecutorClosedError


class Recorder:
    """Squares numbers; records each batch; an item < 0 is that item's error; 'boom' makes the call raise."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list] = []
        self.delay = delay
        self.threads: set[int] = set()

    def __call__(self, items: list) -> list:
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if "boom" in items:
            raise RuntimeError("whole batch failed")
        return [ValueError(f"negative {x}") if isinstance(x, int) and x < 0 else (x * x if isinstance(x, int) else x) for x in items]


async def test_many_concurrent_requests_become_few_batches() -> None:
    fn = Recorder()
    results: dict[int, list] = {}
    async with BatchingExecutor.open(max_batch=32, max_wait_ms=50) as ex:
        async def one(i: int) -> None:
            results[i] = await ex.submit("lane", fn, [i, i + 1000])

        async with trio.open_nursery() as n:
            for i in range(100):
                n.start_soon(one, i)
        assert ex.batch_count == len(fn.batches)
        stats = ex.stats("lane")
    assert results == {i: [i * i, (i + 1000) ** 2] for i in range(100)}
    assert len(fn.batches) <= math.ceil(200 / 32) + 1
    assert max(len(b) for b in fn.batches) == 32
    assert stats["requests"] == 100 and stats["items"] == 200
    assert threading.get_ident() not in fn.threads  # ran off the event loop thread


async def test_bad_item_fails_only_its_own_request() -> None:
    fn = Recorder()
    async with BatchingExecutor.open(max_batch=8, max_wait_ms=50) as ex:
        out: dict[int, list] = {}

        async def one(i: int) -> None:
            out[i] = await ex.submit("lane", fn, [-1 if i == 3 else i])

        async with trio.open_nursery() as n:
            for i in range(6):
                n.start_soon(one, i)
    assert len(fn.batches) == 1
    assert isinstance(out[3][0], ValueError)
    assert all(out[i] == [i * i] for i in range(6) if i != 3)


async def test_a_raising_batch_is_isolated_item_by_item() -> None:
    fn = Recorder()
    async with BatchingExecutor.open(max_batch=8, max_wait_ms=50) as ex:
        out: dict[int, list] = {}

        async def one(i: int) -> None:
            out[i] = await ex.submit("lane", fn, ["boom" if i == 2 else i])

        async with trio.open_nursery() as n:
            for i in range(5):
                n.start_soon(one, i)
        assert ex.stats("lane")["isolated_reruns"] == 1
    assert isinstance(out[2][0], BatchCallError) and "whole batch failed" in str(out[2][0])
    assert all(out[i] == [i * i] for i in range(5) if i != 2)


async def test_large_request_is_split_and_reassembled_in_order() -> None:
    fn = Recorder()
    async with BatchingExecutor.open(max_batch=10, max_wait_ms=1) as ex:
        res = await ex.submit("lane", fn, list(range(35)))
    assert res == [i * i for i in range(35)]
    assert [len(b) for b in fn.batches] == [10, 10, 10, 5]


async def test_next_batch_gathers_while_one_runs() -> None:
    fn = Recorder(delay=0.3)
    async with BatchingExecutor.open(max_batch=64, max_wait_ms=0) as ex:
        async with trio.open_nursery() as n:
            n.start_soon(ex.submit, "lane", fn, [0])
            await trio.sleep(0.1)  # the first batch is now running in its thread
            for i in range(1, 21):
                n.start_soon(ex.submit, "lane", fn, [i])
    assert len(fn.batches) == 2 and fn.batches[0] == [0]
    assert sorted(fn.batches[1]) == list(range(1, 21))  # trio starts tasks in no fixed order


async def test_cancelled_request_is_dropped_and_the_executor_stops_with_its_block() -> None:
    fn = Recorder(delay=0.2)
    async with BatchingExecutor.open(max_batch=4, max_wait_ms=0) as ex:
        async with trio.open_nursery() as n:
            n.start_soon(ex.submit, "lane", fn, [1])
            await trio.sleep(0.05)
            with trio.move_on_after(0.01):
                await ex.submit("lane", fn, [99])  # queued behind the running batch, then cancelled
        assert ex.stats("lane")["batches"] == 1
        lanes_ex = ex
    assert [99] not in fn.batches
    with pytest.raises(ExecutorClosedError):
        await lanes_ex.submit("lane", fn, [5])


async def test_engine_batches_concurrent_requests(onnx_data_dir: Path) -> None:
    texts = [f"sentence number {i} about peer to peer inference" for i in range(64)]
    async with InferenceEngine.open(InferenceConfig(max_batch=32, max_wait_ms=20), onnx_data_dir) as engine:
        solo = await engine.infer(None, texts[:5])  # load first, and a reference
        base = engine.executor.batch_count
        out: dict[int, np.ndarray] = {}
        errors: list[Exception] = []

        async def one(i: int) -> None:
            try:
                r = await engine.infer(None, ["" if i == 7 else texts[i]])
                out[i] = r.outputs[0].embedding
            except InvalidInputError as exc:
                errors.append(exc)

        async with trio.open_nursery() as n:
            for i in range(64):
                n.start_soon(one, i)
        batches = engine.executor.batch_count - base
    assert 2 <= batches <= 4  # 63 valid single-item requests, max_batch 32
    assert len(errors) == 1 and "input 0 is empty" in str(errors[0])
    assert sorted(out) == [i for i in range(64) if i != 7]
    for i in range(5):  # each caller got its own vector back (padding in a batch changes nothing)
        assert float(out[i] @ solo.outputs[i].embedding) > 0.9999


async def test_concurrent_first_requests_share_one_load(onnx_data_dir: Path) -> None:
    async with InferenceEngine.open(InferenceConfig(), onnx_data_dir) as engine:
        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(engine.infer, DEFAULT_MODEL, [f"text {i}"])
        assert engine.load_count == 1
        loaded = engine.loaded_models()
    assert len(loaded) == 1 and loaded[0]["backend"] == "onnx" and loaded[0]["items"] == 8
