"""ONNX export, once per model, cached under ``<cache root>/<key>/`` (see ``cache_root``).

The key hashes the model's files (content, not path) together with what shapes the graph (task,
opset, pooling, mask id, format version), so a changed model or setting gets a new entry and an
unchanged one is reused across runs. An entry is written in a temporary directory and renamed
into place in one step, with a manifest of every file's size and SHA-256 written last; on load
the manifest is checked and a partial or corrupt entry is rebuilt instead of crashing later in
onnxruntime. Full re-hashing is skipped while the file's (size, mtime, inode) still match the
last successful check, since any rewrite changes them.

The export itself runs in a child process (``_export_in_child``): tracing a model with torch
holds the GIL for seconds at a time, and a node exporting in a thread of its own process
stopped answering its peers (a 15 s export starved the event loop: heartbeats and block
transfers stalled, peers judged the node silent and ran a third of a workflow twice). The
child also keeps torch out of a node that only ever runs ONNX.
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import structlog

from inference.errors import LoadCancelledError, ModelLoadError
from inference.models import ModelInfo

log = structlog.get_logger()

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"
_STAMP = ".verified"
_FINGERPRINTS = "fingerprints.json"



@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on a file in the cache: one export per key at a time, across the
    threads of this process and every process sharing the cache (``inference.cache_dir``)."""
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True, slots=True)
class OnnxArtifact:
    """A verified cache entry: the model file and the graph's input/output names."""

    directory: Path
    model_path: Path
    input_names: tuple[str, ...]
    output_name: str
    exported_now: bool


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _model_files(path: Path) -> list[Path]:
    out = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(p)
    return out


def model_fingerprint(info: ModelInfo, cache_root: Path) -> str:
    """SHA-256 over the model directory's files; memoised by their (size, mtime) in the cache root."""
    root = Path(info.path)
    files = _model_files(root)
    stat_sig = []
    for p in files:
        st = p.stat()
        stat_sig.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    memo_path = cache_root / _FINGERPRINTS
    memo: dict[str, Any] = {}
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        hit = memo.get(str(root.resolve()))
        if isinstance(hit, dict) and hit.get("stat") == stat_sig and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
    except (OSError, ValueError, AttributeError):
        memo = {}
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(_sha256(p).encode())
    digest = h.hexdigest()
    memo = memo if isinstance(memo, dict) else {}
    memo[str(root.resolve())] = {"stat": stat_sig, "sha256": digest}
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        _atomic_write(memo_path, json.dumps(memo))
    except OSError as exc:  # read-only data dir: only the memo is lost
        log.debug("onnx.fingerprint_memo_unwritable", error=str(exc))
    return digest


def cache_key(fingerprint: str, task: str, opset: int, pooling: str, mask_id: int | None) -> str:
    spec = {"format": FORMAT_VERSION, "model": fingerprint, "task": task, "opset": opset, "pooling": pooling, "mask_id": mask_id}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


