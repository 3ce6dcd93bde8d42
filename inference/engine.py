"""InferenceEngine: the one entry point the layers above use.

    async with InferenceEngine.open(config, data_dir) as engine:
        result = await engine.infer("sentence-transformers/all-MiniLM-L6-v2", ["hello"])

It resolves the model, loads it lazily once per (model, task, backend) — concurrent first
requests share one load, which runs in the engine's nursery so a cancelled first caller does
not abort it for the others — and sends inputs through the batching executor.

Two ways to run (``inference.pool``): in threads of this process (the model loaded here), or in
an autoscaled pool of worker processes (inference.pool), each loading the model once on its
first batch. ``workers_info`` and ``capacity`` describe either.
"""

from __future__ import annotations

import os
import sys

from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import structlog
import trio

from inference.config import InferenceConfig
from inference.errors import InferenceError, InvalidInputError, ModelNotFoundError, UnsupportedTaskError, unwrap_group
from inference.export import EXPORT_OWNER, kill_exports
from inference.executor import BatchCallError, BatchingExecutor
from inference.hardware import HardwareInfo, hardware
from inference.memory import Trimmer
from inference.memory import configure as configure_malloc
from inference.models import ModelInfo, available_models, resolve_model
from inference.runner import ModelRunner, load_runner
from inference.tasks import DEFAULT_TOP_K, WARM_TEXT, TaskOutput, normalize_task
from inference.tokenizer import check_text

log = structlog.get_logger()

_BACKENDS = ("auto", "onnx", "torch")


@dataclass(slots=True)
class InferenceResult:
    """One request's outputs, one per input and in input order, plus what produced them."""

    model: str
    task: str
    backend: str
    device: str
    outputs: list[TaskOutput]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "backend": self.backend,
            "device": self.device,
            "outputs": [o.to_json() for o in self.outputs],
        }


@dataclass(slots=True)
class _PendingLoad:
    done: trio.Event = field(default_factory=trio.Event)
    runner: ModelRunner | None = None
    error: BaseException | None = None


