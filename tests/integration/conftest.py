"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.bridge import Bus


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    """A bus connected to the test's nats-server, its streams and buckets set up."""
    bus = Bus.connect(nats_url)
    bus.setup()
    yield bus
    bus.close()
