"""The node's libp2p Ed25519 identity: one key file, one stable peer id.

The key file holds the libp2p protobuf-serialized private key (``PrivateKey{Type=Ed25519,
Data=...}``). py-libp2p writes the 32-byte seed as ``Data``; go-libp2p and js-libp2p write
seed‖public key (64 bytes). Both are read, so a key exported from another implementation works;
we write py-libp2p's own form so ``libp2p.crypto.serialization.deserialize_private_key`` reads it.

Why the care:
- created atomically (write a temp file 0600, fsync, hard-link into place): a crash or a second
  process starting at the same moment never leaves a half-written key or two identities;
- a corrupt file is an error, never silently replaced: replacing it would change the peer id and
  orphan every claim this node has signed.

``verify_signature`` takes the public key out of the peer id itself (identity multihash of the
protobuf public key), so a signed clock event needs no key distribution. Only the canonical
Ed25519 form ``base58(00 24 08 01 12 20 <32 bytes>)`` is accepted: one key, one author string.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
import structlog
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair, KeyType, PrivateKey
from libp2p.peer.id import ID
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

log = structlog.get_logger("p2p.identity")

KEY_FILE_NAME = "identity.key"

# identity multihash (0x00, length 36) of the protobuf PublicKey{Type=Ed25519(1), Data=<32 bytes>}
_ED25519_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"
_ED25519_PEER_ID_LEN = len(_ED25519_PEER_ID_PREFIX) + 32


class IdentityError(ValueError):
    """The identity key file exists but cannot be used (corrupt, wrong key type)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The node's key pair and the peer id derived from it."""

    key_pair: KeyPair
    peer_id: ID
    peer_id_str: str

    @classmethod
    def _from_private_key(cls, private_key: PrivateKey) -> Identity:
        public_key = private_key.get_public_key()
        peer_id = ID.from_pubkey(public_key)
        return cls(KeyPair(private_key, public_key), peer_id, peer_id.to_base58())

    @classmethod
    def generate(cls) -> Identity:
        """A fresh in-memory identity (tests, throwaway nodes)."""
        return cls._from_private_key(Ed25519PrivateKey.new())

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """Load ``<data_dir>/identity.key``, creating it (0600, atomically) on first start."""
        data_dir = Path(data_dir).expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / KEY_FILE_NAME
        if not path.exists():
            created = cls.generate()
            if _create_exclusive(path, created.key_pair.private_key.serialize()):
                log.info("identity created", peer_id=created.peer_id_str, path=str(path))
                return created
            # another process won the race: fall through and load its key
        return cls._load(path)

    @classmethod
    def load_existing(cls, data_dir: Path) -> Identity | None:
        """The identity in ``data_dir``, or None when it has none yet (nothing is created: a
        command that only reads a data dir, such as ``p2p invite``, must not mint a peer)."""
        path = Path(data_dir).expanduser() / KEY_FILE_NAME
        if not path.exists():
            return None
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> Identity:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("identity key file readable by others; tightening to 0600",
                        path=str(path), mode=oct(mode))
            os.chmod(path, 0o600)
        raw = path.read_bytes()
        try:
            private_key = _parse_private_key(raw)
        except Exception as exc:  # protobuf/nacl raise assorted types
            raise IdentityError(
                f"identity key file {path} is corrupt ({exc}); it was left untouched. "
                "Restore it from a backup, or move it away to start as a new peer."
            ) from exc
        return cls._from_private_key(private_key)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) over ``data``."""
        return self.key_pair.private_key.sign(data)


def _parse_private_key(raw: bytes) -> PrivateKey:
    pb = PrivateKey.deserialize_from_protobuf(raw)
    if pb.key_type != KeyType.Ed25519.value:
        raise ValueError(f"key type {pb.key_type} is not Ed25519")
    data = bytes(pb.data)
    if len(data) == 64:  # go/js form: seed ‖ public key; check they belong together
        seed, public = data[:32], data[32:]
        if bytes(SigningKey(seed).verify_key) != public:
            raise ValueError("public half does not match the private seed")
        data = seed
    if len(data) != 32:
        raise ValueError(f"Ed25519 key data is {len(data)} bytes, expected 32 or 64")
    return Ed25519PrivateKey.from_bytes(data)


def _create_exclusive(path: Path, content: bytes) -> bool:
    """Write ``content`` to ``path`` only if it does not exist yet; False if someone else did."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # umask cannot widen it, but be explicit
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists (no clobber)
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=4096)
def _verify_key_for(peer_id_str: str) -> VerifyKey | None:
    """Public key inside a canonical Ed25519 peer id, or None (cached: authors repeat)."""
    try:
        raw = base58.b58decode(peer_id_str)
        if len(raw) != _ED25519_PEER_ID_LEN or not raw.startswith(_ED25519_PEER_ID_PREFIX):
            return None
        if base58.b58encode(raw).decode() != peer_id_str:
            return None  # non-canonical spelling of the same key
        return VerifyKey(raw[len(_ED25519_PEER_ID_PREFIX):])
    except Exception:
        return None


def is_valid_peer_id(peer_id_str: str) -> bool:
    """True for a canonical base58 Ed25519 peer id ('12D3KooW...')."""
    return isinstance(peer_id_str, str) and _verify_key_for(peer_id_str) is not None


def verify_signature(peer_id_str: str, data: bytes, sig: bytes) -> bool:
    """Whether ``sig`` is ``peer_id_str``'s Ed25519 signature over ``data``; False on bad input."""
    if not isinstance(peer_id_str, str) or not isinstance(sig, bytes) or len(sig) != 64:
        return False
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return False
    key = _verify_key_for(peer_id_str)
    if key is None:
        return False
    try:
        key.verify(bytes(data), sig)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
