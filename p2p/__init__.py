"""The peer: Merkle clock, scheduler, peer table, libp2p host and wire protocols."""
