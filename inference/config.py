"""Settings of the inference layer (the `[inference]` table of configs/default.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Backend = Literal["auto", "onnx", "torch"]


class InferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    backend: Backend = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_batch: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(2.0, ge=0, le=10_000)
    threads: int = Field(0, ge=0, description="intra-op threads; 0 lets the runtime use every core")
    truncate: bool = True
    model_dirs: list[str] = Field(default_factory=list)
    serve: list[str] = Field(default_factory=lambda: ["*"], description=(
        "model ids this node serves; \"*\" every model found; [] none but those pulled from peers"))
    max_model_bytes: int = Field(16 << 30, ge=0, description="largest model pull_model accepts; 0: no limit")
    share_models: bool = Field(True, description="serve our models' blocks to peers that pull them")
    auto_pull: bool = Field(False, description="when idle, pull a model that queued tasks this peer may run need (p2p.content.autopull)")
    onnx_opset: int = Field(17, ge=11, le=23)
    cache_dir: str = Field("", description="ONNX export cache; empty means <data_dir>/onnx")
    # The worker pool (inference.pool): see configs/default.toml for what was measured.
    pool: bool = Field(True, description=(
        "run inference in an autoscaled pool of worker processes; false runs it in threads of this process"))
    workers_min: int = Field(1, ge=1, le=256, description="workers kept once the first inference started one")
    workers_max: int = Field(2, ge=1, le=256, description="most workers the pool scales up to on queue depth")
    worker_idle_s: float = Field(30.0, gt=0, le=86_400, description="a worker idle this long is stopped (down to workers_min)")
    batch_timeout_s: float = Field(300.0, gt=0, le=86_400, description=(
        "a worker that has not answered a batch in this long (plus the load and export limits on its first batch "
        "of a model) is hung: killed, and the batch rerun on another worker"))

    @field_validator("workers_max")
    @classmethod
    def _max_at_least_min(cls, v: int, info: ValidationInfo) -> int:
        lo = info.data.get("workers_min")
        if lo is not None and v < lo:
            raise ValueError(f"inference.workers_max ({v}) is below inference.workers_min ({lo}); "
                             "set workers_min <= workers_max")
        return v

    def max_workers(self, cores: int) -> int:
        """The most workers the pool runs on ``cores`` usable cores: ``workers_max``, but with
        ``threads`` unset never more than the cores (at least ``workers_min``). Why: a node
        pinned to one core with two single-threaded workers ran 0.67 of raw onnxruntime on that
        core, with one 0.78 (bench_p2p's pinned peers)."""
        if self.threads > 0:
            return self.workers_max
        return max(self.workers_min, min(self.workers_max, cores))

    def worker_threads(self, cores: int) -> int:
        """Intra-op threads each worker's runtime uses: ``threads`` when set, else the usable
        cores shared out among the workers the pool may run (so a full pool does not
        oversubscribe)."""
        if self.threads > 0:
            return self.threads
        return max(1, cores // self.max_workers(cores))

