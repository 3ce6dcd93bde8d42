"""The seed's Python API: ``P2PWorkflowScheduler``, ``WorkflowTag`` and ``MerkleClock``.

Adapted to trio's structured concurrency, the scheduler is an async context manager **only**:
the node (its libp2p host, scheduler and control socket run in nurseries) lives exactly as long
as the ``async with`` block::

    async with P2PWorkflowScheduler(node_id="worker-01") as scheduler:
        workflow_id = await scheduler.submit_workflow({
            "name": "batch-inference",
            "tag": WorkflowTag.P2P_ELIGIBLE,
            "priority": 1,  # lower = higher priority
            "tasks": [{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "text1"}],
        })
        status = await scheduler.get_workflow_status(workflow_id)
        print(f"Progress: {status['completed']}/{status['total']}")

``P2PWorkflowScheduler(node_id=NAME)`` is the node ``ipfs-accelerate p2p start --node-id NAME``
runs: the same layered settings (configs/default.toml < ``config_file`` < ``IPFS_ACCELERATE_*``
< the ``settings`` argument), the same data dir (``<data_dir>/nodes/NAME``, one rule in
``p2p.settings.named_node_data_dir``), hence the same peer identity, and networking on.

Why no ``start()``/``stop()``: keeping a node running between two calls means leaving its
nurseries open across tasks, which trio forbids (a cancel scope entered in one task and exited
in another corrupts cancellation). Both raise an error that points to ``async with``.

This module is a user entry point, like the CLI, and resolves a node name exactly as the CLI
does, with the one layered loader (``p2p.settings``) both use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from p2p.clock import MerkleClock
from multiformats import CID
from p2p.config import NodeConfig
from p2p.node import Node
from p2p.settings import load_node_settings
from p2p.scheduler.ops import WorkflowTag

__all__ = ["MerkleClock", "P2PWorkflowScheduler", "SchedulerClock", "WorkflowTag"]

_ASYNC_WITH_ONLY = (
    "P2PWorkflowScheduler runs only inside `async with P2PWorkflowScheduler(...) as scheduler:`; "
    "start()/stop() across calls would keep the node's trio nurseries open between tasks"
)


class SchedulerClock:
    """The running node's ``MerkleClock``, seen through the scheduler that folds it.

    Why a view and not the clock itself: ``MerkleClock.update(other)`` only stores events; the
    workflow state is a fold the scheduler keeps in memory, so an update behind its back would
    change ``get_hash()`` while ``get_workflow_status`` stays stale. Every write through this view
    (``update``, ``append``) stores the events, folds them into the node's state and tells the
    network the heads moved. Reads (``get_hash``, ``heads``, ``len``, ``events``...) go straight
    to the clock, and a plain ``MerkleClock`` can ``update()`` from this view too.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def clock(self) -> MerkleClock:
        """The underlying clock (reads only: writing to it directly bypasses the fold)."""
        return self._node.clock

    def __getattr__(self, name: str) -> Any:  # heads, get_hash, has, get_event, _store, ...
        return getattr(self._node.clock, name)

    def __len__(self) -> int:
        return len(self._node.clock)

    def __repr__(self) -> str:
        return f"<SchedulerClock of {self._node.peer_id}: {len(self)} events, hash {self.get_hash()[:12]}>"

    def events(self) -> Iterator[Any]:
        return self._node.clock.events()

    def update(self, other: MerkleClock | SchedulerClock) -> list[Any]:
        """Pull every event ``other`` has that this clock lacks, and fold them into the state.

        Result blocks too large to travel inline are copied along when ``other`` holds them.
        Returns the events applied, in causal order.
        """
        source = other.clock if isinstance(other, SchedulerClock) else other
        if not isinstance(source, MerkleClock):
            raise TypeError(f"update() takes a MerkleClock, got {type(other).__name__}")
        clock = self._node.clock
        applied = clock.update(source)
        for ev in applied:
            for op in ev.ops:
                cid = op.get("result_cid") if isinstance(op, dict) and op.get("op") == "task.done" else None
                if isinstance(cid, CID) and not clock.has(cid):
                    data = source.get_block(cid)
                    if data is not None:
                        clock.add_raw_block(cid, data)
        if applied:
            sched = self._node.scheduler
            sched.ingest(applied)
            sched.local_event.fire()  # the heads moved: announce them to peers now
        return applied

    def append(self, ops: list[dict[str, Any]], durable: bool = True) -> Any:
        """Write a local event of ``ops`` (as the scheduler does), folded and announced."""
        ev = self._node.clock.append(ops, durable)
        self._node.scheduler._after_local_append(ev)
        return ev

    def heads(self) -> tuple[CID, ...]:
        return self._node.clock.heads()

    def get_hash(self) -> str:
        return self._node.clock.get_hash()


