"""The heartbeat a peer publishes every ``heartbeat_s``: who it is and what it can run."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Heartbeat(BaseModel):
    """Wire message on the peers topic (JSON). Bounded so a peer can't flood the table."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    peer_id: str = Field(min_length=1, max_length=128)
    name: str = Field(max_length=256)
    addrs: list[str] = Field(default_factory=list, max_length=64)
    hardware: dict[str, Any] = Field(default_factory=dict)  # the whole message is capped by gossipsub (1 MiB)
    models: list[str] = Field(default_factory=list, max_length=4096)
    queue: int = Field(0, ge=0)
    capacity: float = Field(1.0, gt=0, le=1e6)
    version: str = Field("", max_length=64)
    heads: list[str] = Field(default_factory=list, max_length=1024)