class InferenceEngine:
    def __init__(self, config: InferenceConfig, data_dir: Path, executor: BatchingExecutor, nursery: trio.Nursery,
                 pool: Any = None) -> None:
        self.config = config
        self.pool = pool  # inference.pool.WorkerPool when config.pool, else None (in-process)
        self.data_dir = Path(data_dir).expanduser()
        self.executor = executor
        self._nursery = nursery
        self._runners: dict[tuple[str, str, str], ModelRunner] = {}
        self._loading: dict[tuple[str, str, str], _PendingLoad] = {}
        self._resolved: dict[str, ModelInfo] = {}
        # models pulled from peers (p2p.content) land here; searched after the configured dirs
        self.pulled_dir = self.data_dir / "models"
        self.model_dirs = [*config.model_dirs, str(self.pulled_dir)]
        self._load_count = 0  # loads started; tests check that concurrent first requests share one

    @classmethod
    @asynccontextmanager
    async def open(cls, config: InferenceConfig | None = None, data_dir: Path | str = "~/.local/share/ipfs-accelerate",
                   *, preload: bool = False) -> AsyncIterator["InferenceEngine"]:
        """The engine, its executor lanes and its model loads live exactly as long as this block.

        It also sets the process's malloc up for a long run and trims it while it lives
        (inference.memory: without it RSS climbs with work already done). ``preload`` loads the
        default model before the block starts (see ``warm``): a long-running node pays its
        warm-up once, at start, instead of growing by a model's size on its first task."""
        cfg = config or InferenceConfig()
        configure_malloc()
        try:
            async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                nursery.start_soon(Trimmer().run, name="malloc-trim")
                pool = None
                if cfg.pool:
                    from inference.pool import WorkerPool

                    pool = await stack.enter_async_context(WorkerPool.open(cfg, Path(data_dir).expanduser()))
                async with BatchingExecutor.open(cfg.max_batch, cfg.max_wait_ms) as executor:
                    engine = cls(cfg, Path(data_dir), executor, nursery, pool)
                    if pool is not None:
                        pool.queue_depth = executor.queued
                    if preload:
                        await engine.warm()
                    try:
                        yield engine
                    finally:
                        kill_exports(engine)  # a load waiting on an export child fails now, not in minutes
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nurseries wrap whatever the caller's block raised; give the caller its own error back.
            leaf = unwrap_group(group)
            if leaf is group:
                raise
            raise leaf from None

    # --- what is here -------------------------------------------------------------------

    def resolve(self, model: str | None = None) -> ModelInfo:
        """The model a reference names (default: config.default_model); ModelNotFoundError otherwise."""
        ref = model or self.config.default_model
        info = self._resolved.get(ref)
        if info is None:
            info = resolve_model(ref, self.model_dirs)
            if not self.serves(info):
                raise ModelNotFoundError(ref, [m.name for m in self.available_models()],
                                         "not in inference.serve; pull_model fetches it from peers")
            self._resolved[ref] = info
        return info

    def serves(self, info: ModelInfo) -> bool:
        """Whether ``inference.serve`` lets this node serve ``info``: "*" all, else the ids listed;
        a model pulled from peers (under ``pulled_dir``) always."""
        serve = self.config.serve
        if "*" in serve or info.name in serve:
            return True
        return info.path.resolve().is_relative_to(self.pulled_dir.resolve())

    def available_models(self) -> list[ModelInfo]:
        return [m for m in available_models(self.model_dirs) if self.serves(m)]

    def models_changed(self) -> None:
        """A model was pulled (or removed): resolve names afresh (a pulled copy in ``pulled_dir``
        now answers to its name; loaded runners are keyed by path, so none is reused wrongly)."""
        self._resolved.clear()

    def hardware(self, include_torch: bool | None = None) -> HardwareInfo:
        """What this machine can run on. By default torch is probed only when this engine may
        use it (backend torch) or it is loaded already; the `hardware` command probes it always."""
        if include_torch is None:
            include_torch = self.config.backend == "torch" or "torch" in sys.modules
        return hardware(include_torch)

    @property
    def load_count(self) -> int:
        """Model loads started: here, or in the pool's workers (one per worker and model)."""
        return self.pool.load_count if self.pool is not None else self._load_count

    def workers_info(self) -> dict[str, Any]:
        """Live workers, target, queue depth and per-worker model/pid/batches, for get_node_info,
        list_peers and /metrics. In-process mode reports its one "worker": this process."""
        if self.pool is not None:
            return self.pool.info()
        busy = sum(1 for lane in self.executor._lanes.values() if lane._limiter.borrowed_tokens)
        return {
            "mode": "in-process", "live": 1 if self._runners else 0, "busy": busy, "starting": len(self._loading),
            "target": 1, "min": 1, "max": 1, "idle_s": None, "threads_per_worker": self.config.threads or None,
            "queue_depth": self.executor.queued(), "spawned": 0, "crashes": 0, "hung": 0,
            "workers": [] if not self._runners else [{
                "pid": os.getpid(), "busy": busy > 0, "idle_s": None,
                "models": sorted({r.info.name for r in self._runners.values()}),
                "batches": sum(r.batches for r in self._runners.values()),
                "items": sum(r.items for r in self._runners.values()),
            }],
        }

    def capacity(self, base: float) -> float:
        """The capacity to advertise, given ``base`` (p2p.node.derive_capacity: the usable cores).

        In-process: ``base``. In the pool: the share of ``base`` the live workers use
        (``threads_per_worker`` cores each), counting at least ``workers_min`` — what the pool
        keeps and can run at once without starting anything — and never more than ``base``."""
        if self.pool is None:
            return float(base)
        workers = max(len(self.pool.workers), self.config.workers_min)
        return float(min(base, max(1, workers * self.pool.threads)))

    def loaded_models(self) -> list[dict[str, Any]]:
        """Models loaded in this engine, with their backend, device and usage counters."""
        if self.pool is not None:
            return [
                {
                    "model": lane.model, "task": lane.task, "backend": lane.backend_used or lane.backend,
                    "requested_backend": lane.backend, "device": lane.device, "path": lane.path,
                    "batches": lane.batches, "items": lane.items,
                    "workers": sorted(w.pid for w in self.pool.workers if key in w.lanes),
                }
                for key, lane in self.pool.lanes.items() if lane.batches
            ]
        return [
            {
                "model": r.info.name,
                "task": r.task,
                "backend": r.backend_name,
                "requested_backend": key[2],
                "device": r.device,
                "path": str(r.info.path),
                "batches": r.batches,
                "items": r.items,
            }
            for key, r in self._runners.items()
        ]

    # --- inference ----------------------------------------------------------------------

    def _task_for(self, info: ModelInfo, task: str | None) -> str:
        if task is None:
            if info.default_task is None:
                raise UnsupportedTaskError(
                    f"model {info.name} ({', '.join(info.architectures) or info.model_type or 'unknown'}) supports none of the tasks served here"
                )
            return info.default_task
        name = normalize_task(task)
        if name not in info.tasks:
            supports = ", ".join(info.tasks) or "nothing served here"
            raise UnsupportedTaskError(f"model {info.name} cannot do {name}; it supports: {supports}")
        return name

    def _backend_for(self, backend: str | None) -> str:
        name = (backend or self.config.backend).strip().lower()
        if name not in _BACKENDS:
            raise UnsupportedTaskError(f"unknown backend {backend!r}; use one of: {', '.join(_BACKENDS)}")
        return name

    async def _runner(self, info: ModelInfo, task: str, backend: str) -> ModelRunner:
        key = (str(info.path), task, backend)
        runner = self._runners.get(key)
        if runner is not None:
            return runner
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = _PendingLoad()
            self._load_count += 1
            self._nursery.start_soon(self._load, key, info, task, backend, pending)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.runner is not None
        return pending.runner

    async def _load(self, key: tuple[str, str, str], info: ModelInfo, task: str, backend: str, pending: _PendingLoad) -> None:
        try:
            # Never abandoned: a load left running in a thread when the process exits aborts the
            # interpreter inside onnxruntime/torch (SIGABRT; seen when stdin closed during the
            # start-up warm-up). Shutdown waits for the load instead: an ONNX session or torch
            # weights take seconds; an export child (15-20 s) is killed at shutdown (kill_exports).
            EXPORT_OWNER.set(self)  # this task's context, copied into the load's thread
            runner = await trio.to_thread.run_sync(load_runner, info, task, backend, self.config, self.data_dir)
            self._runners[key] = runner
            pending.runner = runner
        except InferenceError as exc:
            pending.error = exc
        except Exception as exc:  # an unexpected library failure: still one clear line for the caller
            log.debug("model.load_failed", model=info.name, exc_info=True)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            pending.error = InferenceError(f"loading {info.name} for {task} failed: {first}")
        finally:
            del self._loading[key]  # a failed load is retried by the next request
            pending.done.set()

    async def warm(self, model: str | None = None) -> bool:
        """Load ``model`` (default: config.default_model) for its own task and run one input
        through it, so its weights and the runtime's buffers are in place; False (logged) when it
        cannot be loaded here — the first request then tries again and reports why."""
        try:
            self.resolve(model)
        except InferenceError:
            return False  # not served here (inference.serve): nothing to warm
        try:
            # a full batch of sentence-length inputs: the runtime sizes its buffers for it now
            await self.infer(model, [WARM_TEXT] * self.config.max_batch)
        except InferenceError as exc:
            log.warning("model.preload_failed", model=model or self.config.default_model, error=str(exc))
            return False
        return True

    async def infer(
        self,
        model: str | None,
        inputs: list[str],
        task: str | None = None,
        backend: str | None = None,
        *,
        top_k: int = DEFAULT_TOP_K,
    ) -> InferenceResult:
        """Run ``inputs`` through ``model`` for ``task`` (default: the model's own task).

        Raises an InferenceError subclass for the first bad input (the message names its
        index); other requests batched with this one are unaffected. Texts over the model's
        token limit are truncated and flagged ``truncated`` when config.truncate, else refused.
        """
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs:
            raise InvalidInputError("no input text given")
        for i, item in enumerate(inputs):
            err = check_text(item, i)
            if err is not None:
                raise err
        info = self.resolve(model)
        task_name = self._task_for(info, task)
        backend_name = self._backend_for(backend)
        if self.pool is not None:
            return await self._infer_in_pool(info, task_name, backend_name, inputs, top_k)
        runner = await self._runner(info, task_name, backend_name)
        results = await self.executor.submit((str(info.path), task_name, backend_name), runner.run_batch, list(inputs))
        for i, r in enumerate(results):
            if isinstance(r, BatchCallError):
                raise BatchCallError(f"input {i}: {r}")
            if isinstance(r, BaseException):
                raise r
        outputs = [runner.postprocess(r, top_k) for r in results]
        return InferenceResult(info.name, task_name, runner.backend_name, runner.device, outputs)

    async def _infer_in_pool(self, info: ModelInfo, task: str, backend: str, inputs: list[str], top_k: int) -> InferenceResult:
        """The pool's path: items are (text, top_k); a worker encodes, runs and shapes them."""
        key = (str(info.path), task, backend)
        lane = self.pool.lane(key, info, task, backend)
        results = await self.executor.submit(key, lane, [(t, top_k) for t in inputs])
        for i, r in enumerate(results):
            if isinstance(r, BatchCallError):
                raise BatchCallError(f"input {i}: {r}")
            if isinstance(r, BaseException):
                raise r
        meta = self.pool.lanes[key]
        return InferenceResult(info.name, task, meta.backend_used or backend, meta.device, list(results))
