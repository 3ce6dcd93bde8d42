"""An autoscaled pool of inference worker processes (inference.worker), fed by the batching executor.

Why: in-process inference shares the node's GIL and cores with its event loop (tokenizing and
shaping outputs hold the GIL), and a crash or an out-of-memory kill in a model takes the whole
node. In the pool each worker is a process that loads a model once and runs whole batches; the
node's trio loop only waits on pipes, in threads (``trio.to_thread``), never on inference.

Scaling (``inference.workers_min`` .. ``workers_max``, down after ``worker_idle_s``) is decided by
``inference.autoscale.autoscale_target`` — a pure function of the queue depth, the workers and
their idle times — which the loop here evaluates whenever something changes and when the next
idle worker's time runs out. No worker starts before the first inference asks for one (lazy
start: a node that never infers keeps its idle RSS); from then on ``workers_min`` stay. A worker
started for a burst first loads every model the pool has served and runs one full batch of each
(``_preload``), still counted as starting: its first real batch then runs at full speed instead
of holding a batch's items while it loads.

A worker that dies mid-batch (kill -9, a segfault, the OOM killer, a MemoryError it caught) is
removed, its batch is put back at the head of its lane and rerun on another worker, spawned as
needed; so is one that hangs (stopped, deadlocked, spinning): a batch not answered within
``inference.batch_timeout_s`` (plus ``READY_TIMEOUT_S`` and the export limit when the worker
must load, perhaps export, the lane's model first) kills its worker, counted in ``crashes`` and ``hung``; a batch that killed its worker twice fails with ``WorkerCrashedError`` (retryable: the
scheduler runs the task again). A model that fails to load in a worker fails that batch's
items with a ``ModelLoadError`` naming the model; the worker stays.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections import deque
import signal
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import structlog
import trio

from inference import errors as _errors
from inference.autoscale import ScaleLimits, WorkerView, autoscale_target
from inference.config import InferenceConfig
from inference.errors import InferenceError, ModelLoadError, one_line
from inference.executor import RetryBatchError
from inference.export import EXPORT_TIMEOUT_S
from inference.models import ModelInfo
from inference.tasks import DEFAULT_TOP_K, WARM_TEXT

log = structlog.get_logger()

READY_TIMEOUT_S = 120.0  # a worker that has not said ready by then is killed
SPAWN_BACKOFF_S = 1.0
WORKER_PYTHON: str | None = None  # the interpreter workers run; None: this one (sys.executable)


class WorkerCrashedError(RetryBatchError):
    """The worker running a batch died (killed, crashed, out of memory). Retryable: the executor
    reruns the batch on another worker, and a task failed with it is run again by the scheduler."""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _rebuild(result: Any) -> Any:
    """A worker's per-item result with its error tuple turned back into the exception it was."""
    if isinstance(result, tuple) and len(result) == 3 and result[0] == "__error__":
        cls = getattr(_errors, result[1], None)
        if isinstance(cls, type) and issubclass(cls, InferenceError) and cls is not _errors.ModelNotFoundError:
            return cls(result[2])
        return InferenceError(result[2])
    return result


