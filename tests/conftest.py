"""Shared fixtures: nodes on temporary data dirs, sharing one ONNX export per test run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Hypothesis without its "explain" phase: on Python 3.11 it traces every line while it re-runs a
# failing example, and a fold generator's failure then shrank past pytest-timeout's 300 s on CI,
# which reported a timeout and a FlakyStrategyDefinition instead of the failing example.
from hypothesis import Phase, settings  # noqa: E402

settings.register_profile("project", phases=[p for p in Phase if p is not Phase.explain], print_blob=True)
settings.load_profile("project")


def pytest_configure(config: pytest.Config) -> None:
    from mcp_server.log import configure_logging

    configure_logging("info", "console")  # stderr, as in production; stdout stays clean

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX cache for the whole run, so the default model is exported once."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def exported_default_model(shared_cache_dir: Path) -> Path:
    """The default model's ONNX export in the shared cache, made before a test that must not pay
    for it mid-run: a cold export takes ~17 s of CPU, and a node exporting while the others run
    a 10,000-task workflow starves them (loop lag, lapsed heartbeats). In a full run an earlier
    test has usually exported it already."""
    from inference.config import InferenceConfig
    from inference.models import resolve_model
    from inference.runner import load_runner

    load_runner(resolve_model(DEFAULT_MODEL), "embedding", "onnx", InferenceConfig(cache_dir=str(shared_cache_dir)),
                shared_cache_dir)
    return shared_cache_dir


def make_node_config(data_dir: Path, cache_dir: Path, *, name: str = "test", network: bool = False, **sched: Any) -> Any:
    from inference.config import InferenceConfig
    from p2p.config import NetworkConfig, NodeConfig, SchedulerConfig

    return NodeConfig(
        data_dir=data_dir,
        node_name=name,
        inference=InferenceConfig(cache_dir=str(cache_dir)),
        scheduler=SchedulerConfig(**{"flush_ms": 2.0, **sched}),
        network=NetworkConfig(enabled=network, mdns=False, listen=["/ip4/127.0.0.1/tcp/0"]),
    )


@pytest.fixture
def node_config(tmp_path: Path, shared_cache_dir: Path) -> Any:
    return make_node_config(tmp_path / "node", shared_cache_dir)


@pytest.fixture
async def node(node_config: Any) -> AsyncIterator[Any]:
    from p2p.node import Node

    async with Node.open(node_config) as n:
        yield n


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """Extra environment for every node of ``cluster``; a test module overrides it."""
    return {}


@pytest.fixture
async def cluster(tmp_path: Path, shared_cache_dir: Path, cluster_env: dict[str, str]) -> AsyncIterator[Any]:
    """Real ``p2p start`` processes on loopback (tests.cluster), all stopped at the end."""
    from tests.cluster import Cluster

    c = Cluster(tmp_path, shared_cache_dir, env_extra=cluster_env)
    try:
        yield c
    finally:
        c.stop_all()
