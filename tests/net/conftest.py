"""Fixtures of the network tests: loopback-only configs and peer processes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from p2p.config import NetworkConfig  # noqa: E402


@pytest.fixture
def net_config() -> Callable[..., NetworkConfig]:
    """A NetworkConfig on 127.0.0.1 with mDNS off (mDNS would multicast on every interface)."""

    def make(**overrides: Any) -> NetworkConfig:
        fields: dict[str, Any] = {"listen": ["/ip4/127.0.0.1/tcp/0"], "mdns": False}
        fields.update(overrides)
        return NetworkConfig(**fields)

    return make
