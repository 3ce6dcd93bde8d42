"""The operations carried by clock events: the scheduler's wire format.

Every op is a DAG-CBOR map with an ``op`` field. Ops from peers are validated with these
pydantic models before the fold looks at them; an op that fails validation is ignored (and
logged) rather than stopping the fold, because the event that carries it is already part of
the replicated DAG and other peers' events may name it as a parent.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import secrets
from typing import Annotated, Any, Literal, Union

from multiformats import CID
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, field_validator, model_validator

MAX_PRIORITY = 10
MIN_PRIORITY = 1

# Length limits: every string and list a peer can put in an op is bounded, so no op can make
# the fold hold an unbounded structure (the block size bounds bytes, not decoded objects: a
# MiB of CBOR small ints decodes to ~30 MiB of Python objects). An op over a limit is rejected
# by the fold like any malformed op, except error texts (``FailOp.error``, ``supersedes``),
# which are cut to MAX_ERROR_CHARS so an honest peer's long traceback still fails its task.
WORKFLOW_ID_PATTERN = r"^[0-9a-f]{32}$"
TASK_ID_PATTERN = r"^[0-9a-f]{32}/(0|[1-9][0-9]{0,5})$"
MAX_TASKS = 100_000  # tasks per submit (the block size usually binds first)
# tasks of a chunked, unreplicated submit: the fold creates a task's record only when an op is
# about it (``state.lazy``), so such a submit costs a few bytes however many tasks it defines
MAX_LAZY_TASKS = 1_000_000  # the task id pattern's six digits: 0 .. 999,999
MAX_ATTEMPT = 100
MAX_NAME_CHARS = 512
MAX_INPUT_CHARS = 100_000
MAX_ERROR_CHARS = 8_192
MAX_PARAMS = 64  # entries of params / stats
MAX_VALUE_NODES = 200_000  # nodes in one result / params / stats value, nested
MAX_VALUE_DEPTH = 16
MAX_KEY_CHARS = 256
MAX_REPLICAS = 5


def _check_value(value: Any, what: str, *, max_keys: int | None = None) -> Any:
    """Bound a peer-supplied nested value: node count, depth, key length (ValueError if over)."""
    if max_keys is not None and isinstance(value, dict) and len(value) > max_keys:
        raise ValueError(f"{what} has {len(value)} entries, more than {max_keys}")
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_VALUE_NODES:
            raise ValueError(f"{what} has more than {MAX_VALUE_NODES} nested values")
        if depth > MAX_VALUE_DEPTH:
            raise ValueError(f"{what} is nested deeper than {MAX_VALUE_DEPTH}")
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str) or len(k) > MAX_KEY_CHARS:
                    raise ValueError(f"{what} has a key that is not a string of at most {MAX_KEY_CHARS} chars")
                stack.append((item, depth + 1))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, depth + 1) for item in v)
    return value


class WorkflowTag(str, enum.Enum):
    """Where a workflow's tasks may run (the seed's WorkflowTag)."""

    P2P_ELIGIBLE = "p2p-eligible"  # any peer, the submitter included
    P2P_ONLY = "p2p-only"  # never the submitter
    LOCAL_ONLY = "local-only"  # the submitter alone


class _Op(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)


class TaskTemplate(BaseModel):
    """What a task runs, without its input: what every task of a workflow shares in the compact
    submit form (``SubmitOp.template``), and the base of ``TaskSpec``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=512)
    # The content id of the model's files as the submitter resolved them: only peers that
    # advertised this very id for the model may claim the task (issue 8 item 3).
    model_cid: str | None = Field(default=None, min_length=1, max_length=256)
    task: str | None = Field(default=None, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _bounded_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_value(v, "params", max_keys=MAX_PARAMS)


class TaskSpec(TaskTemplate):
    """One task: a model applied to one input."""

    input: str = Field(max_length=MAX_INPUT_CHARS)


Input = Annotated[str, Field(min_length=1, max_length=MAX_INPUT_CHARS)]

def _a_cid(v: Any) -> Any:
    if not isinstance(v, CID):
        raise ValueError("must be a CID")
    return v


CidValue = Annotated[Any, AfterValidator(_a_cid)]  # a link (DAG-CBOR tag 42) in an op

# Inputs in content-addressed chunks (issue 12 item 1): at most this many inputs per chunk
# block (``p2p.content.inputs`` packs them), so a worker fetches a bounded block for a task
MAX_CHUNK_INPUTS = 8_192


class InputChunk(BaseModel):
    """One block of a chunked submit's inputs: its CID (a DAG-CBOR block, ``p2p.content.inputs``)
    and how many inputs it holds. The inputs are not in the event: a peer fetches a chunk only
    when it runs (or exports) one of its tasks, and checks it against this CID and count."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    cid: CidValue
    count: int = Field(ge=1, le=MAX_CHUNK_INPUTS)


class SubmitOp(_Op):
    """A workflow's definition. Three forms, exactly one per op: ``tasks`` (each task its own
    TaskSpec); or, when every task shares model, content id, task and params, ``template`` plus
    ``inputs`` (one string per task); or ``template`` plus ``chunks``, the inputs in
    content-addressed blocks the event only names. The compact form is what lets one 2 MiB
    clock block hold 25,000 short tasks: the model name and content id (~100 bytes) once instead
    of per task. The chunked form keeps the inputs out of the gossiped history altogether (a
    25,000-task submit is a few KiB): only peers that run a task fetch its chunk.
    ``count`` reads every form; ``spec(i)`` the two inline ones, ``chunk_of(i)`` the chunked."""

    op: Literal["workflow.submit"]
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    name: str = Field(max_length=MAX_NAME_CHARS)
    priority: int = Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)
    tag: WorkflowTag
    tasks: list[TaskSpec] | None = Field(default=None, min_length=1, max_length=MAX_TASKS)
    template: TaskTemplate | None = None
    inputs: list[Input] | None = Field(default=None, min_length=1, max_length=MAX_TASKS)
    chunks: list[InputChunk] | None = Field(default=None, min_length=1, max_length=MAX_TASKS)
    created_at: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    # Each task runs on this many distinct peers and a result stands when they agree (issue 8
    # item 4); see p2p/scheduler/replicas.py. 1 keeps the single-run layout of old submits.
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    # False: peers run every task afresh, never answering from the result cache
    cache: bool = True
    _starts: list[int] | None = PrivateAttr(default=None)  # chunk starts, derived once

    @model_validator(mode="after")
    def _bounded_slots(self) -> "SubmitOp":
        forms = (self.tasks is not None) + (self.inputs is not None) + (self.chunks is not None)
        if forms != 1 or (self.tasks is None) != (self.template is not None):
            raise ValueError("a submit holds either tasks, or a template and inputs, or a template and input chunks")
        # replicas multiply the tasks the fold keeps (N + 2 slots each): bound the product
        from p2p.scheduler.replicas import slots_for  # the layout rule lives there

        slots = slots_for(self.replicas)
        if self.lazy:
            if self.count > MAX_LAZY_TASKS:
                raise ValueError(f"{self.count} tasks is over the {MAX_LAZY_TASKS} a chunked submit may define")
        elif self.count * slots > MAX_TASKS:
            raise ValueError(f"{self.count} tasks x {slots} replica slots is over {MAX_TASKS} task slots")
        return self

    @property
    def lazy(self) -> bool:
        """Whether the fold creates this submit's task records on demand: a chunked submit
        without replicas (its tasks need nothing from the op but their chunk reference)."""
        return self.chunks is not None and self.replicas == 1

    @property
    def count(self) -> int:
        """Tasks the submit defines."""
        if self.tasks is not None:
            return len(self.tasks)
        if self.chunks is not None:
            return self._chunk_starts()[-1]
        return len(self.inputs or ())

    def _chunk_starts(self) -> list[int]:
        """Where each chunk's first task is, then the total (computed once: the op is frozen)."""
        starts = self._starts
        if starts is None:
            starts = [0]
            for c in self.chunks or ():
                starts.append(starts[-1] + c.count)
            self._starts = starts
        return starts

    def chunk_of(self, i: int) -> tuple[Any, int]:
        """Task ``i``'s input as (chunk CID, position in that chunk), in the chunked form."""
        starts = self._chunk_starts()
        k = bisect.bisect_right(starts, i) - 1
        assert self.chunks is not None and 0 <= k < len(self.chunks)
        return self.chunks[k].cid, i - starts[k]

    def spec(self, i: int) -> TaskSpec:
        """Task ``i``'s spec in an inline form (the template's fields were validated with it)."""
        if self.tasks is not None:
            return self.tasks[i]
        t = self.template
        assert t is not None and self.inputs is not None, "a chunked submit's inputs are not in the op"
        return TaskSpec.model_construct(model=t.model, model_cid=t.model_cid, input=self.inputs[i], task=t.task,
                                        params=t.params)


