"""Real loopback upstream servers for the in-process proxy tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: upstream_servers

from upstream_servers import Upstream


@pytest.fixture
async def servers() -> AsyncIterator[list[Upstream]]:
    """Three fresh upstreams (a, b, c) on free loopback ports, stopped afterwards."""
    started = [await Upstream(name).start() for name in ("a", "b", "c")]
    try:
        yield started
    finally:
        for server in started:
            await server.stop()
