"""Settings of the inference layer (the `[inference]` table of configs/default.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
