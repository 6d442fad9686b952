"""Fixtures of the multi-host tests: a network of namespaces and a NATS cluster on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import NatsCluster
from tests.cluster.netns import Host, Network, unavailable


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge for this test's hosts; everything on it is removed afterwards, failed or not."""
    why = unavailable()
    if why:
        pytest.skip(why)
    net = Network()
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture
def hosts(network: Network) -> Callable[[int], list[Host]]:
    """`hosts(n)`: n new hosts, each with `.addr`, `.popen(argv, env)`, `.cut()`, `.restore()`."""
    return network.hosts_n


@pytest.fixture
def nats_cluster(network: Network, tmp_path: Path) -> NatsCluster:
    """Three nats-server nodes on three hosts, started by `conveyor up --parts nats`."""
    cluster = NatsCluster(network.hosts_n(3), tmp_path / "cluster")
    try:
        cluster.start()
    except AssertionError:
        raise AssertionError(cluster.logs()) from None
    return cluster  # stopped with the network's hosts
