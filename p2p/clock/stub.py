"""A pruned event's stub: what the DAG still needs of an event whose block was deleted.

Why (docs/compaction.md §5–§6): once every op of an event is about workflows this peer dropped
after a verified compaction, its block is dead weight — its ops are skipped on every restart, and
the SQLite file keeps its bytes forever. The event cannot vanish altogether, though: later events
name it as a parent, and the fold judges "is X before Y" with each event's version vector. So a
pruned event keeps a stub:

``{"v": 1, "t": "stub", "cid", "author", "seq", "height", "parents": [CID...], "vv": {author: seq},
"about": [workflow id...]}``

- ``parents`` and ``height`` keep the DAG walkable (a forked author's ancestry walk passes through
  a pruned event);
- ``vv`` is the event's version vector as the fold computed it, so a peer that never held the
  history (a joiner) folds the events above the stub with the same vectors as everyone else;
- ``about`` names the dropped workflows its ops were about, so a joiner knows which compacted
  workflows to adopt (by their snapshots) before it folds anything above.

Every field is a function of the event and its past, so two honest peers give byte-identical
stubs for one CID (DAG-CBOR is canonical): a joiner that cannot verify a stub (it has not got the
block) adopts it when ``clock.checkpoint_quorum`` peers give the same bytes — or takes the
event's block from a peer that still holds it, which verifies itself.

Pure data and its encoding; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multiformats import CID

from p2p.clock import codec
from p2p.clock.cids import cid_raw

STUB_VERSION = 1
MAX_STUB_PARENTS = 1024  # the wire's heads cap: an event names at most this many parents
MAX_STUB_AUTHORS = 4096  # authors in one version vector
MAX_STUB_ABOUT = 256  # workflows one event's ops are about (max_ops_per_event's default)
MAX_STUB_BYTES = 256 << 10


class StubError(ValueError):
    """Bytes that are not a well-formed stub."""


@dataclass(frozen=True, slots=True)
class Stub:
    """A pruned event: its place in the DAG without its ops (see the module doc)."""

    cid: CID
    author: str
    seq: int
    height: int
    parents: tuple[CID, ...]
    vv: dict[str, int]
    about: tuple[str, ...]

    def encode(self) -> bytes:
        return codec.encode({"v": STUB_VERSION, "t": "stub", "cid": self.cid, "author": self.author, "seq": self.seq,
                             "height": self.height, "parents": list(self.parents),
                             "vv": dict(self.vv), "about": list(self.about)})

    @property
    def key(self) -> bytes:
        return cid_raw(self.cid)


def decode_stub(data: bytes) -> Stub:
    """Parse and bound a stub (a peer's bytes: every field checked; StubError otherwise)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_STUB_BYTES:
        raise StubError("stub missing or too large")
    try:
        node = codec.decode(bytes(data))
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a malformed stub
        raise StubError(f"stub is not DAG-CBOR: {exc}") from exc
    if not isinstance(node, dict) or node.get("v") != STUB_VERSION or node.get("t") != "stub":
        raise StubError("not a stub of a known version")
    cid, author, seq, height = node.get("cid"), node.get("author"), node.get("seq"), node.get("height")
    parents, vv, about = node.get("parents"), node.get("vv"), node.get("about")
    if not isinstance(cid, CID) or not isinstance(author, str) or not 0 < len(author) <= 128:
        raise StubError("stub needs a CID and an author")
    if type(seq) is not int or type(height) is not int or seq < 1 or height < 0:
        raise StubError("stub needs a seq >= 1 and a height >= 0")
    if not isinstance(parents, list) or len(parents) > MAX_STUB_PARENTS or not all(isinstance(p, CID) for p in parents):
        raise StubError("stub parents must be a list of CIDs")
    if (not isinstance(vv, dict) or len(vv) > MAX_STUB_AUTHORS
            or not all(isinstance(a, str) and type(s) is int and s >= 1 for a, s in vv.items())):
        raise StubError("stub vv must map authors to seqs >= 1")
    if vv.get(author) != seq:
        raise StubError("stub vv must hold its own author at its seq")
    if (not isinstance(about, list) or len(about) > MAX_STUB_ABOUT
            or not all(isinstance(w, str) and 0 < len(w) <= 128 for w in about)):
        raise StubError("stub about must be a list of workflow ids")
    if (height == 0) != (not parents):
        raise StubError("a stub's height is 0 exactly when it has no parents")
    stub = Stub(cid, author, seq, height, tuple(parents), dict(vv), tuple(about))
    if stub.encode() != bytes(data):
        raise StubError("stub is not canonical")
    return stub


def stub_key(data: bytes) -> bytes:
    """The binary CID a stub's bytes describe (trusted bytes: our own table)."""
    return cid_raw(codec.decode(data)["cid"])


