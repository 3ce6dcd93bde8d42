"""Errors of the network layer.

Each message is one line an operator can act on; callers can show ``str(exc)`` without a traceback.
"""

from __future__ import annotations


class NetError(Exception):
    """Base of every error this layer raises on purpose."""


class NetConfigError(NetError):
    """The network settings cannot work (bad multiaddr, PSK with QUIC, missing /p2p/ id...)."""


class PskError(NetConfigError):
    """A swarm key file is missing or malformed."""


class DialError(NetError):
    """A peer could not be reached (refused, timed out, wrong key, failed handshake)."""


class PeerNotAllowedError(NetError):
    """The peer is not in ``allow_peers``, so we neither dial it nor serve it."""


class RequestError(NetError):
    """A request/response exchange failed: no stream, reset, timeout or a bad reply frame."""
