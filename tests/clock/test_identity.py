from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from p2p.identity import Identity, IdentityError, verify_signature


def test_sign_verify_roundtrip() -> None:
    ident = Identity.generate()
    assert ident.peer_id_str.startswith("12D3KooW")
    assert ident.peer_id_str == ident.peer_id.to_base58()
    sig = ident.sign(b"hello")
    assert verify_signature(ident.peer_id_str, b"hello", sig)
    assert not verify_signature(ident.peer_id_str, b"hellO", sig)
    other = Identity.generate()
    assert not verify_signature(other.peer_id_str, b"hello", sig)


@pytest.mark.parametrize("peer_id", ["", "x", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
                                     "12D3KooW", "0OIl", "12D3KooW" + "1" * 44])
def test_verify_rejects_malformed_peer_ids(peer_id: str) -> None:
    assert not verify_signature(peer_id, b"x", b"\0" * 64)


def test_verify_rejects_malformed_inputs() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"x")
    assert not verify_signature(ident.peer_id_str, b"x", sig[:63])
    assert not verify_signature(ident.peer_id_str, b"x", b"")
    assert not verify_signature(None, b"x", sig)  # type: ignore[arg-type]
    assert not verify_signature(ident.peer_id_str, "x", sig)  # type: ignore[arg-type]
    assert not verify_signature(ident.peer_id_str, b"x", "s" * 64)  # type: ignore[arg-type]


def test_load_or_create_is_stable_and_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "missing" / "dir"
    first = Identity.load_or_create(data_dir)
    key = data_dir / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    second = Identity.load_or_create(data_dir)
    assert second.peer_id_str == first.peer_id_str
    assert verify_signature(first.peer_id_str, b"m", second.sign(b"m"))
    # the file is the libp2p protobuf form, readable by libp2p itself
    assert ID.from_pubkey(deserialize_private_key(key.read_bytes()).get_public_key()) == first.peer_id
    assert [p.name for p in data_dir.iterdir()] == ["identity.key"]  # no temp files left


def test_corrupt_key_file_is_an_error_and_left_alone(tmp_path: Path) -> None:
    key = tmp_path / "identity.key"
    key.write_bytes(b"\x08\x01\x12\x05short")
    os.chmod(key, 0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        Identity.load_or_create(tmp_path)
    assert key.read_bytes() == b"\x08\x01\x12\x05short"
    key.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(IdentityError):
        Identity.load_or_create(tmp_path)


def test_reads_go_libp2p_64_byte_form(tmp_path: Path) -> None:
    ident = Identity.generate()
    seed = ident.key_pair.private_key.to_bytes()
    pub = ident.key_pair.public_key.to_bytes()
    # protobuf PrivateKey{Type=Ed25519(1), Data=seed‖pub}
    (tmp_path / "identity.key").write_bytes(b"\x08\x01\x12\x40" + seed + pub)
    os.chmod(tmp_path / "identity.key", 0o600)
    assert Identity.load_or_create(tmp_path).peer_id_str == ident.peer_id_str
