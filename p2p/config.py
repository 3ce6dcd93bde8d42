"""Settings of the p2p layer: clock, scheduler and network tables of configs/default.toml."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.config import InferenceConfig


class ClockConfig(BaseModel):
    """Limits of the Merkle clock. ``max_block_bytes`` must match on every peer (a larger one
    elsewhere makes events we reject), so it is a consensus setting."""

    model_config = ConfigDict(extra="forbid")

    max_block_bytes: int = Field(2 << 20, ge=1024)
    max_ops_per_event: int = Field(256, ge=1)
    compact: bool = Field(True, description="compact this node's finished workflows after retention_s (docs/compaction.md)")
    retention_s: float = Field(86_400.0, ge=0, allow_inf_nan=False,
                               description="how long a finished workflow keeps counting late ops before its submitter compacts it")
    drop_compacted: bool = Field(True, description="free the records of a compacted workflow once its snapshot is "
                                                   "verified; it then answers from the snapshot (docs/compaction.md §5)")
    prune_events: bool = Field(True, description="replace the blocks of events whose every op is about a dropped "
                                                 "workflow by stubs, once every live peer holds them (docs/compaction.md §5)")
    checkpoint_quorum: int = Field(2, ge=1, le=64, description="distinct peers that must give the same stub or "
                                                               "dropped-workflow record before a joiner adopts it "
                                                               "(every connected peer, when fewer)")


class SchedulerConfig(BaseModel):
    """How tasks are assigned, retried and run. ``max_attempts``, ``lease_s`` and
    ``task_timeout_s`` decide how every peer reads the clock, so they are consensus settings."""

    model_config = ConfigDict(extra="forbid")

    max_tasks_per_workflow: int = Field(
        1_000_000, ge=1, le=1_000_000, description="tasks one workflow may hold; beyond what one clock block holds "
                                                   "they must share one model, task and params (inputs then go into chunks)")
    max_input_chars: int = Field(20_000, ge=1, le=100_000)  # an op's inputs hold at most 100,000 (ops.MAX_INPUT_CHARS)
    inline_inputs_bytes: int = Field(
        65_536, ge=0, description="a submit whose inputs (one template) are larger than this puts them in content-addressed "
                                  "chunks that only the peers running its tasks fetch, instead of in the gossiped event")
    max_attempts: int = Field(3, ge=1, le=100)
    lease_s: float = Field(10.0, gt=0)
    inline_result_bytes: int = Field(16_384, ge=0)
    flush_ms: float = Field(2.0, ge=0, description="how long ops gather before one clock event")
    capacity: float = Field(0.0, ge=0, description="this peer's weight in assignment; 0 derives it from hardware")
    max_inflight: int = Field(256, ge=1, description="tasks handed to the inference engine at once")
    claim_backlog: int = Field(1024, ge=1, description="tasks of big (chunked) workflows are looked at for claiming only "
                                                       "while this peer holds fewer than this many unfinished")
    task_timeout_s: float = Field(600.0, gt=0, description="an owner that has not finished a task after this long loses the attempt")
    pause_threshold_s: float = Field(1.0, gt=0, description="a gap in this process's own running time longer than this is a pause")
    max_outvoted: int = Field(3, ge=0, description="a peer whose replicated results were outvoted more often than this gets no more work assigned by this node")


class NetworkConfig(BaseModel):
    """The libp2p host, discovery, replication and the bounds on what peers can make us hold."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True

    network: str = Field("default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    listen: list[str] = Field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    bootstrap: list[str] = Field(default_factory=list)
    mdns: bool = True
    quic: bool = False
    psk_file: str = Field("", description="swarm key file; empty means <data_dir>/swarm.key, created on first start")
    open: bool = Field(False, description="run without a network key: anyone who can reach this node may join")
    allow_peers: list[str] = Field(default_factory=list)
    heartbeat_s: float = Field(2.0, gt=0)
    announce_debounce_ms: float = Field(2.0, ge=0)
    reannounce_s: float = Field(5.0, gt=0)
    max_frame_bytes: int = Field(8 << 20, ge=1024)
    max_blocks_per_request: int = Field(256, ge=1)
    reconnect_max_backoff_s: float = Field(5.0, gt=0)
    peer_forget_s: float = Field(3600.0, gt=0, description="records of peers silent this long are dropped")
    max_peers: int = Field(4096, ge=1, description="most peers the peer table holds")
    max_kept_peers: int = Field(256, ge=1, description="most peers kept connected and redialled (bootstrap + joined by hand)")
    kept_give_up_s: float = Field(600.0, gt=0, description="a peer joined by hand and unreachable this long is no longer redialled")
    max_missing_results: int = Field(100_000, ge=1, description="result blocks waited for at once")
    missing_result_giveup_s: float = Field(3600.0, gt=0, description="stop asking for a result block after this long")
    direct_push: bool = Field(True, description="push each new event's heads at once on a direct stream to every connected peer")
    push_queue: int = Field(64, ge=1, le=4096, description="frames queued per peer for push (announcements made while its stream is busy fold into the last); a slow peer loses the oldest")
    push_gossip_interval_ms: float = Field(
        250.0, ge=0, description="while direct push reaches every live peer, local events are gossiped at most this often (else every 12 ms)")
    gossip_heads: bool = Field(True, description="heads also travel by gossip (topic and heartbeats); false: push and connect-time sync only (tests)")
    dht: Literal["auto", "server", "client", "off"] = Field(
        "auto", description="Kademlia: server answers queries and stores records; client only asks; auto serves on a public address")
    dht_interval_s: float = Field(30.0, gt=0, description="seconds between looks for the network's peers in the DHT")
    relay_service: bool = Field(False, description="serve as a circuit relay v2 for members that cannot be dialled")
    relay_reserve: Literal["auto", "always", "never"] = Field(
        "auto", description="reserve a slot on connected relays: auto does it when no listen address is public")
    max_relays: int = Field(2, ge=0, le=16, description="relays this node holds a reservation on at once")
    relay_max_reservations: int = Field(128, ge=1, description="a relay's reservations, all peers together")
    relay_max_circuits: int = Field(16, ge=1, description="a relay's relayed connections per reservation")
    relay_duration_s: int = Field(3600, ge=1, description="longest a relayed connection lasts")
    relay_data_bytes: int = Field(1 << 28, ge=1 << 16, description="most bytes one relayed connection carries, both ways")
    hole_punching: bool = Field(True, description="DCUtR: try to turn relayed connections into direct ones")


class CacheConfig(BaseModel):
    """The encrypted result cache (p2p.cache): a task whose result this network already computed
    completes without inference. Entries are sealed under a key derived from the network key;
    with no network key (``network.open``) they stay on this node."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="look results up in the network's encrypted cache before running a task")
    max_bytes: int = Field(256 << 20, ge=4096, le=1 << 44, description="sealed entries kept (LRU beyond it)")
    remote_timeout_s: float = Field(1.0, gt=0, le=30, description="the longest a lookup waits for peers' answers")
    remote_peers: int = Field(3, ge=0, le=16, description="peers asked at once on a local miss (0: never ask)")


class ResultsConfig(BaseModel):
    """How long this node keeps the result blocks of compacted workflows (docs/compaction.md §7):
    results too large to inline travel as blocks of their own, named by the snapshot."""

    model_config = ConfigDict(extra="forbid")

    retention_s: float = Field(604_800.0, ge=0, allow_inf_nan=False,
                               description="how long after a compacted workflow's records are dropped its result "
                                           "blocks are kept; then a status page shows their result_cid only")


# Settings every peer of a network must share: they decide how the fold and assignment read the
# clock (attempts, leases, timeouts) and what blocks a peer accepts. Heartbeats carry them.
CONSENSUS_KEYS = (
    "clock.max_block_bytes",
    "scheduler.max_attempts",
    "scheduler.lease_s",
    "scheduler.task_timeout_s",
)

# What peers must share that is code, not configuration: the version of the ops' wire format.
# 2: a submit may carry template + inputs (p2p.scheduler.ops.SubmitOp). A peer of version 1
# would refuse such submits as malformed and never see those workflows, so it is left out of
# assignment like a peer with other settings, and list_peers names this key.
# 3: workflow.compact (docs/compaction.md): a peer of version 2 would keep counting ops that
# version 3 peers ignore after a compaction, and report other states.
# 4: a submit may carry template + chunks (inputs in content-addressed blocks), defining up to
# 1,000,000 tasks whose records the fold creates lazily: a version 3 peer refuses such submits.
OPS_VERSION = 4

# Headroom in a frame over the largest block: the reply's CBOR framing and the CID beside it.
FRAME_OVERHEAD_BYTES = 4096


class ConfigConstraintError(ValueError):
    """A setting violates a constraint between settings; the message names the key."""


class NodeConfig(BaseModel):
    """Everything a Node needs; the shell builds it from the layered settings. The constraints
    between settings are checked here, in one place, so a bad combination stops start-up with
    one line that names the key instead of showing up later as false expiries or lost blocks."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    node_name: str
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)

    @model_validator(mode="after")
    def _constraints(self) -> "NodeConfig":
        for key, problem in constraint_violations(self):
            raise ConfigConstraintError(f"{key}: {problem}")
        return self

    def consensus_settings(self) -> dict[str, Any]:
        """The values of :data:`CONSENSUS_KEYS`, as a flat dict."""
        out: dict[str, Any] = {"clock.ops_version": OPS_VERSION}
        for key in CONSENSUS_KEYS:
            section, name = key.split(".")
            out[key] = getattr(getattr(self, section), name)
        return out

    def settings_digest(self) -> str:
        """sha256 over the canonical JSON of the consensus settings (first 32 hex digits)."""
        blob = json.dumps(self.consensus_settings(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


def constraint_violations(config: Any) -> list[tuple[str, str]]:
    """Every violated constraint between settings as (key, why); empty when all hold. Takes
    anything with ``scheduler``, ``network`` and ``clock`` sections (NodeConfig, the CLI's
    layered settings)."""
    sched, net, clock = config.scheduler, config.network, config.clock
    out: list[tuple[str, str]] = []
    if net.heartbeat_s >= sched.lease_s:
        out.append(("network.heartbeat_s", f"must be below scheduler.lease_s ({net.heartbeat_s:g} >= {sched.lease_s:g}); "
                    "peers would expire between heartbeats"))
    if net.max_frame_bytes < clock.max_block_bytes + FRAME_OVERHEAD_BYTES:
        out.append(("network.max_frame_bytes", f"must exceed clock.max_block_bytes by {FRAME_OVERHEAD_BYTES} "
                    f"({net.max_frame_bytes} < {clock.max_block_bytes} + {FRAME_OVERHEAD_BYTES}); the largest block could not travel"))
    if sched.inline_result_bytes >= clock.max_block_bytes:
        out.append(("scheduler.inline_result_bytes", f"must be below clock.max_block_bytes ({sched.inline_result_bytes} >= {clock.max_block_bytes})"))
    if sched.pause_threshold_s >= sched.lease_s:
        out.append(("scheduler.pause_threshold_s", f"must be below scheduler.lease_s ({sched.pause_threshold_s:g} >= {sched.lease_s:g})"))
    if sched.task_timeout_s <= sched.lease_s:
        out.append(("scheduler.task_timeout_s", f"must exceed scheduler.lease_s ({sched.task_timeout_s:g} <= {sched.lease_s:g})"))
    if getattr(net, "relay_service", False) and getattr(net, "open", False) and not net.allow_peers:
        out.append(("network.relay_service", "needs a network key or network.allow_peers: on an open network it would "
                    "relay for anyone who can reach it"))
    if getattr(net, "dht", "off") in ("server", "client") and net.allow_peers:
        out.append(("network.dht", "must be \"off\" or \"auto\" (which is off) with network.allow_peers: DHT lookups "
                    "dial the peers they learn of, which a closed list forbids"))
    return out
