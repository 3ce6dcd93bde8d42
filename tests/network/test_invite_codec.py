"""Invites and the data dir's network key, as pure logic: round trips, and every malformed
invite refused with an error that names what is wrong."""

from __future__ import annotations

import base64
import hashlib
import secrets
import stat
from pathlib import Path

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.identity import Identity
from p2p.net.psk import (
    INVITE_MAX_ADDRS,
    Invite,
    InviteError,
    PskError,
    decode_invite,
    encode_invite,
    format_swarm_key,
    load_or_create_swarm_key,
    load_swarm_key,
    reachable_first,
    store_swarm_key,
)

PEER = Identity.generate().peer_id_str
keys = st.binary(min_size=32, max_size=32).filter(lambda k: k != bytes(32))
names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
ip4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
addrs = st.lists(
    st.one_of(
        st.builds(lambda ip, port: f"/ip4/{ip}/tcp/{port}", ip4, st.integers(1, 65535)),
        st.builds(lambda port: f"/ip6/::1/tcp/{port}", st.integers(1, 65535)),
        st.builds(lambda port: f"/dns4/node.example.org/tcp/{port}", st.integers(1, 65535)),
    ),
    min_size=1, max_size=INVITE_MAX_ADDRS, unique=True,
)


def _raw(payload: bytes) -> str:
    """An invite line around ``payload`` with a correct checksum (to test the content checks)."""
    body = payload + hashlib.sha256(payload).digest()[:4]
    return "ipfsacc1:" + base64.b32encode(body).decode().lower().rstrip("=")


@settings(max_examples=200, deadline=None)
@given(keys, names, addrs)
def test_an_invite_round_trips(key: bytes, network: str, raw: list[str]) -> None:
    line = encode_invite(key, network, [f"{a}/p2p/{PEER}" for a in raw])
    assert line.startswith("ipfsacc1:") and "\n" not in line and " " not in line
    inv = decode_invite(line)
    assert inv == Invite(key=key, network=network, peer_id=PEER, addrs=tuple(f"{a}/p2p/{PEER}" for a in raw))
    # what a terminal or a reader does to a line: upper case, wrapped, surrounding blanks
    assert decode_invite(line.upper()) == inv
    assert decode_invite("  " + line[:30] + "\n" + line[30:] + "\n") == inv


@settings(max_examples=300, deadline=None)
@given(keys, addrs, st.data())
def test_any_one_changed_character_is_refused(key: bytes, raw: list[str], data: st.DataObject) -> None:
    line = encode_invite(key, "default", [f"{a}/p2p/{PEER}" for a in raw])
    i = data.draw(st.integers(len("ipfsacc1:"), len(line) - 1))
    c = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz234567").filter(lambda c: c != line[i]))
    bad = line[:i] + c + line[i + 1:]
    try:
        got = decode_invite(bad)
    except InviteError:
        return  # the 4-byte checksum caught the flipped bits
    # only the unused padding bits of the last character changed: the very same invite
    assert got == decode_invite(line) and i == len(line) - 1


@settings(max_examples=100, deadline=None)
@given(keys, addrs, st.data())
def test_a_truncated_invite_is_refused(key: bytes, raw: list[str], data: st.DataObject) -> None:
    line = encode_invite(key, "default", [f"{a}/p2p/{PEER}" for a in raw])
    cut = data.draw(st.integers(0, len(line) - 1))
    with pytest.raises(InviteError):
        decode_invite(line[:cut])


GOOD = encode_invite(bytes(range(1, 33)), "default", [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"])


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("hello", "must start with 'ipfsacc1:'"),
        ("/ip4/127.0.0.1/tcp/4001", "must start with 'ipfsacc1:'"),
        ("ipfsacc2:" + GOOD.split(":")[1], "version '2' is not supported"),
        ("ipfsacc:" + GOOD.split(":")[1], "version '(none)'"),
        (GOOD[:20] + "!" + GOOD[21:], "'!' at position 20"),
        (GOOD[:20] + "1" + GOOD[21:], "'1' at position 20"),
        (GOOD[:-1], "cut short"),
        (GOOD[:-4], "checksum does not match"),
        ("ipfsacc1:" + "a" * 5000, "at most 4096"),
        ("ipfsacc1:aaaa", "holds no data"),
        (_raw(b"\xff\x00"), "does not decode"),
        (_raw(dag_cbor.encode([1, 2])), "wrong fields"),
        (_raw(dag_cbor.encode({"k": b"x" * 31, "n": "default", "p": b"", "a": []})), "must be 32 bytes"),
        (_raw(dag_cbor.encode({"k": bytes(32), "n": "default", "p": b"", "a": []})), "all zeros"),
        (_raw(dag_cbor.encode({"k": b"k" * 32, "n": "bad name!", "p": b"", "a": []})), "network name is invalid"),
        (_raw(dag_cbor.encode({"k": b"k" * 32, "n": "default", "p": b"nope", "a": []})), "not a valid libp2p peer id"),
        (_raw(dag_cbor.encode({"k": b"k" * 32, "n": "default", "p": __import__("base58").b58decode(PEER), "a": []})),
         "no address"),
        (_raw(dag_cbor.encode({"k": b"k" * 32, "n": "default", "p": __import__("base58").b58decode(PEER),
                               "a": [b"\x99\x99"]})), "address #1 is not a valid multiaddr"),
    ],
)
def test_a_malformed_invite_names_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(InviteError) as info:
        decode_invite(text)
    assert needle in str(info.value), str(info.value)


def test_encode_refuses_what_would_make_a_useless_invite() -> None:
    with pytest.raises(InviteError, match="random 32-byte"):
        encode_invite(bytes(32), "default", [f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"])
    with pytest.raises(InviteError, match="at least one address"):
        encode_invite(b"k" * 32, "default", [])
    other = Identity.generate().peer_id_str
    with pytest.raises(InviteError, match="names one peer"):
        encode_invite(b"k" * 32, "default", [f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/2/p2p/{other}"])


def test_the_data_dir_key_is_created_once_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "d" / "swarm.key"
    key, created = load_or_create_swarm_key(path)
    assert created and len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_swarm_key(path) == (key, False)
    path.write_text("garbage\n")
    with pytest.raises(PskError, match="expected 3 lines"):
        load_or_create_swarm_key(path)
    assert path.read_text() == "garbage\n"  # a corrupt key is reported, not silently replaced


def test_storing_another_key_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    old = secrets.token_bytes(32)
    path.write_text(format_swarm_key(old))
    new = secrets.token_bytes(32)
    assert store_swarm_key(path, old) is None  # the same key: nothing to do
    backup = store_swarm_key(path, new)
    assert backup is not None and load_swarm_key(backup) == old
    assert load_swarm_key(path) == new and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["swarm.key", backup.name])  # no temp left


def test_reachable_addresses_come_first(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead = closed.getsockname()[1]  # bound, not listening: refused
            got = reachable_first([f"/ip4/127.0.0.1/tcp/{dead}/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}"],
                                  timeout_s=2)
    assert got == [f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/{dead}/p2p/{PEER}"]
