"""Pre-shared swarm keys (libp2p private networks).

The file format is the one go-libp2p, kubo and ipfs-cluster use::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

Only peers holding the same 32-byte key can complete a connection: every raw TCP connection is
wrapped in XSalsa20 under this key before the Noise handshake (:mod:`p2p.net.pnet`, "pnet v1", as
go-libp2p, kubo and js-libp2p's ``@libp2p/pnet`` do it; py-libp2p's own variant is replaced), so
the same key file admits Go and JS peers. QUIC connections bypass pnet in py-libp2p 0.8.1, so a
PSK and QUIC together are refused by :func:`p2p.net.host.open_host`.

A node is private by default: on its first start it creates ``<data_dir>/swarm.key`` (see
:func:`p2p.settings.apply_network_key`). Other machines get the key in an *invite*
(:func:`encode_invite`): one line with the key, the network's name and the inviting peer's
addresses, versioned and checksummed, so a mistyped or truncated invite is refused before
anything is written.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from p2p.net.errors import PskError

PSK_HEADER = "/key/swarm/psk/1.0.0/"
PSK_ENCODING = "/base16/"
PSK_BYTES = 32
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as NetworkConfig.network


def parse_swarm_key(text: str, source: str = "swarm key") -> bytes:
    """Decode a swarm key file's text into its 32 raw key bytes, or raise :class:`PskError`."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 3:
        raise PskError(
            f"{source}: expected 3 lines ({PSK_HEADER!r}, {PSK_ENCODING!r}, 64 hex digits), "
            f"found {len(lines)}"
        )
    header, encoding, key_hex = lines
    if header != PSK_HEADER:
        raise PskError(f"{source}: first line must be {PSK_HEADER!r}, found {header[:40]!r}")
    if encoding == "/base64/" or encoding == "/bin/":
        raise PskError(f"{source}: encoding {encoding!r} is not supported; use {PSK_ENCODING!r}")
    if encoding != PSK_ENCODING:
        raise PskError(f"{source}: second line must be {PSK_ENCODING!r}, found {encoding[:40]!r}")
    if len(key_hex) != 2 * PSK_BYTES:
        raise PskError(
            f"{source}: key must be {2 * PSK_BYTES} hex digits ({PSK_BYTES} bytes), "
            f"found {len(key_hex)} characters"
        )
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise PskError(f"{source}: key is not valid hexadecimal") from None
    if key == bytes(PSK_BYTES):
        raise PskError(f"{source}: key is all zeros; generate a random one")
    return key


