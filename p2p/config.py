"""Settings of the p2p layer: clock, scheduler and network tables of configs/default.toml."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from inference.config import InferenceConfig


class ClockConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_block_bytes: int = Field(2 << 20, ge=1024)
    max_ops_per_event: int = Field(256, ge=1)


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tasks_per_workflow: int = Field(10_000, ge=1)
    max_input_chars: int = Field(20_000, ge=1)
    max_attempts: int = Field(3, ge=1, le=100)
    lease_s: float = Field(10.0, gt=0)
    inline_result_bytes: int = Field(16_384, ge=0)
    flush_ms: float = Field(2.0, ge=0, description="how long ops gather before one clock event")
    capacity: float = Field(0.0, ge=0, description="this peer's weight in assignment; 0 derives it from hardware")
    max_inflight: int = Field(256, ge=1, description="tasks handed to the inference engine at once")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True

    network: str = Field("default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    listen: list[str] = Field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    bootstrap: list[str] = Field(default_factory=list)
    mdns: bool = True
    quic: bool = False
    psk_file: str = ""
    allow_peers: list[str] = Field(default_factory=list)
    heartbeat_s: float = Field(2.0, gt=0)
    announce_debounce_ms: float = Field(2.0, ge=0)
    reannounce_s: float = Field(5.0, gt=0)
    max_frame_bytes: int = Field(8 << 20, ge=1024)
    max_blocks_per_request: int = Field(256, ge=1)
    reconnect_max_backoff_s: float = Field(30.0, gt=0)


class NodeConfig(BaseModel):
    """Everything a Node needs; the shell builds it from the layered settings."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    node_name: str
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
