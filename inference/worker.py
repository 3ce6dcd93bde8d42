"""One inference worker process of the pool (inference.pool): ``python -P -m inference.worker``.

Why a process: a batch holds the GIL while it tokenizes and shapes outputs, and onnxruntime's
threads compete with the node's event loop; in its own process it shares neither the GIL nor
the interpreter's memory with the node, and a crash (a segfault, the OOM killer) takes only
the worker, whose batch the pool reruns.

A plain subprocess, not multiprocessing: spawn re-imports the parent's ``__main__``, which
need not be guarded (the same reason as inference.export's child). Frames on stdin/stdout are
a 4-byte big-endian length and a pickle; the worker's real stdout is kept for frames only and
fd 1 points at stderr, so nothing a library prints can corrupt the stream.

Each request names a lane (model path, task, backend) with what loading it takes; the worker
loads a lane's model once, on its first batch, and keeps it.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")
LOG_LEVEL_ENV = "IPFS_ACCELERATE_WORKER_LOG_LEVEL"  # the node's logging level, numeric
MAX_FRAME = 1 << 30
OOM_EXIT = 75  # the worker caught MemoryError: it exits, the pool treats it as a crash


def write_frame(fh: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)) + data)
    fh.flush()


def _read_exact(fh: BinaryIO, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = fh.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fh: BinaryIO) -> Any:
    """The next frame, or raises EOFError when the other side is gone."""
    head = _read_exact(fh, _HEADER.size)
    if head is None:
        raise EOFError("pipe closed")
    (n,) = _HEADER.unpack(head)
    if n > MAX_FRAME:
        raise EOFError(f"frame of {n} bytes")
    body = _read_exact(fh, n)
    if body is None:
        raise EOFError("pipe closed mid-frame")
    return pickle.loads(body)


def error_tuple(exc: BaseException) -> tuple[str, str, str]:
    """An error as (marker, class name, one line): exceptions with their own constructors do not
    always survive pickling, so they cross the pipe as text and are rebuilt by the pool."""
    from inference.errors import one_line

    return ("__error__", type(exc).__name__, one_line(exc))


class _Worker:
    def __init__(self) -> None:
        self.runners: dict[tuple[str, str, str], Any] = {}
        self.last_trim = time.monotonic()

    def run(self, msg: dict[str, Any]) -> dict[str, Any]:
        from inference.errors import InferenceError, one_line
        from inference.runner import load_runner

        key = msg["key"]
        runner = self.runners.get(key)
        loaded_now = False
        if runner is None:
            info = msg["info"]
            try:
                runner = load_runner(info, msg["task"], msg["backend"], msg["config"], msg["data_dir"])
            except Exception as exc:  # noqa: BLE001 - reported to the pool as one line naming the model
                kind = type(exc).__name__ if isinstance(exc, InferenceError) else "ModelLoadError"
                return {"load_error": (kind, f"worker pid {os.getpid()} could not load {info.name} ({msg['task']}): {one_line(exc)}")}
            self.runners[key] = runner
            loaded_now = True
        items: list[tuple[str, int]] = msg["items"]
        raw = runner.run_batch([t for t, _ in items])
        out: list[Any] = []
        for (_, top_k), r in zip(items, raw):
            if isinstance(r, BaseException):
                out.append(error_tuple(r))
                continue
            try:
                out.append(runner.postprocess(r, top_k))
            except Exception as exc:  # noqa: BLE001 - this item's error, not the batch's
                out.append(error_tuple(exc))
        return {"results": out, "backend": runner.backend_name, "device": runner.device,
                "loaded_now": loaded_now}

    def maybe_trim(self) -> None:
        from inference.memory import trim

        if time.monotonic() - self.last_trim >= 5.0:
            trim()
            self.last_trim = time.monotonic()


def _configure_logging() -> None:
    """structlog to stderr at the node's level (the pool passes it), each line tagged with the pid."""
    import logging

    import structlog

    raw = os.environ.get(LOG_LEVEL_ENV, "")
    level = int(raw) if raw.isdigit() else logging.WARNING
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            lambda _l, _m, ev: {**ev, "worker_pid": os.getpid()},
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )
    logging.basicConfig(stream=sys.stderr, level=max(level, logging.WARNING))


def main() -> int:
    """Serve requests until stdin closes; the only bytes on the frame pipe are frames."""
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed (Python or C) goes to stderr
    sys.stdout = sys.stderr
    frames_in = sys.stdin.buffer

    _configure_logging()
    from inference.export import _exit_with_parent
    from inference.memory import configure

    _exit_with_parent()  # the node killed with -9 cannot stop us: we stop ourselves
    configure()
    worker = _Worker()
    write_frame(frames_out, {"ready": os.getpid()})
    while True:
        try:
            msg = read_frame(frames_in)
        except EOFError:
            return 0
        try:
            reply = worker.run(msg)
        except MemoryError:
            write_frame(frames_out, {"crash": "out of memory"})
            return OOM_EXIT
        except Exception as exc:  # noqa: BLE001 - the whole call failed: the pool isolates items
            reply = {"batch_error": error_tuple(exc)}
        write_frame(frames_out, reply)
        worker.maybe_trim()


if __name__ == "__main__":
    raise SystemExit(main())