def _death(proc: subprocess.Popen) -> str:
    """Why a worker process ended, in words."""
    from inference.worker import OOM_EXIT

    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "stopped answering (killed)"
    if code == OOM_EXIT:
        return "ran out of memory (MemoryError)"
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        if sig == signal.SIGKILL:
            return f"was killed by {name} (out of memory, or killed)"
        return f"was killed by {name}"
    return f"exited with status {code}"


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen
    pid: int
    busy: bool = False
    idle_since: float = 0.0
    batches: int = 0
    items: int = 0
    started_at: float = 0.0
    lanes: set[tuple[str, str, str]] = field(default_factory=set)
    dead: bool = False
    io_lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request and read its reply (blocking: runs in a thread)."""
        from inference.worker import read_frame, write_frame

        with self.io_lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            write_frame(self.proc.stdin, msg)
            return read_frame(self.proc.stdout)

    def kill(self) -> None:
        """Kill the process and reap it in a daemon thread (no zombie left until the pool's end)."""
        self.dead = True
        try:
            self.proc.kill()
        except OSError:
            pass
        threading.Thread(target=self.proc.wait, name=f"reap-{self.proc.pid}", daemon=True).start()


@dataclass(slots=True)
class _LaneInfo:
    model: str
    task: str
    backend: str
    path: str
    device: str = ""
    backend_used: str = ""
    batches: int = 0
    items: int = 0


class PoolLane:
    """The executor's view of the pool for one lane (model, task, backend): a free worker to
    wait for, and a batch to run on it. It carries what a worker needs to load the lane's model."""

    def __init__(self, pool: "WorkerPool", key: tuple[str, str, str], info: ModelInfo, task: str, backend: str) -> None:
        self.pool = pool
        self.key = key
        self.info = info
        self.task = task
        self.backend = backend

    def demand(self) -> None:
        self.pool.kick()

    async def acquire(self) -> _Worker:
        return await self.pool.acquire(self.key)

    async def wait_until(self, predicate: Callable[["WorkerPool"], bool]) -> None:
        """Wait until ``predicate(pool)`` holds, re-checked at every change (for tests, benches)."""
        while not predicate(self):
            await self._changed.wait()

    def release(self, worker: _Worker) -> None:
        self.pool.release(worker)

    async def run(self, worker: _Worker, items: list[Any]) -> Sequence[Any]:
        return await self.pool.run(worker, self, items)


class WorkerPool:
    """Worker processes between ``workers_min`` and ``workers_max``, scaled on queue depth."""

    def __init__(self, config: InferenceConfig, data_dir: Path, nursery: trio.Nursery) -> None:
        self.config = config
        self.data_dir = Path(data_dir).expanduser()
        self._nursery = nursery
        cores = _cores()
        self.threads = config.worker_threads(cores)
        self.worker_config = config.model_copy(update={"threads": self.threads})
        self.limits = ScaleLimits(config.workers_min, config.max_workers(cores), config.worker_idle_s, config.max_batch)
        self.queue_depth: Callable[[], int] = lambda: 0  # set by the engine: the executor's queued items
        self.workers: list[_Worker] = []
        self.starting = 0
        self.demanded = False
        self.target = 0
        self.spawned = 0
        self.crashes = 0
        self.hung = 0  # of the crashes: workers killed for not answering a batch in time
        self.batch_timeout_s = config.batch_timeout_s
        self.spawn_failures = 0  # in a row; reset when a worker starts
        self.load_count = 0
        self.last_error: str | None = None
        self.lanes: dict[tuple[str, str, str], _LaneInfo] = {}
        self._lane_objs: dict[tuple[str, str, str], PoolLane] = {}
        self._starting_procs: set[subprocess.Popen] = set()  # killed at close: their threads return at once
        self.history: deque[tuple[float, int, int, int]] = deque(maxlen=2048)  # (time, live, busy, target)
        self._kick = trio.Event()
        self._changed = trio.Event()
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(cls, config: InferenceConfig, data_dir: Path) -> AsyncIterator["WorkerPool"]:
        """The pool and its workers live exactly as long as this block; leaving it kills them."""
        async with trio.open_nursery() as nursery:
            pool = cls(config, data_dir, nursery)
            nursery.start_soon(pool._scale_loop, name="inference-pool-scaler")
            try:
                yield pool
            finally:
                pool._closed = True
                nursery.cancel_scope.cancel()
                gone = list(pool.workers)
                pool.workers.clear()
                for w in gone:
                    w.kill()
                for proc in list(pool._starting_procs):
                    proc.kill()  # its starter thread reads EOF and returns; _spawn reaps it
                with trio.CancelScope(shield=True):  # reap them: no zombie outlives the pool
                    await trio.to_thread.run_sync(lambda: [w.proc.wait() for w in gone])

    # --- the executor's side ------------------------------------------------------------

    def lane(self, key: tuple[str, str, str], info: ModelInfo, task: str, backend: str) -> PoolLane:
        obj = self._lane_objs.get(key)
        if obj is None:
            obj = self._lane_objs[key] = PoolLane(self, key, info, task, backend)
            self.lanes[key] = _LaneInfo(info.name, task, backend, str(info.path))
        return obj

    def kick(self) -> None:
        """Something changed (demand, a worker freed, ready or dead): re-evaluate the target."""
        self._kick.set()

    def _fire(self) -> None:
        self.history.append((trio.current_time(), len(self.workers), sum(1 for w in self.workers if w.busy), self.target))
        self._changed.set()
        self._changed = trio.Event()
        self.kick()

    async def acquire(self, key: tuple[str, str, str]) -> _Worker:
        """An idle worker, marked busy (one that has this lane's model loaded first)."""
        if not self.demanded:
            self.demanded = True
        self.kick()
        while True:
            if self._closed:
                raise InferenceError("the inference worker pool is closed")
            idle = [w for w in self.workers if not w.busy and not w.dead]
            if idle:
                warm = [w for w in idle if key in w.lanes]
                w = (warm or idle)[0]
                w.busy = True
                self._fire()
                return w
            if not self.workers and self.spawn_failures >= 2:
                raise InferenceError(f"no inference worker could be started: {self.last_error}")
            await self._changed.wait()

    async def wait_until(self, predicate: Callable[["WorkerPool"], bool]) -> None:
        """Wait until ``predicate(pool)`` holds, re-checked at every change (for tests, benches)."""
        while not predicate(self):
            await self._changed.wait()

    def release(self, worker: _Worker) -> None:
        worker.busy = False
        worker.idle_since = trio.current_time()
        self._fire()

    async def run(self, worker: _Worker, lane: PoolLane, items: list[Any]) -> list[Any]:
        """Run one batch on ``worker`` (acquired); per-item results or errors, in order.
        Raises WorkerCrashedError when the worker died under it (the executor reruns the batch)."""
        msg = {"key": lane.key, "info": lane.info, "task": lane.task, "backend": lane.backend,
               "config": self.worker_config, "data_dir": self.data_dir, "items": items}
        # a worker's first batch of a model loads it first, and a load may export it to ONNX
        limit = self.batch_timeout_s + (0.0 if lane.key in worker.lanes else READY_TIMEOUT_S + EXPORT_TIMEOUT_S)
        reply: dict[str, Any] | None = None
        try:
            with trio.move_on_after(limit):
                reply = await trio.to_thread.run_sync(worker.call, msg, abandon_on_cancel=True)
        except trio.Cancelled:
            worker.kill()  # its state is unknown now: never reused
            self._remove(worker)
            raise
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            why = await trio.to_thread.run_sync(_death, worker.proc)
            self._crashed(worker, why)
            raise WorkerCrashedError(
                f"inference worker pid {worker.pid} {why} during a batch of {len(items)} ({lane.info.name})") from exc
        if reply is None:  # the deadline passed: the worker is hung (the abandoned thread ends when it dies)
            worker.kill()
            self.hung += 1
            why = f"gave no answer in {limit:g} s (hung); killed"
            self._crashed(worker, why)
            raise WorkerCrashedError(f"inference worker pid {worker.pid} {why} during a batch of {len(items)} "
                                     f"({lane.info.name})")
        if "crash" in reply:
            worker.kill()
            self._crashed(worker, reply["crash"])
            raise WorkerCrashedError(
                f"inference worker pid {worker.pid} ran out of memory (MemoryError) during a batch of {len(items)} "
                f"({lane.info.name})")
        if "load_error" in reply:
            kind, text = reply["load_error"]
            cls = getattr(_errors, kind, None)
            if not (isinstance(cls, type) and issubclass(cls, InferenceError)) or cls is _errors.ModelNotFoundError:
                cls = ModelLoadError
            self.last_error = text
            return [cls(text) for _ in items]
        if "batch_error" in reply:
            raise InferenceError(reply["batch_error"][2])
        if reply.get("loaded_now"):
            self.load_count += 1
        worker.lanes.add(lane.key)
        worker.batches += 1
        worker.items += len(items)
        info = self.lanes[lane.key]
        info.batches += 1
        info.items += len(items)
        info.device = reply.get("device", "")
        info.backend_used = reply.get("backend", "")
        return [_rebuild(r) for r in reply["results"]]

    # --- scaling --------------------------------------------------------------------------

    def _remove(self, worker: _Worker) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self._fire()

    def _crashed(self, worker: _Worker, why: str) -> None:
        self.crashes += 1
        worker.dead = True
        log.warning("inference.worker_died", pid=worker.pid, why=why)
        self._remove(worker)

    def views(self) -> tuple[WorkerView, ...]:
        return tuple(WorkerView(w.busy, w.idle_since) for w in self.workers)

    async def _scale_loop(self) -> None:
        while True:
            self._kick = trio.Event()
            now = trio.current_time()
            depth = self.queue_depth()
            prev = self.target
            self.target = target = autoscale_target(depth, self.views(), self.starting, now, self.limits,
                                                    demanded=self.demanded)
            live = len(self.workers) + self.starting
            if target != prev:
                self._fire()
            if target > live:
                for _ in range(target - live):
                    self.starting += 1
                    self._nursery.start_soon(self._spawn)
            elif target < live:
                expired = sorted((w for w in self.workers if not w.busy and now - w.idle_since >= self.limits.idle_s),
                                 key=lambda w: w.idle_since)
                for w in expired[: live - target]:
                    log.info("inference.worker_stopped_idle", pid=w.pid, idle_s=round(now - w.idle_since, 1))
                    self.workers.remove(w)
                    self._nursery.start_soon(self._stop, w)
                self._fire()
            # next wake: a kick, or the moment the longest-idle worker's time runs out
            idle = [w.idle_since + self.limits.idle_s for w in self.workers if not w.busy]
            deadline = min(idle) if idle and len(self.workers) > self.limits.min else math.inf
            with trio.move_on_at(max(deadline, now + 0.01)):
                await self._kick.wait()

    async def _spawn(self) -> None:
        worker: _Worker | None = None
        try:
            # not abandoned on cancel: closing the pool kills a starting process, so this returns
            worker = await trio.to_thread.run_sync(self._start_process)
            if not self._closed and not await self._preload(worker):
                worker = None  # died or hung loading: killed, and counted as a failed start
                self.spawn_failures += 1
        except Exception as exc:  # noqa: BLE001 - reported to waiters as one line
            self.last_error = one_line(exc)
            self.spawn_failures += 1
            log.warning("inference.worker_start_failed", error=self.last_error)
            await trio.sleep(min(30.0, SPAWN_BACKOFF_S * 2 ** (self.spawn_failures - 1)))  # no tight respawn loop
        finally:
            self.starting -= 1  # only now: a worker loading its models still counts as starting
            if worker is not None:
                if self._closed:
                    worker.kill()
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(worker.proc.wait)
                else:
                    worker.idle_since = worker.started_at = trio.current_time()
                    self.workers.append(worker)
                    self.spawned += 1
                    self.spawn_failures = 0
                    log.debug("inference.worker_started", pid=worker.pid, threads=self.threads)
            self._fire()

    async def _preload(self, worker: _Worker) -> bool:
        """Load, into a new worker, every model the pool has served, and run one full batch of
        each, before it takes work: a worker spawned in a burst then runs its first batch at full
        speed instead of holding 32 items while it loads (measured: the first burst after a start
        ran at 0.56-0.6 of the next ones). False (the worker killed) when it died or hung; a
        model that fails to load is left to the first batch to report."""
        for lane in list(self._lane_objs.values()):
            msg = {"key": lane.key, "info": lane.info, "task": lane.task, "backend": lane.backend,
                   "config": self.worker_config, "data_dir": self.data_dir,
                   "items": [(WARM_TEXT, DEFAULT_TOP_K)] * self.limits.max_batch}
            reply: dict[str, Any] | None = None
            try:
                with trio.move_on_after(READY_TIMEOUT_S + EXPORT_TIMEOUT_S):
                    reply = await trio.to_thread.run_sync(worker.call, msg, abandon_on_cancel=True)
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                reply = None
            if reply is None or "crash" in reply:
                worker.kill()
                why = await trio.to_thread.run_sync(_death, worker.proc)
                self.last_error = f"inference worker pid {worker.pid} {why} while loading {lane.info.name}"
                log.warning("inference.worker_preload_failed", pid=worker.pid, model=lane.info.name, why=why)
                return False
            if "results" in reply:
                worker.lanes.add(lane.key)
                if reply.get("loaded_now"):
                    self.load_count += 1
        return True

    def _start_process(self) -> _Worker:
        """Start a worker and wait for its ready frame (blocking: runs in a thread)."""
        from inference.export import PARENT_ENV
        from inference.worker import LOG_LEVEL_ENV, read_frame

        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])]),
               PARENT_ENV: str(os.getpid()), "OMP_NUM_THREADS": str(self.threads),
               LOG_LEVEL_ENV: str(logging.getLogger().getEffectiveLevel())}
        proc = subprocess.Popen([WORKER_PYTHON or sys.executable, "-P", "-m", "inference.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=None, env=env)  # its logs go to our stderr
        worker = _Worker(proc, proc.pid)
        self._starting_procs.add(proc)
        if self._closed:
            proc.kill()
        timer = threading.Timer(READY_TIMEOUT_S, worker.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            hello = read_frame(proc.stdout)
        except EOFError:
            raise InferenceError(f"inference worker pid {proc.pid} {_death(proc)} before it was ready") from None
        finally:
            timer.cancel()
            self._starting_procs.discard(proc)
        if not isinstance(hello, dict) or hello.get("ready") != proc.pid:
            worker.kill()
            raise InferenceError(f"inference worker pid {proc.pid} sent {hello!r} instead of ready")
        return worker

    async def _stop(self, worker: _Worker) -> None:
        """Close its stdin (it exits when it reads EOF); killed if it has not in 5 s."""
        def stop() -> None:
            try:
                if worker.proc.stdin is not None:
                    worker.proc.stdin.close()
                worker.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                worker.kill()
        worker.dead = True
        await trio.to_thread.run_sync(stop, abandon_on_cancel=True)

    # --- what is here ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Live workers, target, queue depth and per-worker model/pid/batches (get_node_info, /metrics)."""
        now = trio.current_time()
        return {
            "mode": "pool",
            "live": len(self.workers),
            "busy": sum(1 for w in self.workers if w.busy),
            "starting": self.starting,
            "target": self.target,
            "min": self.limits.min,
            "max": self.limits.max,
            "idle_s": self.limits.idle_s,
            "threads_per_worker": self.threads,
            "queue_depth": self.queue_depth(),
            "spawned": self.spawned,
            "crashes": self.crashes,
            "hung": self.hung,
            "workers": [
                {
                    "pid": w.pid,
                    "busy": w.busy,
                    "idle_s": 0.0 if w.busy else round(now - w.idle_since, 3),
                    "models": sorted({self.lanes[k].model for k in w.lanes if k in self.lanes}),
                    "batches": w.batches,
                    "items": w.items,
                }
                for w in self.workers
            ],
        }