class ClaimOp(_Op):
    op: Literal["task.claim"]
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    attempt: int = Field(ge=1, le=MAX_ATTEMPT)
    capacity: float = Field(gt=0, le=1e6, allow_inf_nan=False)
    # Why the previous attempt was abandoned, when this claim supersedes one (lease expiry).
    supersedes: str | None = Field(default=None, max_length=MAX_ERROR_CHARS)
    # A continuation: the owner of attempt ``attempt - 1``, which had started it, re-asserts the
    # task it is still running after others superseded it (it was paused). See state.py.
    continues: bool = False

    @field_validator("supersedes", mode="before")
    @classmethod
    def _cut_supersedes(cls, v: Any) -> Any:
        return truncate_error(v) if isinstance(v, str) else v


class StartOp(_Op):
    op: Literal["task.start"]
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    attempt: int = Field(ge=1, le=MAX_ATTEMPT)


class DoneOp(_Op):
    op: Literal["task.done"]
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    attempt: int = Field(ge=1, le=MAX_ATTEMPT)
    result: dict[str, Any] | None = None
    result_cid: Any = None  # a CID when the result is too large to inline (checked below)
    stats: dict[str, Any] = Field(default_factory=dict)
    # answered from the result cache (the original run's stats are kept in ``stats``)
    cached: bool = False

    @field_validator("result")
    @classmethod
    def _bounded_result(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _check_value(v, "result")

    @field_validator("stats")
    @classmethod
    def _bounded_stats(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_value(v, "stats", max_keys=MAX_PARAMS)

    @field_validator("result_cid")
    @classmethod
    def _cid_or_none(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, CID):
            raise ValueError("result_cid must be a CID")
        return v


class FailOp(_Op):
    op: Literal["task.fail"]
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    attempt: int = Field(ge=1, le=MAX_ATTEMPT)
    error: str = Field(max_length=MAX_ERROR_CHARS)
    retryable: bool = True
    # True when a peer other than the owner records that the owner went silent on the last attempt.
    expired: bool = False

    @field_validator("error", mode="before")
    @classmethod
    def _cut_error(cls, v: Any) -> Any:
        # An honest peer's long traceback must still fail its task: cut (the same on every
        # peer), never reject.
        return truncate_error(v) if isinstance(v, str) else v


MAX_ADVERTISED_MODELS = 256


class AdvertOp(_Op):
    """What a peer offers, written to the clock before its first claim and whenever it changes.

    Why in the clock and not only in heartbeats: the fold must judge a claim from the events
    alone. A claim counts only when its author advertised the task's model (and, when the task
    pins one, the same model content id) *before* claiming, and its weight in the rendezvous is
    at most the capacity it advertised then: a peer cannot win a race with a number it makes up
    at claim time, and every peer sees what it advertised (list_peers shows it)."""

    op: Literal["peer.advertise"]
    capacity: float = Field(gt=0, le=1e6, allow_inf_nan=False)
    models: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(max_length=MAX_ADVERTISED_MODELS)
    # model name -> content id of its files as this peer serves them (issue 8 item 3)
    model_cids: dict[str, Annotated[str, Field(max_length=256)]] = Field(default_factory=dict,
                                                                         max_length=MAX_ADVERTISED_MODELS)


MAX_ACCEPTS = 4096


class AcceptOp(_Op):
    """The submitter seals results it saw stand: ``[task index, result event cid, op index]``.

    Why: which of two *concurrent* claims wins is decided by score, and a peer can make its
    claim look concurrent by writing it over old parents (backdating), so without a seal a
    finished task's result could still be replaced. The submitter owns its workflow (only it
    cancels or reprioritises), so its seal is what "accepted" means: once sealed, a result
    stands whatever arrives later."""

    op: Literal["workflow.accept"]
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    results: list[tuple[Annotated[int, Field(ge=0, le=max(MAX_TASKS * (MAX_REPLICAS + 2), MAX_LAZY_TASKS))], Any, Annotated[int, Field(ge=0, le=100_000)]]] = Field(
        min_length=1, max_length=MAX_ACCEPTS)

    @field_validator("results")
    @classmethod
    def _cids(cls, v: list[tuple[int, Any, int]]) -> list[tuple[int, Any, int]]:
        out = []
        for index, cid, op_index in v:
            if isinstance(cid, CID):
                cid = bytes(cid)
            if not isinstance(cid, (bytes, bytearray)) or len(cid) > 128:
                raise ValueError("a result reference needs the result event's CID")
            out.append((index, bytes(cid), op_index))
        return out


class CancelOp(_Op):
    op: Literal["workflow.cancel"]
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)


class ReprioritizeOp(_Op):
    op: Literal["workflow.reprioritize"]
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    priority: int = Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)


