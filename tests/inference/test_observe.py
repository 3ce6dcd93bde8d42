"""inference.observe: batches that ran before anyone listened reach the first listener."""

from __future__ import annotations

from inference import observe


def test_batches_before_the_first_listener_are_handed_to_it() -> None:
    observe._backlog.clear()
    saved, observe._listeners[:] = list(observe._listeners), []
    try:
        observe.record_batch(("/models/org/warm-model", "embedding", "onnx"), 1, 0.5)  # a warm-up, nobody listening
        first: list[observe.BatchRecord] = []
        stop = observe.listen(first.append)
        observe.record_batch(("/models/org/warm-model", "embedding", "onnx"), 8, 0.1)
        second: list[observe.BatchRecord] = []
        stop2 = observe.listen(second.append)
        observe.record_batch(("/models/org/warm-model", "embedding", "onnx"), 4, 0.1)
        stop(), stop2()
        assert [(r.model, r.size) for r in first] == [("warm-model", 1), ("warm-model", 8), ("warm-model", 4)]
        assert [r.size for r in second] == [4]  # the backlog went to the first listener only
        for i in range(observe.BACKLOG + 10):  # bounded while nobody listens
            observe.record_batch("lane", i, 0.0)
        assert len(observe._backlog) == observe.BACKLOG
    finally:
        observe._backlog.clear()
        observe._listeners[:] = saved
