"""Wire format of the content exchange (``/ipfs-accelerate/content/1.0.0``): model blocks by CID.

One stream carries any number of rounds. In each round the puller sends one ``want`` frame
(CBOR ``{"t": "want", "root": <cid>, "cids": [<cid>, ...]}``: the blocks it wants, all under
the DAG of ``root``, a model's directory CID that the server advertises), and the server answers
with exactly one block frame per wanted CID, in the order asked:

    block frame = status (1 byte: 0 = here, 1 = not here) || cid length (1 byte) || cid || bytes

The block frame is binary, not CBOR: a 256 KiB leaf travels as itself, with no re-encoding or
copy on either side. The puller trusts nothing in it: every block is hashed against the CID it
asked for (p2p.content.exchange), and a frame for another CID is a protocol error.

Why a protocol of ours and not py-libp2p 0.8.1's Bitswap is said in docs/architecture.md
("Pulling a model").
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2

from p2p.protocols.wire import MAX_CID_BYTES, WireError

CONTENT_PROTOCOL = "/ipfs-accelerate/content/1.0.0"
MAX_WANT = 256  # CIDs in one want frame
HAVE = 0
DONT_HAVE = 1


@dataclass(frozen=True, slots=True)
class Want:
    """One round's request: blocks under the DAG of ``root``."""

    root: bytes
    cids: list[bytes]


def _cid(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or not 2 <= len(value) <= MAX_CID_BYTES:
        raise WireError(f"malformed want: {what} is not a binary CID of 2 to {MAX_CID_BYTES} bytes")
    return value


def encode_want(want: Want) -> bytes:
    return cbor2.dumps({"t": "want", "root": want.root, "cids": list(want.cids)})


def decode_want(data: bytes) -> Want:
    """A want frame, validated: WireError on anything else."""
    try:
        raw = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise WireError(f"malformed want: not CBOR ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("t") != "want" or set(raw) != {"t", "root", "cids"}:
        raise WireError("malformed want: expected {t: 'want', root, cids}")
    cids = raw["cids"]
    if not isinstance(cids, list) or not 1 <= len(cids) <= MAX_WANT:
        raise WireError(f"malformed want: cids must be a list of 1 to {MAX_WANT} CIDs")
    return Want(_cid(raw["root"], "root"), [_cid(c, f"cids[{i}]") for i, c in enumerate(cids)])


def encode_block(cid: bytes, block: bytes | None) -> bytes:
    head = bytes((HAVE if block is not None else DONT_HAVE, len(cid)))
    return head + cid + block if block is not None else head + cid


def decode_block(frame: bytes) -> tuple[bytes, bytes | None]:
    """(cid, block bytes or None when the server does not have it); WireError if malformed."""
    if len(frame) < 4:
        raise WireError("malformed block frame: too short")
    status, n = frame[0], frame[1]
    if status not in (HAVE, DONT_HAVE) or not 2 <= n <= MAX_CID_BYTES or len(frame) < 2 + n:
        raise WireError("malformed block frame: bad status or CID length")
    cid = bytes(frame[2:2 + n])
    if status == DONT_HAVE:
        if len(frame) != 2 + n:
            raise WireError("malformed block frame: a not-here frame carries bytes")
        return cid, None
    return cid, bytes(frame[2 + n:])
