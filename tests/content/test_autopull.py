"""Auto-pull's choice (which model queued work needs) and its back-off, with an injected clock."""

from __future__ import annotations


from p2p.content.autopull import RETRY_S, AutoPuller, Want, wanted
from p2p.scheduler.ops import submitter_prefix
from p2p.scheduler.state import State, apply_event

ME = "me"


def _submit(author: str, n: int, model: str, tag: str, cid: str | None = "bafy-x", k: int = 0) -> dict:
    spec = {"model": model, **({"model_cid": cid} if cid else {})}
    return {"op": "workflow.submit", "workflow_id": submitter_prefix(author) + f"{k:016x}", "name": "w", "priority": 5,
            "tag": tag, "tasks": [{**spec, "input": f"{model}-{i}"} for i in range(n)]}


def _state(*subs: tuple[str, dict]) -> State:
    st = State()
    for i, (author, op) in enumerate(subs):
        apply_event(st, bytes([i + 1]) * 32, author, 1, [op], parents=[], seq=1)
    return st


def test_the_model_most_queued_tasks_need_comes_first_and_only_what_this_peer_may_run() -> None:
    st = _state(("A", _submit("A", 3, "m1", "p2p-eligible", k=1)),
                ("B", _submit("B", 5, "m2", "p2p-only", k=2)),
                ("C", _submit("C", 9, "m3", "local-only", k=3)),  # only C may run it
                ("D", _submit("D", 7, "m4", "p2p-eligible", cid=None, k=4)))  # unpinned: nothing to verify
    got = wanted(st, list(st.tasks), ME, set(), lambda m, c: True)
    assert got == [Want("m2", "bafy-x", 5), Want("m1", "bafy-x", 3)]
    assert wanted(st, list(st.tasks), ME, {"m2"}, lambda m, c: True) == [Want("m1", "bafy-x", 3)]
    assert wanted(st, list(st.tasks), ME, set(), lambda m, c: m == "m1") == [Want("m1", "bafy-x", 3)]
    mine = _state((ME, _submit(ME, 4, "m5", "p2p-only", k=5)))
    assert wanted(mine, list(mine.tasks), ME, set(), lambda m, c: True) == []  # never its own p2p-only work


async def test_a_failed_pull_is_not_retried_until_the_back_off_ends_and_a_busy_peer_pulls_nothing() -> None:
    now = [0.0]
    calls: list[str] = []
    busy = [False]

    async def pull(cid: str) -> None:
        calls.append(cid)
        if cid == "bad":
            raise RuntimeError("over max_model_bytes")

    puller = AutoPuller(wants=lambda: [Want("big", "bad", 9), Want("ok", "good", 1)], idle=lambda: not busy[0],
                        pull=pull, now=lambda: now[0])
    assert await puller.once() == "good" and calls == ["bad", "good"]
    assert await puller.once() == "good" and calls == ["bad", "good", "good"]  # "bad" backs off
    now[0] = RETRY_S + 1
    await puller.once()
    assert calls[-2:] == ["bad", "good"]
    busy[0] = True
    n = len(calls)
    assert await puller.once() is None and len(calls) == n
