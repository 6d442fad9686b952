"""Conveyor on a 3-node NATS cluster, its processes on separate (namespace) hosts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus
from bus.effects import Effect
from bus.kv import KeyExists
from bus.messages import Alert
from conveyor.app.client import Client
from tests.cluster.cluster import Conveyors, NatsCluster
from tests.cluster.netns import Host
from tests.harness import ALL_STAGES, drive, stored_jobs, wait_ready, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

ITEMS = 2


@pytest.fixture
def bus(nats_cluster: NatsCluster) -> Iterator[Bus]:
    """A client of all three nodes from outside every host, streams and buckets R3."""
    connected = Bus.connect(nats_cluster.url, name="test-cluster", replicas=3, write_retry_s=30.0)
    connected.setup()
    yield connected
    connected.close()


@pytest.fixture
def conveyors(nats_cluster: NatsCluster, tmp_path: Path) -> Iterator[Conveyors]:
    app = Conveyors(nats_cluster, tmp_path / "app")
    yield app
    app.stop_all()


def _submit(client: Client, n: int, title: str) -> list[str]:
    items = []
    for i in range(n):
        reply = client.command(
            "submit",
            {"repo": "demo", "title": f"{title} {i}", "description": "demo: developer=slow:2"},
        )
        assert reply["ok"], reply
        items.append(reply["task"]["id"])
    return items


def _deliver(client: Client, items: list[str], app: Conveyors) -> None:
    try:
        for item in items:
            drive(client, item, "done", deadline_s=120)
    except AssertionError:
        raise AssertionError(app.logs()) from None


def _assert_each_effect_once(app: Conveyors, n: int) -> None:
    effects = app.forge_effects()
    assert sum('"pr_opened"' in line for line in effects) == n, effects
    assert sum('"pr_merged"' in line for line in effects) == n, effects


def _under_way(client: Client, items: list[str], app: Conveyors) -> None:
    """Approve each item's analysis and wait until a developer agent runs."""
    try:
        for item in items:
            drive(client, item, *ALL_STAGES[ALL_STAGES.index("development") :], deadline_s=90)
        wait_until(lambda: _developing(client), what="a developer running", deadline_s=60)
    except AssertionError:
        raise AssertionError(app.logs()) from None


def _developing(client: Client) -> bool:
    return any(j.role == "developer" and j.pid for j in stored_jobs(client))


def _exit_files(app: Conveyors) -> set[Path]:
    """Every agent run's exit file: written by the run's wrapper on its own host."""
    return set((app.data / "runs").glob("*/*/exit_code"))


def test_items_reach_done_once_while_the_stream_leader_node_is_killed(
    nats_cluster: NatsCluster, hosts: Callable[[int], list[Host]], conveyors: Conveyors, bus: Bus
) -> None:
    # Given control on a node's host and a launcher on a host of its own
    (launcher_host,) = hosts(1)
    conveyors.start("control", "control", nats_cluster.hosts[0])
    conveyors.start("launcher", "launcher", launcher_host)
    client = Client(nats_cluster.url)
    try:
        wait_ready(client, conveyors)  # type: ignore[arg-type]
        items = _submit(client, ITEMS, "Leader dies")
        _under_way(client, items, conveyors)

        # When the node leading most of the pipeline's streams is killed -9 mid-pipeline
        victim = nats_cluster.busiest_leader(bus)
        nats_cluster.kill(victim)

        # Then every item reaches done, each PR opened and merged exactly once
        _deliver(client, items, conveyors)
        _assert_each_effect_once(conveyors, ITEMS)
        assert victim not in nats_cluster.leaders(bus).values()
    finally:
        client.close()


def test_the_launcher_host_cut_off_and_back_delivers_each_item_once(
    nats_cluster: NatsCluster, hosts: Callable[[int], list[Host]], conveyors: Conveyors
) -> None:
    # Given a launcher on its own host, working on items
    (launcher_host,) = hosts(1)
    conveyors.start("control", "control", nats_cluster.hosts[1])
    conveyors.start("launcher", "launcher", launcher_host)
    client = Client(nats_cluster.url)
    try:
        wait_ready(client, conveyors)  # type: ignore[arg-type]
        items = _submit(client, 2, "Link cut")
        _under_way(client, items, conveyors)

        # When its link is cut while an agent runs, and restored once an agent ended
        ended_before = _exit_files(conveyors)
        launcher_host.cut()
        try:
            wait_until(
                lambda: _exit_files(conveyors) - ended_before,
                what="an agent run ended on the cut-off host",
                deadline_s=30,
            )
        finally:
            launcher_host.restore()

        # Then its results arrive late but once: every item is done, every effect once
        _deliver(client, items, conveyors)
        _assert_each_effect_once(conveyors, 2)
    finally:
        client.close()


def test_writes_during_a_leaderless_window_land_once(nats_cluster: NatsCluster, bus: Bus) -> None:
    # Given the alerts stream and the effect bucket led by the same node
    bucket = f"KV_{subjects.BUCKET_EFFECTS}"
    leader = nats_cluster.leaders(bus, [subjects.STREAM_NOTIFY])[subjects.STREAM_NOTIFY]
    _move_leader(bus, nats_cluster, bucket, leader)
    effects = bus.store(subjects.BUCKET_EFFECTS, Effect)
    alert = Alert(level="info", text="once", source="test", at=0.0)
    subject = subjects.subject_for(alert)
    tries: list[int] = []

    def _publish(attempt: int) -> object:
        tries.append(attempt)
        return bus.js.publish(subject, msgspec.json.encode(alert), headers={"Nats-Msg-Id": "w1"})

    # When that node is killed -9 and both are written at once, inside the window
    nats_cluster.kill(leader)
    ack = bus.write(_publish, what="test")
    revision = effects.create("k1", Effect(key="k1", status="done", started_at=0.0))

    # Then the publish was tried again until a new leader took it, and both landed once
    assert len(tries) > 1
    again = bus.write(_publish, what="test")
    assert again.duplicate
    assert again.seq == ack.seq
    stored = effects.get("k1")
    assert stored is not None
    assert stored.revision == revision
    with pytest.raises(KeyExists):
        effects.create("k1", Effect(key="k1", status="done", started_at=0.0))
    assert leader not in nats_cluster.leaders(bus, [subjects.STREAM_NOTIFY, bucket]).values()


def _move_leader(bus: Bus, cluster: NatsCluster, stream: str, node: int) -> None:
    """Ask `stream`'s leader to step down in favour of `node` until it leads it."""

    async def _stepdown() -> None:
        request = msgspec.json.encode({"placement": {"preferred": f"n{node}"}})
        await bus.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=5)

    def _there() -> bool:
        if cluster.leaders(bus, [stream]).get(stream) == node:
            return True
        bus.call(_stepdown())
        return False

    wait_until(_there, what=f"{stream} led by n{node}", deadline_s=30)
