"""The stuck-node diagnostics of p2p.taskdump: where every task waits, and slow loop steps."""

from __future__ import annotations

import time

import trio
from structlog.testing import capture_logs

from p2p.taskdump import SlowSteps, dump_tasks


async def _parked_on_an_event(ev: trio.Event) -> None:
    await ev.wait()


async def test_dump_names_each_task_and_where_it_waits() -> None:
    ev = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_parked_on_an_event, ev)
        await trio.sleep(0.01)
        tasks = dump_tasks()
        ev.set()
    parked = [t for t in tasks if t["task"].endswith("_parked_on_an_event")]
    assert len(parked) == 1, [t["task"] for t in tasks]
    stack = parked[0]["stack"]
    assert "_parked_on_an_event" in stack[0] and any("wait" in frame for frame in stack[1:]), stack


async def test_a_step_that_holds_the_loop_is_logged_and_a_quick_one_is_not() -> None:
    instrument = SlowSteps(0.1)
    trio.lowlevel.add_instrument(instrument)
    try:
        with capture_logs() as logs:
            await trio.sleep(0)  # a quick step
            time.sleep(0.25)  # holds the loop: the step that ends at the next checkpoint
            await trio.sleep(0)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    slow = [e for e in logs if e["event"] == "slow event-loop step"]
    assert len(slow) == 1, logs
    assert slow[0]["ms"] >= 250 and "test_a_step_that_holds_the_loop" in slow[0]["task"]
