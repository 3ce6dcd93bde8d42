"""Pre-shared swarm keys (libp2p private networks).

The file format is the one go-libp2p, kubo and ipfs-cluster use::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

Only peers holding the same 32-byte key can complete a connection: py-libp2p wraps every raw TCP
connection in Salsa20 with this key before the Noise handshake. Note that py-libp2p's pnet is
*not* wire-compatible with go-libp2p (8-byte nonce, Salsa20 instead of XSalsa20), so a
Python node and a Go node with the same key still cannot talk. QUIC connections bypass pnet in
py-libp2p 0.8.1, so a PSK and QUIC together are refused by :func:`p2p.net.host.open_host`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from p2p.net.errors import PskError

PSK_HEADER = "/key/swarm/psk/1.0.0/"
PSK_ENCODING = "/base16/"
PSK_BYTES = 32


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
