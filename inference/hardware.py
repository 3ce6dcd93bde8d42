"""What this machine can really run on: probed at run time, nothing hard-coded.

Peers advertise this (p2p heartbeats) and the backends pick execution providers / devices
from it, so it must describe what works, not what is merely installed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import structlog

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    """Usable compute: onnxruntime providers, torch devices, CPU cores and memory."""

    platform: str
    machine: str
    python: str
    cpu_logical: int
    cpu_physical: int
    ram_total_bytes: int
    ram_available_bytes: int
    onnxruntime_version: str | None
    onnx_providers: tuple[str, ...]
    torch_version: str | None
    cuda_available: bool
    cuda_devices: tuple[str, ...] = field(default_factory=tuple)
    mps_available: bool = False
    cpu_usable: int = 0  # cores this process may run on (taskset / cgroup affinity)
    torch_probed: bool = True  # False: torch was not imported, so its devices are unknown

    @property
    def accelerators(self) -> tuple[str, ...]:
        """Devices besides the CPU that a backend can use."""
        out = [f"cuda:{i} ({name})" for i, name in enumerate(self.cuda_devices)]
        if self.mps_available:
            out.append("mps")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["onnx_providers"] = list(self.onnx_providers)
        d["cuda_devices"] = list(self.cuda_devices)
        d["accelerators"] = list(self.accelerators)
        return d


_ORT_PROBE = "import json, onnxruntime as o; print(json.dumps([o.__version__, o.get_available_providers()]))"


def _onnx() -> tuple[str | None, tuple[str, ...]]:
    """onnxruntime's version and usable providers. Unless this process has imported it already,
    ask a short-lived child of the same interpreter: importing onnxruntime costs ~48 MB of RSS,
    which an idle node (no model loaded yet) should not carry just to describe itself."""
    if "onnxruntime" in sys.modules:
        try:
            import onnxruntime as ort

            return ort.__version__, tuple(ort.get_available_providers())
        except Exception as exc:
            log.debug("hardware.onnxruntime_unavailable", error=str(exc))
            return None, ()
    try:
        out = subprocess.run([sys.executable, "-c", _ORT_PROBE], capture_output=True, text=True, timeout=60, check=True)
        version, providers = json.loads(out.stdout.strip().splitlines()[-1])
        return str(version), tuple(str(p) for p in providers)
    except Exception as exc:  # not installed or a broken build: no onnx backend here
        log.debug("hardware.onnxruntime_unavailable", error=str(exc))
        return None, ()


def _torch() -> tuple[str | None, bool, tuple[str, ...], bool]:
    try:
        import torch
    except Exception as exc:
        log.debug("hardware.torch_unavailable", error=str(exc))
        return None, False, (), False
    cuda = False
    names: tuple[str, ...] = ()
    try:
        cuda = bool(torch.cuda.is_available())
        if cuda:
            names = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception as exc:  # a driver problem means no usable CUDA
        log.debug("hardware.cuda_probe_failed", error=str(exc))
        cuda = False
    mps = False
    try:
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    except Exception:
        mps = False
    return torch.__version__, cuda, names, mps


def _cpu_and_ram() -> tuple[int, int, int, int]:
    logical = os.cpu_count() or 1
    physical = logical
    total = available = 0
    try:
        import psutil

        logical = psutil.cpu_count(logical=True) or logical
        physical = psutil.cpu_count(logical=False) or logical
        vm = psutil.virtual_memory()
        total, available = int(vm.total), int(vm.available)
    except Exception as exc:
        log.debug("hardware.psutil_unavailable", error=str(exc))
    return logical, physical, total, available


def detect_hardware(include_torch: bool = True) -> HardwareInfo:
    """Probe now. ``include_torch=False`` skips importing torch (about a second) when only ORT matters."""
    ort_version, providers = _onnx()
    torch_version, cuda, cuda_names, mps = _torch() if include_torch else (None, False, (), False)
    logical, physical, total, available = _cpu_and_ram()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = logical
    return HardwareInfo(
        platform=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
        cpu_logical=logical,
        cpu_physical=physical,
        ram_total_bytes=total,
        ram_available_bytes=available,
        onnxruntime_version=ort_version,
        onnx_providers=providers,
        torch_version=torch_version,
        cuda_available=cuda,
        cuda_devices=cuda_names,
        mps_available=mps,
        cpu_usable=usable,
        torch_probed=include_torch,
    )


@lru_cache(maxsize=2)
def hardware(include_torch: bool = True) -> HardwareInfo:
    """The machine's hardware, probed once per process (devices do not come and go).

    ``include_torch=False`` keeps torch out of the process: importing it costs ~190 MB of RSS,
    which a node that runs onnxruntime only should not pay just to describe itself.
    """
    return detect_hardware(include_torch)
