"""Typed inputs and outputs of the MCP tools: they become each tool's inputSchema/outputSchema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

Tag = Literal["p2p-eligible", "p2p-only", "local-only"]
WorkflowState = Literal["pending", "running", "completed", "failed", "cancelled"]
TaskState = Literal["queued", "claimed", "running", "done", "failed", "cancelled"]


class TaskInput(BaseModel):
    """One task: one model applied to one text."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Model id (e.g. sentence-transformers/all-MiniLM-L6-v2); list_models shows what the network serves.")
    input: str = Field(description="The text to run the model on.")
    task: Literal["embedding", "text-classification", "fill-mask"] | None = Field(
        None, description="What to compute; inferred from the model when omitted."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Task options, e.g. {\"top_k\": 5} for fill-mask.")
    model_cid: str | None = Field(
        None, max_length=256,
        description="Content id of the model's files (list_peers shows each peer's); only peers serving exactly these files "
                    "run the task. Default: this node's own files, else what most peers serve.")


class CompactedRef(BaseModel):
    snapshot: str = Field(description="CID of the workflow's snapshot at the cut (every field a tool shows of it).")
    by: str = Field(description="Peer id that compacted it: its submitter.")
    results_expired: bool = Field(False, description=(
        "True once this node deleted the workflow's result blocks (results.retention_s after dropping its records): "
        "tasks whose result was a block of its own show result_cid without the result."))


class WorkflowSummary(BaseModel):
    workflow_id: str
    name: str
    state: WorkflowState
    priority: int = Field(description="1 is the highest priority, 10 the lowest.")
    tag: Tag
    submitter: str = Field(description="Peer id of the node the workflow was submitted to.")
    created_at: float = Field(description="Unix time of submission.")
    replicas: int = Field(1, description="Distinct peers that must agree on each task's result.")
    cache: bool = Field(True, description="False when peers must run every task afresh (no result cache).")
    total: int
    completed: int
    failed: int
    cancelled: int
    running: int
    pending: int = Field(description="Tasks not started yet (queued or claimed).")
    compacted: CompactedRef | None = Field(None, description=(
        "Set once the submitter compacted the finished workflow: it reads as it stood at that cut, and later "
        "ops about it (a partitioned peer's results) do not count."))


class AttemptError(BaseModel):
    attempt: int
    peer: str | None
    error: str
    expired: bool = Field(description="True when the attempt was abandoned because its peer went silent.")


class TaskStatusOut(BaseModel):
    """One task. Fields that don't apply are absent rather than null: a page holds up to a
    thousand of these, and nullable fields make every client's schema check several times
    slower (each becomes an anyOf)."""

    task_id: str
    state: TaskState
    attempts: int
    peer: str = Field(None, description="Peer that ran the task (done) or owns it now; absent while queued.")  # type: ignore[assignment]
    result: dict[str, Any] = Field(None, description="The output, when done and include_results=true.")  # type: ignore[assignment]
    result_cid: str = Field(None, description="Set when the result block has not reached this peer yet.")  # type: ignore[assignment]
    error: str = Field(None, description="Why the task failed, when it did.")  # type: ignore[assignment]
    errors: list[AttemptError] = Field(None, description="Every failed attempt; present when the task was retried.")  # type: ignore[assignment]
    stats: dict[str, Any] = Field(None, description="How the result was computed: ms, backend, device, task.")  # type: ignore[assignment]
    result_omitted: bool = Field(None, description="True when the result alone is too large for one reply and was left out.")  # type: ignore[assignment]
    late_results: list[dict[str, Any]] = Field(None, description="Results written after the task had failed for good ({peer, attempt}); kept and shown, the task stays failed.")  # type: ignore[assignment]
    cached: bool = Field(None, description="True when the result came from the result cache (stats are the original run's).")  # type: ignore[assignment]
    peers: list[str] = Field(None, description="With replicas > 1: the peers whose results agreed (the result shown is theirs).")  # type: ignore[assignment]
    disputed_by: list[str] = Field(None, description="With replicas > 1: peers whose results disagreed with the accepted one (or, when the task failed, every peer that ran it).")  # type: ignore[assignment]
    waiting: str = Field(None, description="Why a queued task is not running yet, when it is waiting on something (e.g. too few eligible peers for its replicas).")  # type: ignore[assignment]

    @model_serializer(mode="wrap")
    def _absent_not_null(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class WorkflowStatusOut(WorkflowSummary):
    offset: int
    limit: int = Field(description="Tasks asked for; when the page was cut to fit one reply (1 MiB), the tasks it holds.")
    has_more: bool = Field(description="More tasks follow this page; ask again with offset=offset+limit.")
    tasks: list[TaskStatusOut]


class WorkflowList(BaseModel):
    workflows: list[WorkflowSummary]
    has_more: bool = Field(False, description="True when the list was cut to fit one reply (1 MiB): ask again with a state filter or a smaller limit.")


class InferenceOut(BaseModel):
    model: str
    task: str
    backend: str
    device: str
    peer: str = Field("", description="Peer id that ran the model: this node's, or a connected peer's that serves it.")
    outputs: list[dict[str, Any]]


class ModelFile(BaseModel):
    path: str = Field(description="Path inside the model folder ('/' separated).")
    size: int
    cid: str = Field(description="The CID `ipfs add --cid-version=1` gives the file.")


class ModelOut(BaseModel):
    """One model as served under one content id (two peers with other files under the same
    name give two rows)."""

    model: str
    cid: str | None = Field(description="The folder's CID, as `ipfs add -r --hidden --cid-version=1` gives it; "
                                        "null when no peer content-addressed it.")
    files: list[ModelFile] = Field(description="The folder's files (read from a peer for a model only peers serve; empty if none can answer now).")
    local: bool = Field(description="True when this node serves the model itself (with these files).")
    peers: list[str] = Field(description="Other peers that advertise the model with this content id.")


class ModelList(BaseModel):
    models: list[ModelOut]


class PullStatsOut(BaseModel):
    total_bytes: int
    blocks_total: int
    blocks_fetched: int = Field(description="Blocks fetched from peers in this pull.")
    bytes_fetched: int
    blocks_reused: int = Field(description="Verified blocks already in the block store (an earlier, interrupted pull).")
    bad_blocks: dict[str, int] = Field(description="Peer -> blocks it sent that failed verification (it was dropped).")
    dropped_peers: dict[str, str] = Field(description="Peer -> why it was dropped from this pull.")
    fetched_from: dict[str, int] = Field(description="Peer -> blocks it gave.")
    seconds: float


class PullResult(BaseModel):
    model: str
    cid: str
    path: str = Field(description="Where the model's files are now.")
    already_local: bool = Field(description="True when this node already served these files: nothing was fetched.")
    files: list[ModelFile]
    stats: PullStatsOut | None = None


class PeerOut(BaseModel):
    """A peer as this node last heard it (``self`` is this node)."""

    peer_id: str
    name: str
    addrs: list[str]
    hardware: dict[str, Any]
    models: list[str]
    model_cids: dict[str, str] = Field(default_factory=dict, description="Model -> content id of the files it serves.")
    queue: int
    capacity: float
    last_seen_s: float | None = None
    rtt_ms: float | None = None
    compatible: bool = Field(True, description="False when its consensus settings differ from ours: it gets no work from us.")
    incompatible_keys: list[str] = Field(default_factory=list, description="The consensus settings that differ.")
    outvoted: int = Field(0, description="Replicated tasks where its result disagreed with the accepted one; "
                                         "beyond scheduler.max_outvoted this node assigns it no more work.")
    workers: dict[str, Any] | None = Field(None, description=(
        "Its inference workers: mode (pool or in-process), live, busy, starting, target, min, max, queue_depth "
        "(null from a peer that does not say)."))
    connection: Literal["direct", "relayed", "hole-punched"] | None = Field(None, description=(
        "How this node is connected to it now: direct, relayed (through a circuit relay) or hole-punched "
        "(DCUtR replaced the relayed connection); null when not connected (its heartbeats reach us through others)."))


class PeerList(BaseModel):
    self_: PeerOut = Field(alias="self", serialization_alias="self")
    peers: list[PeerOut]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ClockInfo(BaseModel):
    heads: list[str]
    hash: str = Field(description="Hash over the sorted heads: peers holding the same events report the same hash.")
    events: int
    db_bytes: int = Field(0, description="Bytes the clock's SQLite database takes on disk (its write-ahead log included).")
    forked: list[str] = Field(default_factory=list, description=(
        "Peers whose history forks (two events with one seq, or one that skips its own previous "
        "event): a faulty or hostile peer, one restored from a backup, or one killed before its "
        "last announced events reached its disk. The fold stays exact for them; shown so an "
        "operator can find them. At most 16."))


class NodeInfo(BaseModel):
    peer_id: str
    name: str
    version: str
    addrs: list[str]
    hardware: dict[str, Any]
    models: list[str]
    data_dir: str
    uptime_s: float
    clock: ClockInfo
    workflows: int
    queue: int
    cache: dict[str, Any] = Field(default_factory=dict, description="The result cache: enabled, shared, entries, bytes, hits, misses, remote hits, authentication failures.")
    workers: dict[str, Any] = Field(default_factory=dict, description=(
        "Inference workers: mode (pool or in-process), live, busy, starting, target, min, max, queue_depth, "
        "spawned, crashes, and per worker its pid, models, batches and items."))
    replication: dict[str, Any] = Field(default_factory=dict, description=(
        "Replication counters: events applied from peers, head announcements sent and heard by gossip and by "
        "direct push, peers being synced, result blocks awaited, and the push streams' own counters."))
    relay: dict[str, Any] = Field(default_factory=dict, description=(
        "Circuit relay: service (this node relays for others), hole_punching, reservations (relay -> our "
        "addresses through it), relayed_dials, reserve_failures, hole_punched peers, last_error."))
    dht: dict[str, Any] = Field(default_factory=dict, description=(
        "The Kademlia DHT: mode (server, client or off), routing_table size, lookups, providers_found, peers "
        "dialled from it, records provided, failures and the last error."))
    compaction: dict[str, Any] = Field(default_factory=dict, description=(
        "Compaction (docs/compaction.md): enabled, retention_s, compacted workflows (frozen at a cut), own finished "
        "workflows waiting for retention_s, compactions written, peers' compactions verified, forged (by author) "
        "and abstained, late ops ignored; dropped workflows and their ops skipped; pruned_events and stubs_held "
        "(events kept as stubs), prune_held_back and prune_waiting_for (live peers that may not hold them yet); "
        "joined (compacted workflows adopted from peers, refused, disputed); results_retention_s, results_expired "
        "(workflows whose result blocks were deleted) and result_blocks_expired."))


class ConnectResult(BaseModel):
    peer_id: str
    connected: bool
