"""Conveyor as separate processes (Procfile shape) and as one process, killed with -9."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.lease_policy import TASK_PREFIX, Lease
from actors.task_policy import Task
from bus import subjects
from conveyor import config as config_mod
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from conveyor.config import Config
from tests.harness import Processes, drive, stored_jobs, wait_ready, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def processes(tmp_path: Path, nats_url: str) -> Iterator[Processes]:
    procs = Processes(tmp_path, nats_url)
    yield procs
    procs.stop_all()


def test_procfile_parts_deliver_an_item_as_separate_processes(
    processes: Processes, nats_url: str
) -> None:
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = Client(nats_url)
    try:
        wait_ready(client, processes)
        reply = client.command("submit", {"repo": "demo", "title": "Split processes"})
        assert reply["ok"], reply
        drive(client, reply["task"]["id"], "done")
    finally:
        client.close()


def test_killing_control_and_launcher_mid_stage_loses_and_repeats_nothing(
    processes: Processes, nats_url: str
) -> None:
    # Given an item whose developer takes a few seconds
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = Client(nats_url)
    try:
        wait_ready(client, processes)
        item = client.command(
            "submit",
            {"repo": "demo", "title": "Survives kill", "description": "demo: developer=slow:3"},
        )["task"]["id"]
        drive(client, item, "development")
        wait_until(
            lambda: any(j.role == "developer" and j.pid for j in stored_jobs(client)),
            what="developer started",
        )

        # When both Conveyor processes are killed -9 while the agent works, then restarted
        processes.kill("control")
        processes.kill("launcher")
        processes.start("control", "control")
        processes.start("launcher", "launcher")

        # Then the item reaches done, the developer ran once, and one PR was merged once
        drive(client, item, "done")
        dev = [j for j in stored_jobs(client) if j.role == "developer"]
        assert [(j.status, j.attempts) for j in dev] == [("done", 1)]
        effects = (processes.data / "forge" / "effects.jsonl").read_text().splitlines()
        assert sum('"pr_merged"' in line for line in effects) == 1
        assert sum('"pr_opened"' in line for line in effects) == 1
    finally:
        client.close()


def test_conveyor_up_killed_with_its_embedded_server_restarts_and_finishes(tmp_path: Path) -> None:
    # Given `conveyor up` with its embedded nats-server
    procs = Processes(tmp_path)
    url_file = procs.data / "nats.url"
    procs.start("up", "nats,control,launcher")
    try:
        url = wait_until(
            lambda: url_file.exists() and url_file.read_text().strip(),
            what="nats.url",
            deadline_s=60,
        )
        client = Client(url)
        wait_ready(client, procs)
        item = client.command(
            "submit",
            {"repo": "demo", "title": "Whole daemon dies", "description": "demo: architect=slow:2"},
        )["task"]["id"]
        drive(client, item, "architecture")
        client.close()

        # When the daemon is killed -9 (its nats-server dies with it) and started again
        url_file.unlink()
        procs.kill("up")
        procs.start("up", "nats,control,launcher")
        url = wait_until(
            lambda: url_file.exists() and url_file.read_text().strip(),
            what="new nats.url",
            deadline_s=60,
        )

        # Then everything acknowledged survived and the item finishes
        client = Client(url)
        wait_ready(client, procs)
        drive(client, item, "done")
        arch = [j for j in stored_jobs(client) if j.role == "architect"]
        assert [j.status for j in arch] == ["done"]
        client.close()
    finally:
        procs.stop_all()


# --- killing the control process alone, again and again ---------------------------------

REPOS = [f"kc{n}" for n in range(6)]
"""One task per repository: each can always run its next job (per-repo concurrency 1)."""
SLOW = "demo: analyst=slow:1 architect=slow:1 developer=slow:2 reviewer=slow:1 tester=slow:1"
CI_S = 1.5
"""The repositories' CI, run inside a run's post-steps: a transition lease is held that long."""
SLOWEST_STEP_S = 2.0 + CI_S
BUSY_RETRY_S = 30.0
"""Longer than the deadline below: a refused lease request may move only on a wake-up."""
KILLS = 3


def _kill_control_config(procs: Processes) -> Config:
    repos = "".join(
        f'\n[[repos]]\nname = "{name}"\nprefix = "{name.upper()}"\ntemplate = "demo"\n'
        f'check_command = ["{{python}}", "-c", "import time; time.sleep({CI_S})"]\n'
        for name in REPOS
    )
    text = procs.config.read_text()
    text = text.replace("busy_retry_s = 0.5", f"busy_retry_s = {BUSY_RETRY_S}")
    text = text.replace("[queue]\n", "[queue]\nmax_concurrency = 8\n")
    text = text.replace("[launcher]\n", "[launcher]\nslots = 8\n")
    procs.config.write_text(text + repos)
    return config_mod.load(procs.config)


def _positions(client: Client, items: list[str]) -> dict[str, tuple[Any, ...]]:
    """Where each task stands, read from KV (it answers with control dead)."""
    tasks = client.bus.store(subjects.BUCKET_TASKS, Task)
    jobs = stored_jobs(client)
    found: dict[str, tuple[Any, ...]] = {}
    for item in items:
        entry = tasks.get(item)
        mine = sorted((j.id, j.status, j.attempts) for j in jobs if j.task_id == item)
        found[item] = (entry.revision if entry else 0, tuple(mine))
    return found


def _transition_held(client: Client) -> bool:
    held = client.bus.store(subjects.BUCKET_LEASES, Lease).load_all()
    return any(name.startswith(TASK_PREFIX) for name in held)


def _stage(client: Client, item: str) -> str:
    try:
        return str(client.request(subjects.status_task(item)).get("stage", ""))
    except Exception:
        return ""


def test_killing_control_alone_repeatedly_strands_no_task(
    processes: Processes, nats_url: str
) -> None:
    # Given six tasks in flight in the Procfile set-up, lease polling slower than the deadline
    cfg = _kill_control_config(processes)
    deadline_s = cfg.nats.ack_wait_s + 2 * SLOWEST_STEP_S + 10.0  # margin: a loaded 2-core box
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = Client(nats_url)
    clock = SystemClock()
    try:
        wait_ready(client, processes)
        items = [
            client.command(
                "submit", {"repo": repo, "title": f"Kill control {repo}", "description": SLOW}
            )["task"]["id"]
            for repo in REPOS
        ]
        for item in items:
            drive(client, item, *[s.name for s in cfg.pipeline.stages[1:]], "done")

        # When control alone is killed -9 mid-pipeline, again and again, and restarted
        moved_after: list[float] = []
        for _ in range(KILLS):
            in_flight = [i for i in items if _stage(client, i) != "done"]
            # ... while a run holds a task's transition lease (its CI runs): its release is lost
            wait_until(lambda: _transition_held(client), what="a transition lease held")
            processes.kill("control")
            before = _positions(client, in_flight)
            clock.sleep(1.0)  # runs finish meanwhile: their releases find no keeper
            processes.start("control", "control")
            wait_ready(client, processes)
            back = clock.monotonic()

            # Then every task in flight moves again within the deadline
            waiting = set(in_flight)

            def _all_moved(
                waiting: set[str] = waiting, before: dict[str, Any] = before, back: float = back
            ) -> bool:
                now = _positions(client, sorted(waiting))
                for item in [i for i in waiting if now[i] != before[i]]:
                    waiting.discard(item)
                    moved_after.append(clock.monotonic() - back)
                return not waiting

            wait_until(_all_moved, deadline_s=deadline_s, what="every task in flight to move")
            print(f"control back; tasks moved after {sorted(round(t, 2) for t in moved_after)}")

        # And all reach done, with no pull request opened or merged twice
        for item in items:
            drive(client, item, "done", deadline_s=120)
        effects = (processes.data / "forge" / "effects.jsonl").read_text().splitlines()
        assert sum('"pr_merged"' in line for line in effects) == len(items)
        assert sum('"pr_opened"' in line for line in effects) == len(items)
        launcher_log = (processes.tmp / "launcher.log").read_text()
        deferred = launcher_log.count("launcher.release_deferred")
        waited = launcher_log.count("lease keeper unreachable")
        print(f"moved after control came back: max {max(moved_after):.2f}s of {len(moved_after)}")
        print(f"releases deferred: {deferred}; lease requests that found no keeper: {waited}")
        # The kills landed while leases were held: their holders met the keeper's absence.
        assert deferred + waited >= 1
    finally:
        client.close()
