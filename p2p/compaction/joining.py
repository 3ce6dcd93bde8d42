"""Joining over pruned history: adopt compacted workflows from peers' records (docs/compaction.md §6).

Why: a peer that pruned a compacted workflow's events serves their stubs, not their blocks. A
joiner (or a peer back after a long absence) that adopts those stubs would otherwise fold the
events above them — a mixed event may still carry an op about the workflow — onto a workflow it
never saw submitted, or saw only in part, and might even run its tasks again. So before the
replicator adopts a stub, every workflow the stub is ``about`` is adopted here, as the pruning
peers hold it: its ``Dropped`` record (summary, compaction in force, chunk starts) and the
snapshot's blocks. From then on the joiner answers for it exactly as they do, and skips every
op about it.

Trust. A joiner cannot re-fold a history it never held, so it cannot verify the compaction the
way the compactor does. It adopts a record when ``clock.checkpoint_quorum`` distinct peers (or
every peer it is connected to, when fewer) give byte-identical records (DAG-CBOR is canonical,
and the record is a function of the verified snapshot and the fold) — the "enough peers vouch"
of issue 12. What it can check, it does: the snapshot root must hash to the CID the record
names, its summary and chunk list must be the record's, every chunk and result block must hash
to its CID, and each chunk must start where the record says (checked when a page reads it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from multiformats import CID

from p2p.clock import codec
from p2p.clock.cids import cid_raw
from p2p.compaction.pages import chunk_result_cids
from p2p.net.ratelog import PeerLogLimiter
from p2p.scheduler.dropped import Dropped

log = structlog.get_logger("p2p.compaction")
peer_log = PeerLogLimiter(log)

MAX_ADOPT = 1024  # workflows asked for in one dropped? request (the wire's cap)


@dataclass
class JoinStats:
    """What joining over pruned history did (get_node_info.compaction)."""

    adopted: int = 0  # compacted workflows adopted from peers' records
    refused: int = 0  # records not adopted: too few peers vouched, or the snapshot did not check out
    disputed: dict[str, int] = field(default_factory=dict)  # peer -> records that disagreed with the vouched one


class DroppedAdopter:
    """Adopts compacted workflows from peers before their stubs are folded (module doc)."""

    def __init__(self, scheduler: Any, clock: Any, dag: Any) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.dag = dag
        self.stats = JoinStats()

    def info(self) -> dict[str, Any]:
        return {"adopted": self.stats.adopted, "refused": self.stats.refused, "disputed": dict(self.stats.disputed)}

    async def adopt(self, peers: list[str], workflows: Iterable[str], need: int) -> set[str]:
        """Adopt ``workflows`` (not dropped here yet) from ``peers``, asked in order until
        ``need`` of them give identical records. Returns the workflows now dropped here."""
        state = self.scheduler.state
        wanted = sorted(set(workflows))
        todo = [w for w in wanted if w not in state.dropped][:MAX_ADOPT]
        votes: dict[str, dict[bytes, set[str]]] = {w: {} for w in todo}
        for who in peers:
            if all(max(map(len, votes[w].values()), default=0) >= need for w in todo):
                break
            try:
                got = await self.dag.get_dropped(who, todo)
            except Exception as exc:  # noqa: BLE001 - an unreachable or older peer vouches for nothing
                log.debug("dropped request failed", peer=who, error=str(exc))
                continue
            for data in got:
                try:
                    gone = Dropped.decode(data)
                except Exception:  # noqa: BLE001 - a malformed record vouches for nothing
                    peer_log.warning(who, "malformed dropped-workflow record")
                    continue
                if gone.workflow_id in votes:
                    votes[gone.workflow_id].setdefault(bytes(data), set()).add(who)
        for wid in todo:
            best = max(votes[wid].items(), key=lambda kv: len(kv[1]), default=None)
            if best is None or len(best[1]) < need:
                self.stats.refused += 1
                log.warning("a compacted workflow's record is not vouched for by enough peers; not adopted",
                            workflow_id=wid, need=need, records=len(votes[wid]))
                continue
            data, vouchers = best
            for other, who in votes[wid].items():
                if other != data:
                    for p in who:
                        self.stats.disputed[p] = self.stats.disputed.get(p, 0) + 1
            gone = Dropped.decode(data)
            try:
                await self._fetch_snapshot(sorted(vouchers), gone)
            except (ValueError, KeyError, TypeError) as exc:
                self.stats.refused += 1
                log.warning("a compacted workflow's snapshot does not match its record; not adopted",
                            workflow_id=wid, error=str(exc))
                continue
            if wid in state.dropped:
                continue
            state.adopt_dropped(gone)
            self.scheduler.forget_workflow(wid)
            self.clock.put_dropped(wid, data)
            self.stats.adopted += 1
            log.info("compacted workflow adopted from peers' records", workflow_id=wid, tasks=gone.total,
                     vouched_by=len(vouchers))
        return {w for w in wanted if w in state.dropped}

    async def _get(self, peers: list[str], cids: list[Any], required: bool = True) -> None:
        """Fetch plain blocks (checked against their CIDs) until every one is here (or, not
        ``required``, as many as the peers serve)."""
        left = [c for c in cids if not self.clock.has(c)]
        for who in peers:
            while left:
                try:
                    blocks = await self.dag.get_blocks(who, [cid_raw(c) for c in left[:64]])
                except Exception as exc:  # noqa: BLE001 - try the next voucher
                    log.debug("snapshot block fetch failed", peer=who, error=str(exc))
                    break
                if not blocks:
                    break
                by_key = {cid_raw(c): c for c in left}
                for raw, data in blocks:
                    cid = by_key.get(bytes(raw))
                    if cid is not None:
                        self.clock.add_raw_block(cid, data)  # InvalidBlockError (a ValueError) if forged
                left = [c for c in left if not self.clock.has(c)]
            if not left:
                return
        if required:
            raise ValueError(f"{len(left)} block(s) of the snapshot no peer served")

    async def _fetch_snapshot(self, peers: list[str], gone: Dropped) -> None:
        """The snapshot's root, chunks and result blocks, checked against the record."""
        root_cid = CID.decode(gone.snapshot)
        await self._get(peers, [root_cid])
        root = codec.decode(self.clock.get_block(root_cid))
        if not isinstance(root, dict) or root.get("t") != "workflow-snapshot" or root.get("workflow") != gone.summary:
            raise ValueError("the snapshot root's summary is not the record's")
        chunks = [c for c in root.get("chunks", ())]
        if [cid_raw(c) for c in chunks] != [cid for _, cid in gone.chunks]:
            raise ValueError("the snapshot root's chunks are not the record's")
        await self._get(peers, chunks)
        datas = [self.clock.get_block(c) for c in chunks]  # point reads here; the decoding off the loop
        results = await trio.to_thread.run_sync(chunk_result_cids, datas)
        if results:  # best effort: peers delete them after results.retention_s (p2p.compaction.expiry)
            await self._get(peers, results, required=False)


__all__ = ["DroppedAdopter", "JoinStats"]
