"""What the fold keeps of a compacted workflow whose records this peer dropped (docs/compaction.md §5).

Why a record of its own: once this peer has verified the snapshot of a compaction in force (it
rebuilt the same CID from its own fold), the workflow's answers are the snapshot's content, for
good. The fold then frees the workflow's task records — the bulk of its memory — and keeps only
this: the summary a tool shows (the snapshot root's), where the snapshot's task chunks start (so a
status page reads the chunks it covers, O(page)), the compaction in force, and the workflow's
share of ``State.outvoted`` (which a restart, skipping the workflow's ops, must not lose).

It is persisted (the clock's ``dropped`` table) so that a restart skips every op about the
workflow while re-folding: restart time and memory follow live state, not history.

Pure data: no I/O here. ``TaskIds`` stands in for the workflow's list of task ids (its length and
its ids, derived, never stored: a million-task workflow costs two fields).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from p2p.clock import codec

DROPPED_VERSION = 1
MAX_SPECS = 1024  # distinct (model, content id, task) kept; a workflow of its own has one
# the order ``views.workflow_summary`` gives its fields (DAG-CBOR's canonical order is another)
SUMMARY_KEYS = ("workflow_id", "name", "state", "priority", "tag", "submitter", "created_at", "replicas", "cache",
                "total", "completed", "failed", "cancelled", "running", "pending")


class TaskIds(Sequence[str]):
    """The task ids ``{workflow_id}/{i}`` for ``i < n``, without holding them."""

    __slots__ = ("workflow_id", "n")

    def __init__(self, workflow_id: str, n: int) -> None:
        self.workflow_id = workflow_id
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [f"{self.workflow_id}/{i}" for i in range(*index.indices(self.n))]
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(index)
        return f"{self.workflow_id}/{index}"

    def __iter__(self) -> Iterator[str]:
        return (f"{self.workflow_id}/{i}" for i in range(self.n))

    def __repr__(self) -> str:
        return f"TaskIds({self.workflow_id!r}, {self.n})"


@dataclass(frozen=True, slots=True)
class Dropped:
    """A compacted workflow whose records were dropped: enough to answer every tool."""

    workflow_id: str
    summary: dict[str, Any]  # the snapshot root's "workflow": what workflow_summary shows but "compacted"
    snapshot: str  # the snapshot's root CID, as text
    by: str  # the compact op's author (the submitter)
    stamp: tuple[int, bytes, int]  # the compact op's stamp
    chunks: tuple[tuple[int, bytes], ...]  # (index of the chunk's first task, chunk CID bytes), in order
    outvoted: dict[str, int] = field(default_factory=dict)  # this workflow's share of State.outvoted
    # the distinct (model, model_cid, task name) its tasks ran, at most MAX_SPECS (search needs
    # them), and whether that is all of them
    specs: tuple[tuple[str, str | None, str | None], ...] = ()
    specs_complete: bool = True

    @property
    def total(self) -> int:
        return int(self.summary["total"])

    def view(self) -> dict[str, Any]:
        """The workflow summary a tool shows (``views.workflow_summary``'s fields)."""
        out = {k: self.summary[k] for k in SUMMARY_KEYS if k in self.summary}
        out.update((k, v) for k, v in self.summary.items() if k not in out)
        out["compacted"] = {"snapshot": self.snapshot, "by": self.by, "results_expired": False}
        return out

    def chunk_for(self, index: int) -> int:
        """The position in ``chunks`` of the chunk holding task ``index``."""
        lo, hi = 0, len(self.chunks) - 1
        while lo < hi:  # the last chunk whose first task is <= index
            mid = (lo + hi + 1) // 2
            if self.chunks[mid][0] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def encode(self) -> bytes:
        return codec.encode({
            "v": DROPPED_VERSION, "workflow_id": self.workflow_id, "summary": self.summary, "snapshot": self.snapshot,
            "by": self.by, "stamp": list(self.stamp), "chunks": [[first, cid] for first, cid in self.chunks],
            "outvoted": dict(self.outvoted), "specs": [list(t) for t in self.specs], "specs_complete": self.specs_complete,
        })

    @classmethod
    def decode(cls, data: bytes) -> Dropped:
        raw = codec.decode(data)
        if not isinstance(raw, dict) or raw.get("v") != DROPPED_VERSION:
            raise ValueError("not a dropped-workflow record of this version")
        height, cid, index = raw["stamp"]
        return cls(str(raw["workflow_id"]), dict(raw["summary"]), str(raw["snapshot"]), str(raw["by"]),
                   (int(height), bytes(cid), int(index)), tuple((int(f), bytes(c)) for f, c in raw["chunks"]),
                   {str(p): int(n) for p, n in raw["outvoted"].items()},
                   tuple((str(m), c, t) for m, c, t in raw.get("specs", [])), bool(raw.get("specs_complete", True)))


__all__ = ["DROPPED_VERSION", "MAX_SPECS", "SUMMARY_KEYS", "Dropped", "TaskIds"]
