"""The operations carried by clock events: the scheduler's wire format.

Every op is a DAG-CBOR map with an ``op`` field. Ops from peers are validated with these
pydantic models before the fold looks at them; an op that fails validation is ignored (and
logged) rather than stopping the fold, because the event that carries it is already part of
the replicated DAG and other peers' events may name it as a parent.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from typing import Annotated, Any, Literal, Union

from multiformats import CID
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

MAX_PRIORITY = 10
MIN_PRIORITY = 1


class WorkflowTag(str, enum.Enum):
    """Where a workflow's tasks may run (the seed's WorkflowTag)."""

    P2P_ELIGIBLE = "p2p-eligible"  # any peer, the submitter included
    P2P_ONLY = "p2p-only"  # never the submitter
    LOCAL_ONLY = "local-only"  # the submitter alone


class _Op(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, arbitrary_types_allowed=True)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=512)
    input: str
    task: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class SubmitOp(_Op):
    op: Literal["workflow.submit"]
    workflow_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    name: str = Field(max_length=512)
    priority: int = Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)
    tag: WorkflowTag
    tasks: list[TaskSpec] = Field(min_length=1)
    created_at: float = 0.0


class ClaimOp(_Op):
    op: Literal["task.claim"]
    task_id: str
    attempt: int = Field(ge=1, le=100)
    capacity: float = Field(gt=0, le=1e6)
    # Why the previous attempt was abandoned, when this claim supersedes one (lease expiry).
    supersedes: str | None = None


class StartOp(_Op):
    op: Literal["task.start"]
    task_id: str
    attempt: int = Field(ge=1)


class DoneOp(_Op):
    op: Literal["task.done"]
    task_id: str
    attempt: int = Field(ge=1)
    result: dict[str, Any] | None = None
    result_cid: Any = None  # a CID when the result is too large to inline (checked below)
    stats: dict[str, Any] = Field(default_factory=dict)


    @field_validator("result_cid")
    @classmethod
    def _cid_or_none(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, CID):
            raise ValueError("result_cid must be a CID")
        return v


class FailOp(_Op):
    op: Literal["task.fail"]
    task_id: str
    attempt: int = Field(ge=1)
    error: str
    retryable: bool = True
    # True when a peer other than the owner records that the owner went silent on the last attempt.
    expired: bool = False


class CancelOp(_Op):
    op: Literal["workflow.cancel"]
    workflow_id: str


class ReprioritizeOp(_Op):
    op: Literal["workflow.reprioritize"]
    workflow_id: str
    priority: int = Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)


Op = Annotated[
    Union[SubmitOp, ClaimOp, StartOp, DoneOp, FailOp, CancelOp, ReprioritizeOp],
    Field(discriminator="op"),
]
OP_ADAPTER: TypeAdapter[Any] = TypeAdapter(Op)


def parse_op(raw: Any) -> Any:
    """Validate one raw op; raises pydantic.ValidationError."""
    return OP_ADAPTER.validate_python(raw)


def task_id_for(workflow_id: str, index: int) -> str:
    return f"{workflow_id}/{index}"


def submitter_prefix(peer_id: str) -> str:
    """The first half of every workflow id a peer may submit: 64 bits of sha256(peer id)."""
    return hashlib.sha256(peer_id.encode()).hexdigest()[:16]


def new_workflow_id(peer_id: str) -> str:
    """A fresh workflow id bound to its submitter, so no other peer can submit under it."""
    return submitter_prefix(peer_id) + secrets.token_hex(8)
