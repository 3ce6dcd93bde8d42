"""The seed's Python API: ``P2PWorkflowScheduler``, ``WorkflowTag`` and ``MerkleClock``.

Adapted to trio's structured concurrency: the scheduler is an async context manager, so the
node it runs lives exactly as long as the ``async with`` block::

    async with P2PWorkflowScheduler(node_id="worker-01") as scheduler:
        workflow_id = await scheduler.submit_workflow({
            "name": "batch-inference",
            "tag": WorkflowTag.P2P_ELIGIBLE,
            "priority": 1,  # lower = higher priority
            "tasks": [{"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "text1"}],
        })
        status = await scheduler.get_workflow_status(workflow_id)
        print(f"Progress: {status['completed']}/{status['total']}")

``await scheduler.start()`` / ``await scheduler.stop()`` do the same from one task.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from p2p.clock import MerkleClock
from p2p.config import NetworkConfig, NodeConfig
from p2p.node import Node
from p2p.scheduler.ops import WorkflowTag

__all__ = ["MerkleClock", "P2PWorkflowScheduler", "WorkflowTag"]


class P2PWorkflowScheduler:
    def __init__(
        self,
        node_id: str = "",
        *,
        data_dir: str | Path | None = None,
        config: NodeConfig | None = None,
        network: bool = False,
    ) -> None:
        if config is None:
            base = Path(data_dir) if data_dir else Path("~/.local/share/ipfs-accelerate").expanduser() / (node_id or "default")
            config = NodeConfig(data_dir=base, node_name=node_id or "default", network=NetworkConfig(enabled=network))
        self.config = config
        self.node_id = config.node_name
        self._stack: AsyncExitStack | None = None
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("the scheduler is not started: use `async with P2PWorkflowScheduler(...)` or `await start()`")
        return self._node

    async def start(self) -> "P2PWorkflowScheduler":
        stack = AsyncExitStack()
        self._node = await stack.enter_async_context(Node.open(self.config))
        self._stack = stack
        return self

    async def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._node = self._stack, None, None
            await stack.aclose()

    async def __aenter__(self) -> "P2PWorkflowScheduler":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def submit_workflow(self, workflow: dict[str, Any]) -> str:
        """Submit ``{"name", "tasks": [{"model", "input"}...], "priority"?, "tag"?}``; returns its id."""
        tag = workflow.get("tag", WorkflowTag.P2P_ELIGIBLE)
        summary = self.node.submit_workflow(
            name=str(workflow.get("name", "")),
            tasks=list(workflow.get("tasks", [])),
            priority=workflow.get("priority", 5),
            tag=tag.value if isinstance(tag, WorkflowTag) else str(tag),
        )
        return str(summary["workflow_id"])

    async def get_workflow_status(self, workflow_id: str, include_results: bool = False) -> dict[str, Any]:
        return self.node.workflow_status(workflow_id, include_results=include_results)

    async def wait_for_workflow(self, workflow_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        await self.node.wait_for_workflow(workflow_id, timeout_s)
        return self.node.workflow_status(workflow_id, include_results=True)

    @property
    def clock(self) -> MerkleClock:
        return self.node.clock
