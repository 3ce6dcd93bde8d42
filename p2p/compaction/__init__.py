"""Compaction of finished workflows (issue 12 item 3; the design is docs/compaction.md).

Built so far: the functional core, :mod:`p2p.compaction.snapshot` — a workflow's snapshot at a
cut of the clock, content-addressed, and its verification by re-folding."""

from p2p.compaction.snapshot import (
    FoldInput,
    Snapshot,
    SnapshotError,
    build_snapshot,
    fold_events,
    snapshot_at,
    verify_snapshot,
)

__all__ = ["FoldInput", "Snapshot", "SnapshotError", "build_snapshot", "fold_events", "snapshot_at", "verify_snapshot"]
