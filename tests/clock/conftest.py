"""Shared fixtures: identities are slow-ish to make, so a few are reused across tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2p.clock import MerkleClock
from p2p.identity import Identity

IDENTITIES = [Identity.generate() for _ in range(4)]


@pytest.fixture
def identities() -> list[Identity]:
    return IDENTITIES


@pytest.fixture
def clock(tmp_path: Path) -> Iterator[MerkleClock]:
    c = MerkleClock.open(tmp_path / "clock.db", IDENTITIES[0])
    yield c
    c.close()
