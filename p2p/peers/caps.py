"""What assignment needs to know of a live peer: its id, its weight and the models it serves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerCaps:
    """A live peer as the scheduler sees it (this peer included). Frozen and hashable, so a
    heartbeat that changes nothing the scheduler reads can be recognised by equality."""

    peer_id: str
    capacity: float
    models: frozenset[str]
    # (model name, content id of its files) for the models whose files this peer hashed
    model_cids: tuple[tuple[str, str], ...] = ()
