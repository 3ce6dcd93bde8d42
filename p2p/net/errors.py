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


class ProtocolRefused(RequestError):
    """The peer answered protocol negotiation with "na": it does not speak that protocol (an
    older version, or a node of another network: the clock's protocol ids carry the name)."""


def describe(exc: BaseException) -> str:
    """``Type: first line``, plus the innermost cause (py-libp2p wraps the useful reason in a
    chain of SwarmException / MultiError, e.g. "failed to negotiate the secure protocol")."""
    text = str(exc).strip().splitlines()
    out = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    root = root_cause(exc)
    if root is not exc:
        root_text = str(root).strip().splitlines()
        if root_text and root_text[0] not in out:
            out += f" (cause: {root_text[0]})"
    return out


def root_cause(exc: BaseException) -> BaseException:
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nested = getattr(exc, "exceptions", None)
        if nested:
            exc = nested[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        elif exc.__context__ is not None and not exc.__suppress_context__:
            exc = exc.__context__
        else:
            break
    return exc
