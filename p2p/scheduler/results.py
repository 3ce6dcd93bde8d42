"""How task results are stored in the clock, and read back.

Embeddings travel as little-endian float32 bytes (the engine's own precision, so nothing is
lost): a 384-dim vector is 1.5 KiB instead of ~3.5 KiB of CBOR float64s, and encoding bytes is
~30x faster with the dag-cbor library than encoding hundreds of floats.
"""

from __future__ import annotations

from typing import Any


_PACKED = "embedding_f32"


def pack_result(output: dict[str, Any]) -> dict[str, Any]:
    """Clock form of one output as the engine returned it (JSON-shaped, or numpy inside)."""
    import numpy as np  # lazily: an idle node never pays for numpy

    out = dict(output)
    emb = out.pop("embedding", None)
    if emb is not None:
        out[_PACKED] = np.asarray(emb, dtype="<f4").tobytes()
    return out


def unpack_result(stored: dict[str, Any]) -> dict[str, Any]:
    """JSON form of a stored result (what tools return)."""
    import numpy as np  # lazily: an idle node never pays for numpy

    out = dict(stored)
    packed = out.pop(_PACKED, None)
    if packed is not None:
        out["embedding"] = np.frombuffer(packed, dtype="<f4").astype(float).tolist()
    return out
