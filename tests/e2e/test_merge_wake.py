"""Merges waiting for their repository's merge lease wake when it is released.

Six tasks on one repository at concurrency 4, with `leases.busy_retry_s` (the
fallback poll and the deferral) longer than any deadline here: only a wake-up
(`LeaseFreed`) can move a waiting merge in time, and a merge step that deferred
would show as a second attempt of its job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import subjects
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from tests.harness import ALL_STAGES, Processes, drive, stored_jobs, wait_ready, wait_until

# The deadlines below, not the default per-test timeout, say how long is too long.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ITEMS = 6
BUSY_RETRY_S = 120.0
AFTER_RESTART_S = 90.0
"""Every item is done this soon after control is back: shorter than the fallback poll."""
CI_S = 1.5
"""The CI check's length: the re-test inside each merge, so merges overlap."""
MAX_ATTEMPTS_PER_MERGE = 1.2
PROTECTED_ITEMS = 2


def _configured(
    tmp_path: Path, nats_url: str, repo_extra: str = "", ci_s: float = CI_S
) -> Processes:
    procs = Processes(tmp_path, nats_url)
    text = procs.config.read_text()
    text = text.replace("busy_retry_s = 0.5", f"busy_retry_s = {BUSY_RETRY_S}")
    text = text.replace("[queue]\n", "[queue]\nmax_concurrency = 4\nper_repo_concurrency = 4\n")
    text = text.replace("[launcher]\n", "[launcher]\nslots = 4\n")
    head, _, _ = text.partition("check_command")
    check = f'check_command = ["{{python}}", "-c", "import time; time.sleep({ci_s})"]\n'
    procs.config.write_text(head + check + repo_extra)
    return procs


@pytest.fixture
def processes(tmp_path: Path, nats_url: str) -> Iterator[Processes]:
    procs = _configured(tmp_path, nats_url)
    yield procs
    procs.stop_all()


@pytest.fixture
def protected(tmp_path: Path, nats_url: str) -> Iterator[Processes]:
    """The same on a protected repository: each task keeps the merge lease through its deploy."""
    # Merges wait for the deploy before them, not for a re-test: a short CI will do.
    procs = _configured(tmp_path, nats_url, "protected = true\n", ci_s=0.1)
    yield procs
    procs.stop_all()


def _submit_all(client: Client, count: int = ITEMS) -> list[str]:
    """Submit the items and approve each past analysis, so they go through together."""
    items = [
        client.command("submit", {"repo": "demo", "title": f"Merge wake {n}"})["task"]["id"]
        for n in range(count)
    ]
    past_analysis = ALL_STAGES[ALL_STAGES.index("analysis") + 1 :]
    for item in items:
        drive(client, item, *past_analysis, deadline_s=120)
    return items


def _merge_waits(processes: Processes) -> int:
    text = (processes.tmp / "launcher.log").read_text(errors="replace")
    return sum(
        "launcher.transition_wait" in line and "merge.demo" in line for line in text.splitlines()
    )


def _finish_and_count(
    client: Client, processes: Processes, items: list[str], deadline_s: float = 240
) -> float:
    """Every item reaches done, each merged once; the merge jobs' attempts per item."""
    end = SystemClock().monotonic() + deadline_s
    for item in items:
        drive(client, item, "done", deadline_s=max(1.0, end - SystemClock().monotonic()))
    effects = (processes.data / "forge" / "effects.jsonl").read_text().splitlines()
    assert sum('"pr_merged"' in line for line in effects) == len(items)
    merges = [j for j in stored_jobs(client) if j.role == "merge" and j.task_id in items]
    assert {j.task_id for j in merges} == set(items)
    per_item = sum(j.attempts for j in merges) / len(items)
    print(f"merge attempts per item: {per_item:.2f}; merge waits: {_merge_waits(processes)}")
    return per_item


def test_merges_on_one_repository_wake_on_release_and_run_about_once(
    processes: Processes, nats_url: str
) -> None:
    # Given six tasks on one repository, four at a time, with a fallback poll of a minute
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = Client(nats_url)
    try:
        wait_ready(client, processes)
        items = _submit_all(client)

        # When they all go through the pipeline, merges contending for the one lease
        per_item = _finish_and_count(client, processes, items)

        # Then merges waited for one another, woken by each release, not deferred
        assert _merge_waits(processes) >= 1, processes.logs()
        assert per_item <= MAX_ATTEMPTS_PER_MERGE
    finally:
        client.close()


def test_merges_waiting_while_control_is_killed_wake_when_it_is_back(
    processes: Processes, nats_url: str
) -> None:
    # Given merges waiting for the repository's merge lease
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = Client(nats_url)
    try:
        wait_ready(client, processes)
        items = _submit_all(client)
        wait_until(lambda: _merge_waits(processes) >= 1, what="a merge waiting", deadline_s=240)

        # When control (the LeaseKeeper) is killed -9 and restarted meanwhile
        processes.kill("control")
        SystemClock().sleep(1.0)  # the holder's release finds no keeper
        processes.start("control", "control")
        wait_ready(client, processes)

        # Then the keeper's return wakes them (not the fallback poll): all reach done
        # sooner than one poll, and the merges run about once
        per_item = _finish_and_count(client, processes, items, deadline_s=AFTER_RESTART_S)
        assert per_item <= MAX_ATTEMPTS_PER_MERGE
    finally:
        client.close()


def _confirm_deploys(client: Client, items: list[str], deadline_s: float) -> None:
    """Confirm each protected production deploy as it asks, until every item is done."""

    def _all_done() -> bool:
        stages = []
        for item in items:
            task = client.request(subjects.status_task(item))
            if task.get("step") == "confirm":
                client.command("confirm-deploy", {"id": item})
            stages.append(task.get("stage"))
        return all(stage == "done" for stage in stages)

    wait_until(_all_done, what="every protected item done", deadline_s=deadline_s)


def _parked(processes: Processes) -> int:
    text = (processes.tmp / "control.log").read_text(errors="replace")
    return sum("parked for merge.demo" in line for line in text.splitlines())


def test_merges_on_a_protected_repository_park_until_the_kept_lease_is_freed(
    protected: Processes, nats_url: str
) -> None:
    # Given two tasks on one protected repository: each keeps the merge lease
    # through its confirmed production deploy, and the fallback poll is two minutes
    protected.start("control", "control")
    protected.start("launcher", "launcher")
    client = Client(nats_url)
    try:
        wait_ready(client, protected)
        items = _submit_all(client, PROTECTED_ITEMS)

        # When one keeps the lease, awaiting its deploy's confirmation, while the
        # other reaches its merge; then each deploy is confirmed as it asks
        wait_until(lambda: _parked(protected) >= 1, what="a merge parked", deadline_s=240)
        _confirm_deploys(client, items, deadline_s=240)
        per_item = _finish_and_count(client, protected, items)

        # Then the parked merge was woken by the release (not the fallback), and
        # every merge ran about once
        assert per_item <= MAX_ATTEMPTS_PER_MERGE
    finally:
        client.close()
