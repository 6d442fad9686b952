"""Conveyor as separate processes (Procfile shape) and as one process, killed with -9."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.app.client import Client
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
