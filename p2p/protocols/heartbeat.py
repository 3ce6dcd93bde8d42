"""The heartbeat a peer publishes every ``heartbeat_s`` on the peers topic (JSON): who it is, what
it can run, what it has, and the settings every peer of a network must share."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Scalar = int | float | str | bool
Count = Annotated[int, Field(ge=0, le=1_000_000)]


class WorkersSummary(BaseModel):
    """A peer's inference workers in a few numbers (its ``get_node_info`` has the details):
    enough for ``list_peers``, the CLI and the network page to show what each peer runs with."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    mode: str = Field("", max_length=16)
    live: Count = 0
    busy: Count = 0
    starting: Count = 0
    target: Count = 0
    min: Count = 0
    max: Count = 0
    queue_depth: Count = 0

    @classmethod
    def of(cls, info: dict[str, Any]) -> "WorkersSummary":
        """From ``InferenceEngine.workers_info()`` (extra keys dropped, values clamped)."""
        def n(key: str) -> int:
            v = info.get(key)
            return max(0, min(1_000_000, int(v))) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0

        return cls(mode=str(info.get("mode", ""))[:16], live=n("live"), busy=n("busy"), starting=n("starting"),
                   target=n("target"), min=n("min"), max=n("max"), queue_depth=n("queue_depth"))


class Heartbeat(BaseModel):
    """Wire message on the peers topic. Every field is bounded so a peer can't flood the table
    (the whole message is also capped by gossipsub at 1 MiB)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    peer_id: str = Field(min_length=1, max_length=128)
    name: str = Field(max_length=256)
    addrs: list[str] = Field(default_factory=list, max_length=64)
    hardware: dict[str, Any] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list, max_length=4096)
    # model name -> content id of its files (UnixFS CID, p2p.content): tasks pin it
    model_cids: dict[Annotated[str, Field(max_length=512)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=4096)
    queue: int = Field(0, ge=0)
    capacity: float = Field(1.0, gt=0, le=1e6)
    version: str = Field("", max_length=64)
    heads: list[str] = Field(default_factory=list, max_length=1024)
    # Consensus settings (p2p.config.consensus_settings) and their digest: a peer whose digest
    # differs from ours is left out of assignment; the values let us name the keys that differ.
    settings: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    settings_digest: str = Field("", max_length=64)
    # Entries of this peer's shared result cache (p2p.cache): peers ask only those that offer
    # some. 0 for a peer whose cache is off or local (an open network's): it is never asked.
    cache_entries: int = Field(0, ge=0, le=1 << 40)
    # The seq of the newest entry of that cache: a peer whose key index of ours is behind it asks
    # for the keys stored since (p2p.cache.index). 0 from a peer that does not follow indexes.
    cache_seq: int = Field(0, ge=0, le=1 << 62)
    # Rises with every heartbeat a peer sends (and across its restarts: it starts from the wall
    # clock in ns). Gossip may deliver an older heartbeat after a newer one; the peer table keeps
    # the newest. 0 from a peer that does not number them: then the last one heard is kept.
    seq: int = Field(0, ge=0, le=1 << 63)
    # The peer's inference workers (None from a peer that does not say, or says it badly: a
    # display field, so a bad one is dropped rather than the whole heartbeat with it).
    workers: WorkersSummary | None = None

    @field_validator("workers", mode="before")
    @classmethod
    def _lenient_workers(cls, value: Any) -> Any:
        if value is None or isinstance(value, WorkersSummary):
            return value
        try:
            return WorkersSummary.model_validate(value)
        except ValidationError:
            return None
