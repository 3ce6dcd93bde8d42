"""Hardware detection reports what the libraries say is usable here."""

from __future__ import annotations

import json

import onnxruntime
import psutil
import torch

from inference.backends.onnx_backend import select_providers
from inference.errors import BackendUnavailableError
from inference.hardware import detect_hardware


def test_hardware_matches_the_runtimes() -> None:
    hw = detect_hardware()
    assert list(hw.onnx_providers) == onnxruntime.get_available_providers()
    assert hw.cuda_available == torch.cuda.is_available()
    assert len(hw.cuda_devices) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert hw.cpu_logical == psutil.cpu_count(logical=True)
    assert hw.cpu_physical == (psutil.cpu_count(logical=False) or hw.cpu_logical)
    assert hw.ram_total_bytes == psutil.virtual_memory().total
    d = hw.to_dict()
    assert json.loads(json.dumps(d))["onnx_providers"] == list(hw.onnx_providers)


def test_provider_selection() -> None:
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(cpu_only) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers(gpu, "cpu") == ["CPUExecutionProvider"]
    try:
        select_providers(cpu_only, "cuda")
    except BackendUnavailableError as exc:
        assert "cuda" in str(exc)
    else:
        raise AssertionError("cuda on a CPU-only build must be refused")
