"""Compaction of finished workflows (issue 12 item 3; the design is docs/compaction.md).

Built so far: :mod:`p2p.compaction.snapshot` (a workflow's snapshot at a cut of the clock,
content-addressed, and its verification by re-folding), the fold's rule in
:mod:`p2p.scheduler.state` (a submitter's compact op freezes its finished workflow at the cut),
and :mod:`p2p.compaction.compactor` (when to compact; checking peers' compactions)."""

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
