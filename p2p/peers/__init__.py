"""Liveness and capabilities of peers: ephemeral, never in the clock."""

from p2p.peers.caps import PeerCaps
from p2p.peers.pause import PauseDetector, awake_clock
from p2p.peers.table import PeerRecord, PeerTable
from p2p.protocols.heartbeat import Heartbeat

__all__ = ["Heartbeat", "PauseDetector", "PeerCaps", "PeerRecord", "PeerTable", "awake_clock"]
