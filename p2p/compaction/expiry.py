"""Result expiry: the result blocks of compacted workflows go after ``results.retention_s``.

Why (docs/compaction.md §7, issue 12): a compacted workflow's snapshot keeps each result in the
form its event carried it — inline, or the CID of a block of its own for a result too large to
inline. The snapshot is small; those blocks are not, and they are kept only for whoever still
reads them. So once a workflow has been dropped here for ``results.retention_s`` (wall-clock
seconds, recorded in the clock's ``expiry`` table so a restart keeps counting), its result blocks
are deleted. A status page then shows each such task's ``result_cid`` without the result, and an
export says the result expired (``partial=true`` writes the rest). Inline results stay: they are
part of the snapshot.

A block is content-addressed, so two workflows with one identical result share it: a block is
kept while any live task or any dropped, unexpired workflow here still names it.

Local policy, like dropping: peers expire on their own schedules, and a peer that still holds a
block serves it (a joiner takes what it can get: ``p2p.compaction.joining``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from p2p.clock.cids import cid_from_bytes, cid_raw
from p2p.compaction.pages import chunk_result_cids

log = structlog.get_logger("p2p.compaction")


@dataclass
class ExpiryStats:
    """What expiry did (get_node_info.compaction)."""

    expired_workflows: int = 0  # since start
    expired_blocks: int = 0  # result blocks deleted, since start
    kept_shared: int = 0  # blocks kept because another workflow names them, since start


class ResultExpiry:
    """Deletes the result blocks of workflows dropped over ``retention_s`` ago (module doc)."""

    def __init__(self, scheduler: Any, clock: Any, *, retention_s: float,
                 wall: Callable[[], float] = time.time) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.retention_s = retention_s
        self._wall = wall
        self.stats = ExpiryStats()
        self._cids: dict[str, frozenset[bytes]] = {}  # dropped workflow -> result blocks its snapshot names
        self._times: dict[str, tuple[float, bool]] | None = None

    def info(self) -> dict[str, Any]:
        return {"results_retention_s": self.retention_s, "results_expired": len(self.scheduler.state.expired),
                "result_blocks_expired": self.stats.expired_blocks}

    def load(self) -> None:
        """File the workflows whose results expired before a restart (State.expired)."""
        self._times = self.clock.expiry()
        self.scheduler.state.expired.update(w for w, (_, done) in self._times.items() if done)

    async def step(self) -> int:
        """Date new drops; expire what is due. Returns the workflows expired."""
        if self._times is None:
            self.load()
        assert self._times is not None
        state = self.scheduler.state
        now = self._wall()
        for wid in state.dropped:
            if wid not in self._times:
                self._times[wid] = (now, False)
                self.clock.note_dropped_at(wid, now)
        due = sorted(w for w, (at, done) in self._times.items()
                     if not done and w in state.dropped and now - at >= self.retention_s)
        if not due:
            return 0
        for wid in due:
            await self._expire(wid, due)
        return len(due)

    async def _result_cids(self, wid: str) -> frozenset[bytes]:
        got = self._cids.get(wid)
        if got is None:
            gone = self.scheduler.state.dropped[wid]
            datas = [self.clock.get_block(cid_from_bytes(c)) for _, c in gone.chunks]  # point reads; decoding off the loop
            got = frozenset(cid_raw(c) for c in await trio.to_thread.run_sync(chunk_result_cids, datas))
            self._cids[wid] = got
        return got

    async def _expire(self, wid: str, due: list[str]) -> None:
        state = self.scheduler.state
        mine = await self._result_cids(wid)
        if mine:
            keep: set[bytes] = set()
            for task in list(state.tasks.values()):
                for outcome in task.results.values():
                    if outcome.result_cid is not None:
                        keep.add(cid_raw(outcome.result_cid))
            for other in list(state.dropped):
                if other != wid and other not in state.expired:
                    keep |= await self._result_cids(other)
            shared = mine & keep
            self.stats.kept_shared += len(shared)
            drop = sorted(mine - shared)
        else:
            drop = []
        await self.clock.expire_async(wid, drop)
        assert self._times is not None
        self._times[wid] = (self._times[wid][0], True)
        state.expired.add(wid)
        self.stats.expired_workflows += 1
        self.stats.expired_blocks += len(drop)
        log.info("compacted workflow's result blocks expired", workflow_id=wid, deleted=len(drop),
                 kept_shared=len(mine) - len(drop), retention_s=self.retention_s)


__all__ = ["ExpiryStats", "ResultExpiry"]