class P2PWorkflowScheduler:
    """The seed's entry point: one peer of the network, driven from Python.

    Why it exists beside the MCP tools: the seed's users wrote ``P2PWorkflowScheduler(node_id=...)``
    scripts; this keeps them working on the real node, with the CLI's settings and identity.
    """

    def __init__(
        self,
        node_id: str = "",
        *,
        data_dir: str | Path | None = None,
        config_file: str | Path | None = None,
        settings: dict[str, Any] | None = None,
        config: NodeConfig | None = None,
    ) -> None:
        """``node_id``/``data_dir`` as ``--node-id``/``--data-dir``; ``settings`` is a nested dict
        over the environment (e.g. ``{"network": {"listen": ["/ip4/127.0.0.1/tcp/0"]}}``);
        ``config`` bypasses the layering entirely (a complete ``NodeConfig``)."""
        if config is None:
            flags: dict[str, Any] = dict(settings or {})
            flags["node_id"] = node_id or None
            flags["data_dir"] = str(data_dir) if data_dir is not None else None
            config = load_node_settings(config_file, **flags).node_config()
        elif node_id or data_dir is not None or config_file is not None or settings:
            raise ValueError("give either config= or node_id/data_dir/config_file/settings, not both")
        self.config = config
        self.node_id = config.node_name
        self._node: Node | None = None
        self._clock: SchedulerClock | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.config.data_dir).expanduser()

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError(f"the scheduler is not running: {_ASYNC_WITH_ONLY}")
        return self._node

    async def start(self) -> P2PWorkflowScheduler:
        raise RuntimeError(_ASYNC_WITH_ONLY)

    async def stop(self) -> None:
        raise RuntimeError(_ASYNC_WITH_ONLY)

    async def __aenter__(self) -> P2PWorkflowScheduler:
        if self._node is not None:
            raise RuntimeError("this P2PWorkflowScheduler is already running")
        self._cm = Node.open(self.config)
        self._node = await self._cm.__aenter__()
        self._clock = SchedulerClock(self._node)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        cm, self._node, self._clock = self._cm, None, None
        del self._cm
        return await cm.__aexit__(*exc)

    async def submit_workflow(self, workflow: dict[str, Any]) -> str:
        """Submit ``{"name", "tasks": [{"model", "input"}...], "priority"?, "tag"?, "replicas"?, "cache"?}``;
        returns its id."""
        tag = workflow.get("tag", WorkflowTag.P2P_ELIGIBLE)
        summary = await self.node.submit_workflow(
            name=str(workflow.get("name", "")),
            tasks=list(workflow.get("tasks", [])),
            priority=workflow.get("priority", 5),
            tag=tag.value if isinstance(tag, WorkflowTag) else str(tag),
            replicas=workflow.get("replicas", 1),
            cache=workflow.get("cache", True),
        )
        return str(summary["workflow_id"])

    async def get_workflow_status(self, workflow_id: str, include_results: bool = False) -> dict[str, Any]:
        return self.node.workflow_status(workflow_id, include_results=include_results)

    async def wait_for_workflow(self, workflow_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until the workflow ends or ``timeout_s`` passes; returns its status with results."""
        import math

        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or math.isnan(timeout_s) \
                or math.isinf(timeout_s) or timeout_s < 0:
            raise ValueError(f"timeout_s must be a finite number of seconds >= 0, got {timeout_s!r}")
        await self.node.wait_for_workflow(workflow_id, timeout_s)
        return self.node.workflow_status(workflow_id, include_results=True)

    @property
    def clock(self) -> SchedulerClock:
        """The node's clock; ``clock.update(other)`` also updates the workflow state."""
        self.node  # noqa: B018 - raises the clear error when not running
        assert self._clock is not None
        return self._clock
