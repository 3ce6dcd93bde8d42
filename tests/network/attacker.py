"""A hostile peer for tests: serves forged clock events to a victim, then exits.

    python attacker.py VICTIM_MULTIADDR WORKFLOW_ID

Event A carries a tampered signature; event B is validly signed by the attacker but reports
a ``task.done`` for a task the attacker never claimed. Prints one JSON line with their CIDs.
"""

from __future__ import annotations

import json
from pathlib import Path
import os
import sys

import trio

from p2p.clock.cids import block_cid, cid_raw
from p2p.clock.event import create_event
from p2p.config import NetworkConfig
from p2p.identity import Identity
from p2p.net import load_swarm_key, open_host
from p2p.protocols.wire import BlocksReply, BlocksRequest, HeadsReply, blocks_protocol, decode_request, encode


async def main(victim: str, workflow_id: str) -> None:
    me = Identity.generate()
    cancel = create_event(me, [], 1, [{"op": "workflow.cancel", "workflow_id": workflow_id}])
    i = cancel.data.rindex(cancel.sig)
    tampered = cancel.data[:i] + bytes([cancel.sig[0] ^ 0xFF]) + cancel.data[i + 1 :]
    bad_sig = (cid_raw(block_cid(tampered)), tampered)
    forged = create_event(me, [], 1, [{"op": "task.done", "task_id": f"{workflow_id}/0", "attempt": 1,
                                        "result": {"embedding_f32": b"\x00" * 1536}}])
    good_sig = (cid_raw(forged.cid), forged.data)
    blocks = dict([bad_sig, good_sig])

    async def serve(peer: str, payload: bytes) -> bytes:
        req = decode_request(payload)
        if isinstance(req, BlocksRequest):
            return encode(BlocksReply(blocks=[(c, blocks[c]) for c in req.cids if c in blocks]))
        return encode(HeadsReply(heads=list(blocks), events=2))

    cfg = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], mdns=False)
    # an admitted attacker: it holds the network key the harness gives every node
    psk_path = os.environ.get("IPFS_ACCELERATE_NETWORK__PSK_FILE")
    psk = load_swarm_key(Path(psk_path)) if psk_path else None
    async with open_host(me.key_pair, cfg, psk) as net:
        net.set_request_handler(blocks_protocol(cfg.network), serve)
        await net.connect(victim)
        print(json.dumps({"peer": me.peer_id_str, "bad_sig": str(block_cid(tampered)), "forged_done": str(forged.cid)}), flush=True)
        await trio.sleep(4)


if __name__ == "__main__":
    from mcp_server.log import configure_logging

    configure_logging("warning")
    trio.run(main, sys.argv[1], sys.argv[2])