class CompactOp(_Op):
    """The submitter freezes its finished workflow at this op's cut (docs/compaction.md §4):
    ops about it that are not before the op stop counting, on every peer alike. ``snapshot``
    is the CID of the workflow's snapshot at the cut (``p2p.compaction.snapshot``), which peers
    that hold the history verify by re-deriving it; the fold never reads it."""

    op: Literal["workflow.compact"]
    workflow_id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    snapshot: CidValue


Op = Annotated[
    Union[SubmitOp, ClaimOp, StartOp, DoneOp, FailOp, CancelOp, ReprioritizeOp, AdvertOp, AcceptOp, CompactOp],
    Field(discriminator="op"),
]
OP_ADAPTER: TypeAdapter[Any] = TypeAdapter(Op)


def parse_op(raw: Any) -> Any:
    """Validate one raw op; raises pydantic.ValidationError."""
    return OP_ADAPTER.validate_python(raw)


def truncate_error(text: str) -> str:
    """An error text cut to what a ``task.fail``/``supersedes`` may carry."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 15] + "… (truncated)"


def task_id_for(workflow_id: str, index: int) -> str:
    return f"{workflow_id}/{index}"


def submitter_prefix(peer_id: str) -> str:
    """The first half of every workflow id a peer may submit: 64 bits of sha256(peer id)."""
    return hashlib.sha256(peer_id.encode()).hexdigest()[:16]


def new_workflow_id(peer_id: str) -> str:
    """A fresh workflow id bound to its submitter, so no other peer can submit under it."""
    return submitter_prefix(peer_id) + secrets.token_hex(8)
