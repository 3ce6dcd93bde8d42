"""Replication of the Merkle clock between peers, in go-ds-crdt's shape:

- :mod:`~p2p.replication.broadcaster`: ``Broadcaster`` (Broadcast/Next) — announcements to every
  peer (gossipsub in production, an in-memory hub in tests);
- :mod:`~p2p.replication.dagservice`: ``DAGService`` — blocks by CID from a given peer (our blocks
  stream protocol in production), and ``BlockServer``, the serving side;
- :mod:`~p2p.replication.push`: ``PushBroadcaster`` — the same interface on a direct stream to
  each connected peer, so new events reach them at once (gossip stays the mesh);
- :mod:`~p2p.replication.replicator`: ``Replicator`` — announce local events, hear others', walk
  the DAG to fetch what is missing, and tell the scheduler when this peer has caught up.

Each piece is testable without processes; the Node wires them to a libp2p host.
"""

from p2p.replication.broadcaster import Broadcaster, GossipBroadcaster, MemoryHub
from p2p.replication.dagservice import BlockServer, DAGService, StreamDAGService
from p2p.replication.push import PushBroadcaster, push_protocol
from p2p.replication.replicator import Replicator

__all__ = [
    "BlockServer", "Broadcaster", "DAGService", "GossipBroadcaster", "MemoryHub", "PushBroadcaster", "Replicator",
    "StreamDAGService", "push_protocol",
]
