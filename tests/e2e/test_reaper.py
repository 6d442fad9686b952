"""The Reaper frees a job whose launcher and agent both died, so the queue moves on."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bus import subjects
from conveyor.app.client import Client
from tests.harness import Processes, drive, stored_jobs, wait_ready, wait_until

pytestmark = pytest.mark.e2e

ENV = {
    # One job at a time for the whole daemon: a zombie would freeze every repository.
    "CONVEYOR_QUEUE__MAX_CONCURRENCY": "1",
    "CONVEYOR_REAPER__INTERVAL_S": "0.2",
    "CONVEYOR_REAPER__DEAD_TICKS": "2",
    "CONVEYOR_REAPER__HEARTBEAT_TIMEOUT_S": "1.0",
    "CONVEYOR_AGENTS__ARCHITECT__TIMEOUT_S": "3",
}


def test_a_zombie_job_at_concurrency_one_is_reaped_and_every_item_finishes(
    tmp_path: Path, nats_url: str
) -> None:
    # Given one launcher and a concurrency of 1, and an architect that hangs
    procs = Processes(tmp_path, nats_url)
    procs.start("control", "control", env=ENV)
    procs.start("l1", "launcher", env={**ENV, "CONVEYOR_LAUNCHER__NAME": "l1"})
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        first = client.command(
            "submit",
            {"repo": "demo", "title": "Zombie", "description": "demo: architect=hang"},
        )["task"]["id"]
        drive(client, first, "architecture")

        def _architect_pid() -> int | None:
            jobs = [j for j in stored_jobs(client) if j.role == "architect" and j.pid]
            return jobs[0].pid if jobs else None

        pid = wait_until(_architect_pid, what="architect running")
        second = client.command("submit", {"repo": "demo", "title": "Waits behind it"})
        assert second["ok"]

        # When the launcher is killed -9 and its agent dies with it, leaving the job
        # `running` with nobody to report it
        procs.kill("l1")
        os.killpg(pid, signal.SIGKILL)
        # and another launcher (not the dead one's name: no adoption) takes over
        procs.start("l2", "launcher", env={**ENV, "CONVEYOR_LAUNCHER__NAME": "l2"})

        # Then the reaper frees the slot and both items reach done
        drive(client, first, "done", deadline_s=120)
        drive(client, second["task"]["id"], "done", deadline_s=120)
        reaper = client.request(subjects.status_actor("reaper"))
        assert reaper["reaped_total"] >= 1
        # Counted only once applied, and under the reference's names too
        assert reaper["requested_total"] >= reaper["reaped_total"]
        assert reaper["interval"] == reaper["interval_s"] == 0.2
        leases = client.request(subjects.status_actor("lease_keeper"))
        assert leases["lease_reclaimed_total"] == leases["reclaimed_total"]
        assert reaper["last_reaped"]["tier"] == 1
        assert reaper["last_reaped"]["job_id"].startswith(f"{first}.architecture.1")
        zombie = next(j for j in stored_jobs(client) if j.id == f"{first}.architecture.1.work")
        assert zombie.attempts == 2
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()
