"""Liveness and capabilities of peers: ephemeral, never in the clock."""

from p2p.peers.heartbeat import Heartbeat
from p2p.peers.table import PeerRecord, PeerTable

__all__ = ["Heartbeat", "PeerRecord", "PeerTable"]
