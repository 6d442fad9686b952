"""Active/standby control: two `control` processes and a launcher on one real nats-server.

The active holds the leader lease (TTL 10 s); the standby takes over when it is
killed -9 or frozen past the TTL, and a frozen active that wakes up writes and
acts on nothing (every write of an active carries its epoch in a header, which an
`EpochWatch` subscribed to the whole server sees).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.app.client import Client
from tests.harness import Processes, drive, stored_jobs, wait_ready, wait_until
from tests.standby_support import (
    CLOCK,
    TTL_S,
    EpochWatch,
    freeze,
    kill,
    log_of,
    standby_toml,
    start_pair,
    status,
    thaw,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ITEMS = 2
SLOW = "demo: developer=slow:3"


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str) -> Iterator[tuple[Processes, Client, EpochWatch]]:
    procs = Processes(tmp_path, nats_url, extra_toml=standby_toml())
    watch = EpochWatch(nats_url)
    client = Client(nats_url)
    try:
        yield procs, client, watch
    finally:
        procs.stop_all()
        client.close()
        watch.close()


def _submit(client: Client, title: str) -> list[str]:
    return [
        client.command("submit", {"repo": "demo", "title": f"{title} {n}", "description": SLOW})[
            "task"
        ]["id"]
        for n in range(ITEMS)
    ]


def _developer_running(client: Client) -> None:
    wait_until(
        lambda: any(j.role == "developer" and j.pid for j in stored_jobs(client)),
        what="a developer running",
    )


def _effects(procs: Processes) -> Counter[str]:
    lines = (procs.data / "forge" / "effects.jsonl").read_text().splitlines()
    return Counter(json.loads(line)["kind"] for line in lines if line.strip())


def _assert_exactly_once(procs: Processes, client: Client) -> None:
    effects = _effects(procs)
    assert effects["pr_opened"] == ITEMS, effects
    assert effects["pr_merged"] == ITEMS, effects
    developers = [j for j in stored_jobs(client) if j.role == "developer"]
    assert sorted((j.status, j.attempts) for j in developers) == [("done", 1)] * ITEMS


def test_killing_the_active_mid_pipeline_hands_every_item_to_the_standby(
    cluster: tuple[Processes, Client, EpochWatch],
) -> None:
    # Given an active control, a standby and a launcher, with items in development
    procs, client, watch = cluster
    active, standby, epoch = start_pair(procs, client, watch)
    wait_ready(client, procs)
    items = _submit(client, "Handed over")
    drive(client, items[0], "development")
    _developer_running(client)

    # When the active is killed -9
    died = kill(procs, active)

    # Then the standby wins a later epoch and writes under it soon after the TTL
    first = wait_until(
        lambda: next((s for s in watch.stamped(since=died) if s.epoch > epoch), None),
        what="a write of the new epoch",
        deadline_s=TTL_S * 3,
    )
    print(f"takeover: kill -9 -> first write of the new active {first.at - died:.1f}s")
    assert watch.leader().holder.pid == procs.procs[standby].pid  # type: ignore[union-attr]

    # And every item reaches done with every side effect exactly once
    for item in items:
        drive(client, item, "done")
    _assert_exactly_once(procs, client)
    assert status(client)["control"]["active"]["epoch"] == first.epoch


def test_a_frozen_active_that_wakes_after_the_takeover_writes_nothing_and_stands_by(
    cluster: tuple[Processes, Client, EpochWatch],
) -> None:
    # Given an active control, a standby and a launcher, with items in development
    procs, client, watch = cluster
    active, standby, epoch = start_pair(procs, client, watch)
    wait_ready(client, procs)
    items = _submit(client, "Frozen")
    drive(client, items[0], "development")
    _developer_running(client)

    # When the active is frozen past the TTL and the standby has taken over
    pid = freeze(procs, active)
    frozen = CLOCK.monotonic()
    wait_until(
        lambda: any(s.epoch > epoch for s in watch.stamped(since=frozen)),
        what="a write of the new epoch",
        deadline_s=TTL_S * 3,
    )
    # ... and the frozen one is woken up
    woke = CLOCK.monotonic()
    thaw(pid)

    # Then it says it stood down, and stands by
    wait_until(lambda: "leader.stood_down" in log_of(procs, active), what="the old one stood down")
    wait_until(
        lambda: any(
            s.get("pid") == pid for s in status(client).get("control", {}).get("standbys", [])
        ),
        what="the old active listed as a standby",
    )

    # And every item reaches done with every side effect exactly once
    for item in items:
        drive(client, item, "done")
    _assert_exactly_once(procs, client)
    # And nothing it wrote after waking carries its epoch
    assert [s for s in watch.stamped(since=woke) if s.epoch == epoch] == []
    assert watch.leader().holder.pid == procs.procs[standby].pid  # type: ignore[union-attr]