def load_swarm_key(path: str | os.PathLike[str]) -> bytes:
    """Read and parse a swarm key file; errors name the file and say what is wrong."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise PskError(f"swarm key file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PskError(f"cannot read swarm key file {p}: {exc}") from None
    return parse_swarm_key(text, source=str(p))


def format_swarm_key(key: bytes) -> str:
    """The file text for ``key`` (32 bytes), in the standard three-line format."""
    if len(key) != PSK_BYTES:
        raise PskError(f"a swarm key is {PSK_BYTES} bytes, got {len(key)}")
    return f"{PSK_HEADER}\n{PSK_ENCODING}\n{key.hex()}\n"


def generate_swarm_key(path: str | os.PathLike[str] | None = None) -> bytes:
    """Make a random 32-byte key; when ``path`` is given, write it there (mode 0600, no overwrite)."""
    key = secrets.token_bytes(PSK_BYTES)
    if path is not None:
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise PskError(f"swarm key file already exists, not overwriting: {p}") from None
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(format_swarm_key(key))
    return key


# --- the data dir's own key --------------------------------------------------------------------

def load_or_create_swarm_key(path: str | os.PathLike[str]) -> tuple[bytes, bool]:
    """The key in ``path``, creating a random one (0600) when the file does not exist yet.

    Returns ``(key, created)``. A file that exists but does not parse is an error, never replaced:
    replacing it would silently cut this node off from its network. Two processes creating the
    key at once end up with the same one (exclusive create; the loser reads the winner's)."""
    p = Path(path).expanduser()
    if not p.exists():
        try:
            return generate_swarm_key(p), True
        except PskError:
            if not p.exists():
                raise
    return load_swarm_key(p), False


def store_swarm_key(path: str | os.PathLike[str], key: bytes) -> Path | None:
    """Make ``path`` hold ``key`` (0600, atomically). A different key already there is moved to
    ``<name>.old-<unix time>`` first and that path is returned (None when nothing was replaced):
    joining another network, or rotating the key, must not destroy the only copy of the old one."""
    p = Path(path).expanduser()
    text = format_swarm_key(key)
    if p.exists():
        if load_swarm_key(p) == key:
            return None
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        backup: Path | None = None
        if p.exists():
            backup = p.with_name(f"{p.name}.old-{int(time.time())}")
            os.link(p, backup)
        os.replace(tmp, p)
        return backup
    finally:
        tmp.unlink(missing_ok=True)


def key_fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key (first 8 hex digits of its sha256), for logs and errors."""
    return hashlib.sha256(key).hexdigest()[:8]


# --- invites ------------------------------------------------------------------------------------
#
# An invite is one line a user can paste into another machine's shell:
#
#     ipfsacc1:<base32 of (payload || sha256(payload)[:4])>
#
# - ``ipfsacc`` names the thing; the digit after it is the format version (a future form gets
#   ``ipfsacc2:`` and this release says it cannot read it instead of misreading it).
# - base32, lower case, no padding: no characters a shell, a URL or a chat client mangles, and it
#   survives a reader who upper-cases it.
# - The 4-byte checksum catches a mistyped or truncated invite before anything is written.
# - The payload is DAG-CBOR (deterministic): ``{"k": 32-byte key, "n": network name,
#   "p": peer id (multihash bytes), "a": [binary multiaddrs without /p2p]}``. Binary multiaddrs
#   and one peer id keep an invite with three addresses near 170 characters.
# The key inside is the secret: an invite admits whoever holds it, like the swarm key file.

INVITE_PREFIX = "ipfsacc"
INVITE_VERSION = 1
INVITE_MAX_CHARS = 4096
INVITE_MAX_ADDRS = 16
_CHECKSUM_BYTES = 4
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


class InviteError(PskError):
    """An invite cannot be used; the message says which part is wrong."""


@dataclass(frozen=True)
class Invite:
    """What an invite carries: the network key, the network's name and one peer's addresses."""

    key: bytes
    network: str
    peer_id: str
    addrs: tuple[str, ...]  # full multiaddrs, each ending in /p2p/<peer_id>

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.key)


def encode_invite(key: bytes, network: str, addrs: list[str]) -> str:
    """The invite line for ``key`` and a peer's ``addrs`` (each ending in /p2p/<its id>)."""
    import base58
    import dag_cbor
    from multiaddr import Multiaddr

    from p2p.net.addrs import peer_id_of, strip_peer_id

    if len(key) != PSK_BYTES or key == bytes(PSK_BYTES):
        raise InviteError(f"an invite needs a random {PSK_BYTES}-byte network key")
    if not addrs:
        raise InviteError("an invite needs at least one address of the inviting peer")
    peers = {peer_id_of(a) for a in addrs}
    if len(peers) != 1:
        raise InviteError(f"an invite names one peer; the addresses name {len(peers)}")
    uniq = list(dict.fromkeys(strip_peer_id(a) for a in addrs))[:INVITE_MAX_ADDRS]
    payload = dag_cbor.encode({
        "k": key,
        "n": network,
        "p": base58.b58decode(peers.pop()),
        "a": [Multiaddr(a).to_bytes() for a in uniq],
    })
    body = payload + hashlib.sha256(payload).digest()[:_CHECKSUM_BYTES]
    return f"{INVITE_PREFIX}{INVITE_VERSION}:" + base64.b32encode(body).decode("ascii").lower().rstrip("=")


def decode_invite(text: str) -> Invite:
    """Parse an invite line, or raise :class:`InviteError` naming what is wrong with it."""
    import base58
    import dag_cbor
    from multiaddr import Multiaddr

    from p2p.net.addrs import is_valid_peer_id

    if not isinstance(text, str):
        raise InviteError("an invite is text")
    s = "".join(text.split())  # a line broken by a terminal or a mail client still reads
    if not s:
        raise InviteError("the invite is empty")
    if len(s) > INVITE_MAX_CHARS:
        raise InviteError(f"the invite is {len(s)} characters; an invite is at most {INVITE_MAX_CHARS}")
    head, sep, data = s.partition(":")
    head = head.lower()
    if not sep or not head.startswith(INVITE_PREFIX):
        raise InviteError(f"not an invite: it must start with '{INVITE_PREFIX}{INVITE_VERSION}:' "
                          f"(as `ipfs-accelerate p2p invite` prints it), found {s[:16]!r}")
    version = head[len(INVITE_PREFIX):]
    if version != str(INVITE_VERSION):
        raise InviteError(f"invite version {version or '(none)'!r} is not supported: this release reads "
                          f"'{INVITE_PREFIX}{INVITE_VERSION}:' invites")
    data = data.lower()
    bad = next((i for i, c in enumerate(data) if c not in _B32), None)
    if bad is not None:
        raise InviteError(f"the invite has a character that cannot be in it: {data[bad]!r} at position "
                          f"{len(head) + 1 + bad} (base32: a-z and 2-7)")
    if len(data) % 8 in (1, 3, 6):
        raise InviteError("the invite is cut short or has extra characters (its length is impossible)")
    body = base64.b32decode(data.upper() + "=" * (-len(data) % 8))
    if len(body) <= _CHECKSUM_BYTES:
        raise InviteError("the invite is cut short: it holds no data")
    payload, check = body[:-_CHECKSUM_BYTES], body[-_CHECKSUM_BYTES:]
    if hashlib.sha256(payload).digest()[:_CHECKSUM_BYTES] != check:
        raise InviteError("the invite's checksum does not match: it was mistyped, cut short or altered; "
                          "copy it again")
    try:
        obj = dag_cbor.decode(payload)
    except Exception as exc:  # noqa: BLE001 - the decoder raises several types
        raise InviteError(f"the invite's checksum matches but its content does not decode ({exc})") from None
    if not isinstance(obj, dict) or set(obj) != {"k", "n", "p", "a"}:
        raise InviteError("the invite's content has the wrong fields (want key, network, peer, addresses)")
    key, network, peer_raw, raw_addrs = obj["k"], obj["n"], obj["p"], obj["a"]
    if not isinstance(key, bytes) or len(key) != PSK_BYTES:
        raise InviteError(f"the invite's network key must be {PSK_BYTES} bytes")
    if key == bytes(PSK_BYTES):
        raise InviteError("the invite's network key is all zeros")
    if not isinstance(network, str) or not _NETWORK_NAME.fullmatch(network):
        raise InviteError(f"the invite's network name is invalid: {str(network)[:70]!r}")
    if not isinstance(peer_raw, bytes):
        raise InviteError("the invite's peer id is not bytes")
    peer_id = base58.b58encode(peer_raw).decode("ascii")
    if not is_valid_peer_id(peer_id):
        raise InviteError("the invite's peer id is not a valid libp2p peer id")
    if not isinstance(raw_addrs, list) or not raw_addrs:
        raise InviteError("the invite holds no address to dial")
    if len(raw_addrs) > INVITE_MAX_ADDRS:
        raise InviteError(f"the invite holds {len(raw_addrs)} addresses; at most {INVITE_MAX_ADDRS}")
    addrs: list[str] = []
    for i, raw in enumerate(raw_addrs):
        try:
            if not isinstance(raw, bytes):
                raise TypeError("not bytes")
            ma = str(Multiaddr(raw))
        except Exception as exc:  # noqa: BLE001
            raise InviteError(f"the invite's address #{i + 1} is not a valid multiaddr ({exc})") from None
        # an address through a relay names the relay (<addr>/p2p/<relay>/p2p-circuit); any other
        # peer id in an address is refused
        relay_part = ma.rpartition("/p2p/")[2].removesuffix("/p2p-circuit") if ma.endswith("/p2p-circuit") else None
        inner = ma.removesuffix("/p2p-circuit").rpartition("/p2p/")[0] if relay_part is not None else ma
        if ("/p2p/" in inner or "/ipfs/" in inner or "/p2p-circuit" in inner
                or (relay_part is not None and not is_valid_peer_id(relay_part))):
            raise InviteError(f"the invite's address #{i + 1} carries its own peer id: {ma}")
        addrs.append(f"{ma}/p2p/{peer_id}")
    return Invite(key=key, network=network, peer_id=peer_id, addrs=tuple(addrs))


def reachable_first(addrs: tuple[str, ...] | list[str], timeout_s: float = 2.0) -> list[str]:
    """``addrs`` reordered so those whose TCP port accepts a connection come first (the inviting
    order kept within each group).

    Why: a kept peer holds one address (the last one given wins), and an invite lists every
    interface of the inviter — a Docker bridge or a loopback address is useless from another
    machine. A plain TCP connect (closed at once, before any handshake) tells which to keep."""
    import socket

    ok: list[str] = []
    rest: list[str] = []
    for addr in addrs:
        parts = addr.split("/")
        target: tuple[str, int] | None = None
        if len(parts) > 4 and parts[1] in ("ip4", "ip6", "dns", "dns4", "dns6") and parts[3] == "tcp":
            try:
                target = (parts[2], int(parts[4]))
            except ValueError:
                target = None
        reached = False
        if target is not None:
            try:
                with socket.create_connection(target, timeout=timeout_s):
                    reached = True
            except OSError:
                reached = False
        (ok if reached else rest).append(addr)
    return ok + rest
