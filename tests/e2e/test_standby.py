"""Active/standby control: two `control` processes and a launcher on one real nats-server.

The active holds the leader lease (TTL 10 s); the standby takes over when it is
frozen past the TTL or killed -9, and a frozen active that wakes up writes and
acts on nothing (every write of an active carries its epoch in a header, which an
`EpochWatch` subscribed to the whole server sees, whether or not the write lands).
One scenario does both, in the tests' time budget: each takeover waits out a TTL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.task_policy import Task
from bus import subjects
from conveyor.app.client import Client
from tests.harness import Processes, drive, stored_jobs, wait_ready, wait_until
from tests.standby_support import (
    CLOCK,
    TTL_S,
    EpochWatch,
    active_of,
    freeze,
    kill,
    log_of,
    standby_toml,
    start_pair,
    status,
    thaw,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REPOS = ("demo", "side")
ITEMS = len(REPOS)
# The developers run across the first takeover; the testers keep the items mid-pipeline
# until the second (a kill needs an item in flight, however fast the rest goes).
SLOW = "demo: developer=slow:3 tester=slow:12"
AFTER_ANALYSIS = ("architecture", "development", "review", "testing", "deploy-staging", "deploy")


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str) -> Iterator[tuple[Processes, Client, EpochWatch]]:
    procs = Processes(tmp_path, nats_url, extra_toml=standby_toml())
    watch = EpochWatch(nats_url)
    # Short: the first request of a connection can go unanswered, and a frozen process
    # keeps its share of the service's requests until the server drops it.
    client = Client(nats_url, timeout_s=3.0)
    try:
        yield procs, client, watch
    finally:
        procs.stop_all()
        client.close()
        watch.close()


def _submit(client: Client, title: str) -> list[str]:
    return [
        client.command("submit", {"repo": repo, "title": title, "description": SLOW})["task"]["id"]
        for repo in REPOS
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


def _approve_all(client: Client, items: list[str]) -> None:
    for item in items:
        drive(client, item, *AFTER_ANALYSIS)


def _in_flight(client: Client) -> list[str]:
    tasks = client.bus.store(subjects.BUCKET_TASKS, Task).load_all()
    return sorted(key for key, entry in tasks.items() if entry.value.stage != "done")


def _acting(procs: Processes, name: str, epoch: int) -> bool:
    return f'"event": "control.started", "epoch": {epoch}' in log_of(procs, name)


def test_the_standby_takes_over_a_frozen_active_that_stands_by_on_waking_then_a_killed_one(
    cluster: tuple[Processes, Client, EpochWatch],
) -> None:
    # Given an active control, a standby and a launcher, with items approved and a
    # developer running
    procs, client, watch = cluster
    first, second, epoch = start_pair(procs, client, watch)
    wait_ready(client, procs)
    items = _submit(client, "Handed over")
    _approve_all(client, items)
    _developer_running(client)

    # When the active is frozen (SIGSTOP) past the TTL
    pid = freeze(procs, first)
    frozen = CLOCK.monotonic()

    # Then the standby wins a later epoch and starts the control actors
    took_over = wait_until(
        lambda: active_of(watch, procs, (second,)), what="the standby won", deadline_s=TTL_S * 3
    )
    second_epoch = took_over[1]
    assert second_epoch > epoch
    wait_until(lambda: _acting(procs, second, second_epoch), what="the new active acting")
    print(f"takeover of a frozen active: {CLOCK.monotonic() - frozen:.1f}s after SIGSTOP")

    # When the frozen one wakes up
    woke = CLOCK.monotonic()
    thaw(pid)

    # Then it says it stood down and stands by
    wait_until(lambda: "leader.stood_down" in log_of(procs, first), what="the old one stood down")
    wait_until(
        lambda: any(
            s.get("pid") == pid for s in status(client).get("control", {}).get("standbys", [])
        ),
        what="the woken one listed as a standby",
    )

    # When the new active is killed -9 mid-pipeline
    assert _in_flight(client), "every item is done already: nothing is mid-pipeline"
    died = kill(procs, second)

    # Then the first one takes the lease back under a third epoch and works again
    _, third_epoch = active_of(watch, procs, (first,))
    moving = wait_until(
        lambda: next((s for s in watch.stamped(since=died) if s.epoch == third_epoch), None),
        what="a write of the third epoch",
        deadline_s=TTL_S * 3,
    )
    print(f"takeover of a killed active: first write {moving.at - died:.1f}s after kill -9")

    # And every item reaches done with every side effect exactly once
    for item in items:
        drive(client, item, "done")
    _assert_exactly_once(procs, client)
    # And nothing the frozen one sent after waking carried its epoch, landed or not
    late = [
        (round(s.at - woke, 3), s.subject) for s in watch.stamped(since=woke) if s.epoch == epoch
    ]
    assert late == []
    assert status(client)["control"]["active"]["epoch"] == third_epoch
