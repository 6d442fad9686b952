"""Fixtures for end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Harness, make_config


@pytest.fixture
def harness_factory(tmp_path: Path, nats_url: str) -> Iterator[Callable[..., Harness]]:
    """Build (and later tear down) harnesses with config overrides."""
    made: list[Harness] = []

    def _make(**overrides: Any) -> Harness:
        cfg = make_config(tmp_path / "data", nats_url, **overrides)
        harness = Harness(cfg, nats_url).start()
        made.append(harness)
        return harness

    yield _make
    for harness in made:
        harness.close()


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    """A harness on the default test config."""
    return harness_factory()
