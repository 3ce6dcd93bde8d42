"""Which peer holds which cache keys: the key index a node keeps of its peers' caches.

Why: without it, every local miss asked peers, and a workflow of new inputs (nearly every
workflow) sent a lookup per task that could only miss; on 2 cores those lookups starved the
connections that carry heartbeats (docs/architecture.md §14). With it, a node asks a peer only
for keys that peer is known to hold, and a miss everywhere costs no request at all.

How it stays current: a peer's heartbeat advertises the ``seq`` of its newest entry; when that
is past what we saw, we ask for the prefixes stored since (``/ipfs-accelerate/cache/1.0.0``,
``since``). Evictions are not sent: a stale prefix costs one lookup that misses. A reply under
another ``epoch`` (the peer's store file was recreated) replaces what we held of that peer.

Pure: no I/O, no clock. Bounded: at most ``max_peers`` peers, ``max_prefixes`` prefixes per
peer and ``max_total`` over all of them (a Python int in a set costs ~60 bytes: the defaults
hold at most ~60 MB); a peer past a bound is no longer followed or asked until its store
restarts (logged once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("p2p.cache")


@dataclass
class _Held:
    epoch: bytes = b""
    seq: int = 0
    prefixes: set[int] = field(default_factory=set)
    full: bool = False  # past max_prefixes: no longer followed


class KeyIndex:
    """Peer id -> the prefixes of the cache keys it holds (see the module docstring)."""

    def __init__(self, *, max_peers: int = 32, max_prefixes: int = 1 << 19, max_total: int = 1 << 20) -> None:
        self.max_peers = max_peers
        self.max_prefixes = max_prefixes
        self.max_total = max_total
        self.total = 0  # prefixes held over all peers
        self._peers: dict[str, _Held] = {}

    def position(self, peer: str) -> tuple[bytes, int]:
        """(epoch, seq) to ask ``peer`` from: empty epoch and 0 for a peer we know nothing of."""
        held = self._peers.get(peer)
        return (held.epoch, held.seq) if held is not None else (b"", 0)

    def behind(self, peer: str, advertised_seq: int) -> bool:
        """Whether ``peer`` advertises entries we have not asked it for. A lower seq than ours
        means its store restarted: ask again (the reply's epoch resets us)."""
        held = self._peers.get(peer)
        if held is None:
            return advertised_seq > 0 and len(self._peers) < self.max_peers
        # A restarted store (another epoch) is noticed once its seq passes ours: until then its
        # new entries are computed here, which costs time, never a wrong answer.
        return not held.full and advertised_seq > held.seq

    def learn(self, peer: str, epoch: bytes, seq: int, prefixes: list[bytes]) -> None:
        """A reply from ``peer``: its prefixes stored up to ``seq`` in ``epoch``."""
        held = self._peers.get(peer)
        if held is None:
            if len(self._peers) >= self.max_peers:
                return
            held = self._peers[peer] = _Held()
        if held.epoch != epoch:  # its store was recreated (or first contact): start over
            self.total -= len(held.prefixes)
            held.epoch, held.seq, held.prefixes, held.full = epoch, 0, set(), False
        if held.full:
            return
        before = len(held.prefixes)
        held.prefixes.update(int.from_bytes(p, "big") for p in prefixes)
        self.total += len(held.prefixes) - before
        held.seq = max(held.seq, seq)
        if len(held.prefixes) > self.max_prefixes or self.total > self.max_total:
            self.total -= len(held.prefixes)
            held.full = True
            held.prefixes = set()
            log.warning("a peer's cache index is over its bound; it is no longer asked for entries",
                        peer=peer, limit=self.max_prefixes, total_limit=self.max_total)

    def holders(self, key: bytes) -> list[str]:
        """Peers that hold ``key`` as far as we know (sorted, so every run asks alike)."""
        p = int.from_bytes(key[:8], "big")
        return sorted(peer for peer, held in self._peers.items() if p in held.prefixes)

    def retain(self, peers: set[str]) -> None:
        """Forget peers no longer offered (gone, disconnected, or their cache emptied)."""
        for peer in [p for p in self._peers if p not in peers]:
            self.total -= len(self._peers.pop(peer).prefixes)

    def prefixes(self, peer: str) -> int:
        held = self._peers.get(peer)
        return len(held.prefixes) if held is not None else 0

    def peers(self) -> list[str]:
        return sorted(self._peers)