def _stat_sig(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def verify_entry(entry: Path, full: bool = False) -> tuple[dict[str, Any] | None, str]:
    """The entry's manifest when every listed file is intact, else (None, why)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no manifest" if entry.exists() else "absent"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or not isinstance(manifest.get("files"), dict):
        return None, "manifest of another format"
    stamps: dict[str, str] = {}
    try:
        stamps = json.loads((entry / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamps = {}
    fresh: dict[str, str] = {}
    for name, meta in manifest["files"].items():
        p = entry / name
        try:
            sig = _stat_sig(p)
        except OSError:
            return None, f"{name} missing"
        if p.stat().st_size != meta.get("size"):
            return None, f"{name} has {p.stat().st_size} bytes, manifest says {meta.get('size')}"
        if not full and isinstance(stamps, dict) and stamps.get(name) == sig:
            fresh[name] = sig
            continue
        if _sha256(p) != meta.get("sha256"):
            return None, f"{name} checksum mismatch"
        fresh[name] = sig
    if fresh != stamps:
        try:
            _atomic_write(entry / _STAMP, json.dumps(fresh))
        except OSError:
            pass
    return manifest, "ok"


def _artifact(entry: Path, manifest: dict[str, Any], exported_now: bool) -> OnnxArtifact:
    return OnnxArtifact(entry, entry / MODEL_FILE, tuple(manifest["input_names"]), manifest["output_names"][0], exported_now)


def _remove(path: Path) -> None:
    """Move aside first (one atomic step), then delete, so no reader sees a half-deleted entry."""
    if not path.exists():
        return
    aside = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def _export(info: ModelInfo, task: str, opset: int, mask_id: int | None, target: Path) -> dict[str, Any]:
    """Trace the task head to ``target/model.onnx``; returns the manifest (without file hashes)."""
    import torch

    from inference.heads import build_head

    head = build_head(info, task, mask_id=mask_id, device="cpu")
    names = head.input_names
    vocab = int(getattr(head.model.config, "vocab_size", 1000) or 1000)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(low=min(5, vocab - 1), high=vocab, size=(2, 8), generator=gen, dtype=torch.int64)
    if mask_id is not None:
        ids[:, 3] = mask_id
    mask = torch.ones((2, 8), dtype=torch.int64)
    mask[1, 6:] = 0
    args: tuple[torch.Tensor, ...] = (ids, mask) + ((torch.zeros_like(ids),) if "token_type_ids" in names else ())
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["output"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            args,
            str(target / MODEL_FILE),
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return {
        "format": FORMAT_VERSION,
        "model": info.name,
        "task": task,
        "opset": opset,
        "pooling": info.pooling,
        "mask_id": mask_id,
        "input_names": names,
        "output_names": ["output"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": str(torch.__version__),
    }


# Export children still running, by owner (an engine): ``kill_exports`` ends an engine's when
# it closes (a load is never abandoned, so without it shutdown would wait for a whole export).
# The owner travels in a context variable: trio.to_thread runs the load in a copy of the
# calling task's context.
EXPORT_OWNER: contextvars.ContextVar[object] = contextvars.ContextVar("export_owner", default=None)
_CHILDREN: dict[Any, object] = {}
EXPORT_TIMEOUT_S = 1800.0  # a hung export fails the load instead of holding its lock for ever


def kill_exports(owner: object) -> None:
    """Kill the export children started on behalf of ``owner``: their loads fail at once."""
    for proc, who in list(_CHILDREN.items()):
        if who is owner:
            _CHILDREN[proc] = _KILLED
            try:
                proc.kill()
            except OSError:
                pass


_KILLED = object()  # the owner of a child kill_exports ended


def _export_in_child(info: ModelInfo, task: str, opset: int, mask_id: int | None, target: Path) -> dict[str, Any]:
    """``_export`` in a fresh interpreter (``python -P -m inference.export``): arguments in on
    stdin (pickle), the manifest back on stdout (the last JSON line). A plain subprocess, not
    multiprocessing: spawn re-imports the parent's ``__main__``, which need not be guarded.
    ``-P`` with an explicit PYTHONPATH: the child runs this very package, never an
    ``inference/`` that happens to sit in the working directory."""
    import pickle
    import subprocess
    import sys

    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])]),
           PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen([sys.executable, "-P", "-m", "inference.export"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=None, env=env)  # its logs go to our stderr
    _CHILDREN[proc] = EXPORT_OWNER.get()
    try:
        out, _ = proc.communicate(pickle.dumps((info, task, opset, mask_id, str(target))), timeout=EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ModelLoadError(f"ONNX export of {info.name} ({task}) took over {EXPORT_TIMEOUT_S:g} s; killed") from None
    finally:
        killed = _CHILDREN.pop(proc, None) is _KILLED
    if killed:
        raise LoadCancelledError(f"loading {info.name} ({task}) stopped: the engine closed during its ONNX export")
    reply: dict[str, Any] = {}
    for line in reversed(out.decode("utf-8", "replace").splitlines()):  # a library may print after it
        try:
            got = json.loads(line)
        except ValueError:
            continue
        if isinstance(got, dict) and ("manifest" in got or "error" in got):
            reply = got
            break
    if proc.returncode == 0 and "manifest" in reply:
        return dict(reply["manifest"])
    why = reply.get("error") or f"the export process exited with {proc.returncode} (killed, or out of memory?)"
    raise ModelLoadError(f"ONNX export of {info.name} ({task}) failed: {why}")


EXPORT_NICE = 15
PARENT_ENV = "IPFS_ACCELERATE_EXPORT_PARENT"
PARENT_POLL_S = 0.5


def _exit_with_parent() -> None:
    """End this export when the process that asked for it is gone. A parent killed with -9
    cannot kill its child on the way out, and an orphaned export would go on using a core and
    gigabytes for minutes, then write into a cache nobody is waiting on. The parent's pid comes
    in the environment (so a parent that died before this started is noticed too); polling
    ``getppid`` works everywhere, unlike PR_SET_PDEATHSIG, which fires when the *thread* that
    spawned us ends."""
    import threading

    want = os.environ.get(PARENT_ENV)
    if not want or not want.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(want):
            time.sleep(PARENT_POLL_S)
        os._exit(70)  # the parent is gone: nobody reads our reply

    threading.Thread(target=watch, name="export-parent-watch", daemon=True).start()


def _child_main() -> int:
    """The child side of ``_export_in_child``: the only line it writes to stdout is its reply."""
    import pickle
    import sys

    out = sys.stdout
    sys.stdout = sys.stderr  # anything torch prints goes to stderr
    _exit_with_parent()
    try:
        # A one-off batch job beside a latency-bound node: at the lowest useful priority, so a
        # 20 s export on a small machine never starves the node's event loop (under a busy
        # core it did: heartbeats lapsed, block transfers stalled, peers were judged silent)
        os.nice(EXPORT_NICE)
    except OSError:
        pass
    try:
        info, task, opset, mask_id, target = pickle.loads(sys.stdin.buffer.read())
        manifest = _export(info, task, opset, mask_id, Path(target))
        reply: dict[str, Any] = {"manifest": manifest}
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reply, code = {"error": first}, 1
    out.write(json.dumps(reply) + "\n")
    out.flush()
    return code


def cache_root(data_dir: Path, cache_dir: str = "") -> Path:
    """Where exports live: ``cache_dir`` when set (several nodes may share it), else ``<data_dir>/onnx``."""
    return Path(cache_dir).expanduser() if cache_dir else Path(data_dir).expanduser() / "onnx"


def ensure_onnx(info: ModelInfo, task: str, root: Path, opset: int, mask_id: int | None = None, rebuild: bool = False) -> OnnxArtifact:
    """The cached ONNX graph for (model, task), exporting it first if absent, partial or corrupt."""
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create the ONNX cache in {root}: {exc.strerror or exc}") from None
    key = cache_key(model_fingerprint(info, root), task, opset, info.pooling, mask_id)
    entry = root / key
    with _exclusive(root / f".lock-{key}"):
        if not rebuild:
            manifest, why = verify_entry(entry)
            if manifest is not None:
                log.debug("onnx.cache_hit", model=info.name, task=task, path=str(entry))
                return _artifact(entry, manifest, False)
            if why != "absent":
                log.warning("onnx.cache_corrupt_rebuilding", model=info.name, path=str(entry), reason=why)
        else:
            log.warning("onnx.cache_rebuilding", model=info.name, path=str(entry))
        _remove(entry)

        tmp = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        try:
            manifest = _export_in_child(info, task, opset, mask_id, tmp)
            files = {}
            for p in _model_files(tmp):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
                files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
            manifest["files"] = files
            manifest["export_id"] = uuid.uuid4().hex  # tells one export from the next
            _atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1))
            try:
                os.rename(tmp, entry)  # atomic: readers see all of it or nothing
            except OSError:  # another process finished the same export first
                shutil.rmtree(tmp, ignore_errors=True)
        except ModelLoadError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"ONNX export of {info.name} ({task}) failed: {first}") from exc
        manifest, why = verify_entry(entry, full=True)
        if manifest is None:
            raise ModelLoadError(f"ONNX cache entry {entry} is invalid right after export: {why}")
        log.info("onnx.exported", model=info.name, task=task, path=str(entry), seconds=round(time.perf_counter() - started, 2))
        return _artifact(entry, manifest, True)


if __name__ == "__main__":
    raise SystemExit(_child_main())
