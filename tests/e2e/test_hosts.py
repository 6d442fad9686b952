"""Launchers on two hosts: a frozen or dead host's jobs are resolved after its silence.

Each launcher runs with its own `launcher.host_id`, so the control process (a
third host id) cannot probe their pids and must ask them. A host that neither
heartbeats nor answers for `launcher.host_silence_s` is dead: its running job is
reaped and retried by the other host. A frozen launcher that wakes up afterwards
does nothing for the attempt it lost: no commit reaches the forge, and it adopts
nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from actors.lease_policy import Lease, task_lease
from actors.queue_policy import Job
from bus import subjects
from bus.effects import Effect
from bus.messages import LeaseHolder
from conveyor import procs as procs_mod
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from tests.harness import CONFIG, Processes, drive, stored_jobs, wait_ready, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SILENCE_S = 2.0
ENV = {
    "CONVEYOR_REAPER__INTERVAL_S": "0.2",
    "CONVEYOR_REAPER__DEAD_TICKS": "2",
    "CONVEYOR_REAPER__HEARTBEAT_TIMEOUT_S": "1.0",
    "CONVEYOR_LAUNCHER__HOST_SILENCE_S": str(SILENCE_S),
}


def launcher_env(name: str, host: str) -> dict[str, str]:
    return {**ENV, "CONVEYOR_LAUNCHER__NAME": name, "CONVEYOR_LAUNCHER__HOST_ID": host}


def job_of(client: Client, role: str) -> Job | None:
    found = [j for j in stored_jobs(client) if j.role == role]
    return found[0] if found else None


def running_on(client: Client, role: str, host: str, attempt: int) -> Job | None:
    job = job_of(client, role)
    if job is None or job.status != "running" or job.pid is None:
        return None
    return job if (job.host, job.attempts) == (host, attempt) else None


def forge_subjects(data: Path) -> list[str]:
    bare = data / "forge" / "repos" / "demo.git"
    out = subprocess.run(
        ["git", "-C", str(bare), "log", "--all", "--format=%s"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.splitlines()


def test_a_frozen_host_is_resolved_after_its_silence_and_fenced_when_it_wakes(
    tmp_path: Path, nats_url: str
) -> None:
    # Given a control process and launcher `la` on host-a running a slow architect
    procs = Processes(tmp_path, nats_url)
    procs.start("control", "control", env=ENV)
    la = procs.start("la", "launcher", env=launcher_env("la", "host-a"))
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        task = client.command(
            "submit", {"repo": "demo", "title": "Frozen", "description": "demo: architect=slow:5"}
        )["task"]["id"]
        drive(client, task, "architecture")
        procs.start("lb", "launcher", env=launcher_env("lb", "host-b"))
        first = wait_until(
            lambda: running_on(client, "architect", "host-a", 1), what="architect on a"
        )

        # When host-a freezes (SIGSTOP) past the silence, its agent still working
        os.kill(la.pid, signal.SIGSTOP)
        try:
            # (so la was not in the post-steps: they start once the agent exits)
            assert procs_mod.alive(first.pid or 0, first.create_time), "agent ended too soon"
            # Then its job is reaped and run again on host-b
            wait_until(
                lambda: running_on(client, "architect", "host-b", 2),
                what="architect retried on host-b",
                deadline_s=30,
            )
        finally:
            os.kill(la.pid, signal.SIGCONT)
        reaper = client.request(subjects.status_actor("reaper"))
        assert reaper["last_reaped"]["tier"] == 1
        assert "host host-a silent" in reaper["last_reaped"]["reason"]

        # And once woken, host-a gives its lost attempt up and pushes nothing for it
        la_log = tmp_path / "la.log"
        wait_until(
            lambda: "superseded" in la_log.read_text(errors="replace"),
            what="la fenced off its lost attempt",
            deadline_s=30,
        )
        drive(client, task, "development", "review", "testing", deadline_s=60)
        architect = [s for s in forge_subjects(procs.data) if s.startswith(f"architect: {task}")]
        assert len(architect) == 1, architect
        assert "attempt 2" in architect[0]
        opened = [
            line
            for line in (procs.data / "forge" / "effects.jsonl").read_text().splitlines()
            if '"pr_opened"' in line
        ]
        assert len(opened) == 1
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()


def test_a_host_killed_with_its_agents_is_resolved_after_its_silence(
    tmp_path: Path, nats_url: str
) -> None:
    # Given a developer running on host-a, and host-b idle
    procs = Processes(tmp_path, nats_url)
    procs.start("control", "control", env=ENV)
    procs.start("la", "launcher", env=launcher_env("la", "host-a"))
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        task = client.command(
            "submit", {"repo": "demo", "title": "Dead", "description": "demo: developer=slow:6"}
        )["task"]["id"]
        drive(client, task, "development")
        job = wait_until(lambda: running_on(client, "developer", "host-a", 1), what="dev on a")
        procs.start("lb", "launcher", env=launcher_env("lb", "host-b"))
        wait_until(lambda: "launcher.started" in (tmp_path / "lb.log").read_text(), what="lb up")

        # When the whole host dies: its launcher and its agent, kill -9
        assert job.pid is not None
        os.killpg(job.pid, signal.SIGKILL)
        procs.kill("la")

        # Then, after the silence, the job runs again on host-b, with one alert for host-a
        wait_until(
            lambda: running_on(client, "developer", "host-b", 2),
            what="developer retried on host-b",
            deadline_s=30,
        )
        reaper = client.request(subjects.status_actor("reaper"))
        assert reaper["reaped_total"] == 1
        assert "host host-a silent" in reaper["last_reaped"]["reason"]
        control_log = (tmp_path / "control.log").read_text()
        assert control_log.count('"reaper.host_silent"') == 1
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()


# The harness's configuration with a CI check that takes a while, so a job is still
# running when its host is frozen.
SLOW_CI = CONFIG.replace(
    '["{{python}}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]',
    '["{{python}}", "-c", "import time; time.sleep(2)"]',
)
assert SLOW_CI != CONFIG


def transition_holder(client: Client, task: str) -> LeaseHolder | None:
    entry = client.bus.store(subjects.BUCKET_LEASES, Lease).get(task_lease(task))
    return entry.value.holder if entry is not None else None


def test_a_host_frozen_holding_a_transition_lease_loses_it_and_acts_no_more_on_waking(
    tmp_path: Path, nats_url: str
) -> None:
    # Given la on host-a in an architect's post-steps, holding the task's transition
    # lease while the forge's CI (2 s) runs
    procs = Processes(tmp_path, nats_url)
    procs.config.write_text(SLOW_CI.format(data=procs.data, url=nats_url))
    procs.start("control", "control", env=ENV)
    la = procs.start("la", "launcher", env=launcher_env("la", "host-a"))
    client = Client(nats_url)
    try:
        wait_ready(client, procs)
        task = client.command("submit", {"repo": "demo", "title": "Held"})["task"]["id"]
        drive(client, task, "architecture")
        procs.start("lb", "launcher", env=launcher_env("lb", "host-b"))

        def _held_by_a() -> LeaseHolder | None:
            found = transition_holder(client, task)
            if found is None or found.host != "host-a" or ".architecture." not in found.job_id:
                return None
            return found

        wait_until(_held_by_a, what="la holding the architect's transition lease")

        # When host-a freezes past the silence
        os.kill(la.pid, signal.SIGSTOP)
        try:
            # Then its lease is reclaimed and the job re-run on host-b, which takes it
            wait_until(
                lambda: running_on(client, "architect", "host-b", 2),
                what="architect retried on host-b",
                deadline_s=30,
            )
            leases = client.request(subjects.status_actor("lease_keeper"))
            assert leases["reclaimed_total"] == 1
        finally:
            os.kill(la.pid, signal.SIGCONT)
        woke_at = SystemClock().now()

        # And once woken, la does nothing more: the task moves on with host-b's work,
        # no effect is recorded by la after it woke, and its late release frees nothing
        drive(client, task, "development", "review", "testing", deadline_s=60)
        effects = client.bus.store(subjects.BUCKET_EFFECTS, Effect).load_all().values()
        late = [e.value.key for e in effects if e.value.by == "la" and e.value.started_at > woke_at]
        assert late == []
        opened = [
            line
            for line in (procs.data / "forge" / "effects.jsonl").read_text().splitlines()
            if '"pr_opened"' in line
        ]
        assert len(opened) == 1
        reaper = client.request(subjects.status_actor("reaper"))
        assert "host host-a silent" in reaper["last_reaped"]["reason"]
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()
