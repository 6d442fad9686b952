"""Conveyor as separate processes (Procfile shape) and as one process, killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.queue_policy import Job
from bus import subjects
from conveyor.client import Client
from tests.harness import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
data_dir = "{data}"
[nats]
url = "{url}"
[queue]
tick_s = 0.1
backoff_base_s = 0.05
backoff_max_s = 0.2
[launcher]
kill_grace_s = 1.0
[log]
level = "info"
format = "json"
[[repos]]
name = "demo"
prefix = "DEMO"
template = "demo"
check_command = ["{{python}}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
"""


class Processes:
    """Starts `conveyor up --parts ...` processes and kills them like an operator's bad day."""

    def __init__(self, tmp: Path, url: str = "") -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.config = tmp / "config.toml"
        self.config.write_text(CONFIG.format(data=self.data, url=url))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, parts: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor.cli",
                "--config",
                str(self.config),
                "up",
                "--parts",
                parts,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self.tmp,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("*.log"))


@pytest.fixture
def processes(tmp_path: Path, nats_url: str) -> Iterator[Processes]:
    procs = Processes(tmp_path, nats_url)
    yield procs
    procs.stop_all()


def _client(url: str) -> Client:
    return Client(url)


def _wait_ready(client: Client, procs: Processes) -> None:
    def _ready() -> bool:
        try:
            status = client.request(subjects.STATUS)
        except Exception:
            return False
        return bool(status.get("healthy"))

    try:
        wait_until(_ready, what="conveyor healthy", deadline_s=60)
    except AssertionError:
        raise AssertionError(procs.logs()) from None


def _drive(client: Client, item: str, *stages: str, deadline_s: float = 90) -> dict:
    def _check() -> dict | None:
        try:
            task = client.request(subjects.status_task(item))
        except Exception:
            return None
        if task.get("stage") == "analysis" and "awaiting approval" in task.get("last_reason", ""):
            client.command("approve", {"id": item})
        return task if task.get("stage") in stages else None

    result: dict = wait_until(_check, what=f"{item} in {stages}", deadline_s=deadline_s)
    return result


def _jobs(client: Client) -> list[Job]:
    return [e.value for e in client.bus.store(subjects.BUCKET_JOBS, Job).load_all().values()]


def test_procfile_parts_deliver_an_item_as_separate_processes(
    processes: Processes, nats_url: str
) -> None:
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = _client(nats_url)
    try:
        _wait_ready(client, processes)
        reply = client.command("submit", {"repo": "demo", "title": "Split processes"})
        assert reply["ok"], reply
        _drive(client, reply["task"]["id"], "done")
    finally:
        client.close()


def test_killing_control_and_launcher_mid_stage_loses_and_repeats_nothing(
    processes: Processes, nats_url: str
) -> None:
    # Given an item whose developer takes a few seconds
    processes.start("control", "control")
    processes.start("launcher", "launcher")
    client = _client(nats_url)
    try:
        _wait_ready(client, processes)
        item = client.command(
            "submit",
            {"repo": "demo", "title": "Survives kill", "description": "demo: developer=slow:3"},
        )["task"]["id"]
        _drive(client, item, "development")
        wait_until(
            lambda: any(j.role == "developer" and j.pid for j in _jobs(client)),
            what="developer started",
        )

        # When both Conveyor processes are killed -9 while the agent works, then restarted
        processes.kill("control")
        processes.kill("launcher")
        processes.start("control", "control")
        processes.start("launcher", "launcher")

        # Then the item reaches done, the developer ran once, and one PR was merged once
        _drive(client, item, "done")
        dev = [j for j in _jobs(client) if j.role == "developer"]
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
        client = _client(url)
        _wait_ready(client, procs)
        item = client.command(
            "submit",
            {"repo": "demo", "title": "Whole daemon dies", "description": "demo: architect=slow:2"},
        )["task"]["id"]
        _drive(client, item, "architecture")
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
        client = _client(url)
        _wait_ready(client, procs)
        _drive(client, item, "done")
        arch = [j for j in _jobs(client) if j.role == "architect"]
        assert [j.status for j in arch] == ["done"]
        client.close()
    finally:
        procs.stop_all()
