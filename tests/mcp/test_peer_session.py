"""The bounds of one peer MCP session (mcp_server.peer_mcp._Session), on a stream made of trio
memory channels in place of a libp2p stream (the same frames()/write_frame interface; the
process tests in tests/network/test_peer_mcp.py run it over libp2p): requests in flight are
capped (the next is not read until an answer goes out), a cancelled request frees its slot, an
idle session ends, and an answer too big for a frame becomes an error answer to that request."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from mcp_server.peer_mcp import _Session


class ChannelStream:
    """Frames in through a memory channel, frames out into a list."""

    def __init__(self, max_frame_bytes: int = 1 << 20) -> None:
        self.send, self._recv = trio.open_memory_channel[bytes](100)
        self.sent: list[bytes] = []
        self.max_frame_bytes = max_frame_bytes

    async def frames(self) -> Any:
        async for frame in self._recv:
            yield frame

    async def write_frame(self, data: bytes) -> None:
        self.sent.append(data)


def _request(i: int, method: str = "tools/call") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": {}}).encode()


async def _read(lines: Any, got: list[str]) -> None:
    async for line in lines:
        got.append(line)


async def test_requests_in_flight_are_capped_and_answers_free_them() -> None:
    stream = ChannelStream()
    session = _Session(stream, in_flight=3, idle_s=3600)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read, session, got)
        for i in range(5):
            await stream.send.send(_request(i))
        await stream.send.send(b'{"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}')
        await trio.testing.wait_all_tasks_blocked()
        assert [json.loads(x)["id"] for x in got] == [0, 1, 2]  # the 4th waits for an answer
        await session.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}) + "\n")
        await trio.testing.wait_all_tasks_blocked()
        assert [json.loads(x)["id"] for x in got] == [0, 1, 2, 3]
        # a cancelled request gets no answer: the cancel frees its slot
        await session.write(json.dumps({"jsonrpc": "2.0", "id": 0, "result": {}}) + "\n")
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 6  # request 4, then the notification (it takes no slot)
        await stream.send.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                           "params": {"requestId": 2}}).encode())
        await stream.send.send(_request(7))
        await trio.testing.wait_all_tasks_blocked()
        assert json.loads(got[-1])["id"] == 7 and len(got) == 8
        # ids MCP forbids take no slot (the id guard answers them); they never block the session
        await stream.send.send(b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"}')
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 9
        stream.send.close()
    assert [json.loads(x)["id"] for x in stream.sent] == [1, 0]


def test_idle_under_virtual_time() -> None:
    """Nothing in flight and no message for idle_s: the session's lines end (virtual time)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    stream = ChannelStream()
    got: list[str] = []

    async def run() -> tuple[float, float]:
        session = _Session(stream, in_flight=2, idle_s=600)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read, session, got)
            await stream.send.send(_request(1))
            await trio.sleep(5000)  # a request in flight: no idle limit while the peer waits
            assert len(got) == 1 and len(nursery.child_tasks) == 1
            answered = trio.current_time()
            await session.write(json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}}) + "\n")
        return answered, trio.current_time()

    answered, ended = trio.run(run, clock=clock)
    assert 600 <= ended - answered < 601


async def test_an_answer_over_the_frame_limit_becomes_an_error_answer() -> None:
    stream = ChannelStream(max_frame_bytes=4096)
    session = _Session(stream, in_flight=2, idle_s=3600)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read, session, got)
        await stream.send.send(_request(5))
        await trio.testing.wait_all_tasks_blocked()
        await session.write(json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"big": "x" * 10_000}}) + "\n")
        stream.send.close()
    (frame,) = stream.sent
    answer = json.loads(frame)
    assert answer["id"] == 5 and answer["error"]["code"] == -32603 and "over this link's frame limit" in answer["error"]["message"]
    assert len(frame) < 4096
