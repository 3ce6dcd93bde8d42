"""The network layer: one py-libp2p host per process (TCP + Noise + Yamux, gossipsub, streams).

Public API::

    async with open_host(key_pair, NetworkConfig(...), psk=load_swarm_key(path)) as net:
        await net.connect("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
        net.set_request_handler("/ipfs-accelerate/default/blocks/1.0.0", serve_blocks)
        reply = await net.request(peer_id, "/ipfs-accelerate/default/blocks/1.0.0", payload)
        async with net.subscribe(topic) as messages:
            async for from_peer, data in messages: ...
"""

from p2p.net.errors import (
    DialError,
    describe,
    NetConfigError,
    NetError,
    PeerNotAllowedError,
    PskError,
    ProtocolRefused,
    RequestError,
)
from p2p.net.events import GossipMessage, PeerEvent, PeerEventKind
from p2p.net.framing import (
    FrameError,
    FrameTooLarge,
    MalformedFrame,
    StreamEnded,
    TruncatedFrame,
    encode_frame,
    iter_frames,
    read_frame,
    write_frame,
)
from p2p.net.host import NetHost, RequestHandler, StreamHandler, open_host
from p2p.net.streams import FramedStream
from p2p.net.pacing import Debouncer, Pacer
from p2p.net.ratelog import PeerLogLimiter, peer_log
from p2p.net.psk import format_swarm_key, generate_swarm_key, load_swarm_key, parse_swarm_key

__all__ = [
    "Debouncer",
    "DialError",
    "FrameError",
    "FrameTooLarge",
    "FramedStream",
    "GossipMessage",
    "MalformedFrame",
    "NetConfigError",
    "NetError",
    "NetHost",
    "Pacer",
    "PeerEvent",
    "PeerEventKind",
    "PeerLogLimiter",
    "PeerNotAllowedError",
    "PskError",
    "ProtocolRefused",
    "RequestError",
    "RequestHandler",
    "StreamEnded",
    "StreamHandler",
    "TruncatedFrame",
    "describe",
    "encode_frame",
    "format_swarm_key",
    "generate_swarm_key",
    "iter_frames",
    "load_swarm_key",
    "open_host",
    "parse_swarm_key",
    "peer_log",
    "read_frame",
    "write_frame",
]
