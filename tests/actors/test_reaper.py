"""Reaper alone on a real nats-server: dead executors are reaped, heartbeats hold it off."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pykka
import pytest

from actors.queue_policy import Job, RunningSnapshot
from bus import subjects
from bus.messages import ReapJob, RunHeartbeat
from conveyor.config import Config
from tests.actors.conftest import ActorUnderTest, Captured, StartActor

JOB_ID = "DEMO-1.development.1.work"


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (and was waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def running_job(pid: int) -> Job:
    return Job(
        id=JOB_ID,
        task_id="DEMO-1",
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="conveyor/DEMO-1",
        title="t",
        status="running",
        attempts=1,
        claimed_at=1_000_000.0,
        host=socket.gethostname(),
        pid=pid,
        create_time=1.0,
    )


def start_reaper(start_actor: StartActor, stub: Any, job: Job) -> ActorUnderTest:
    def _snapshot(message: Any) -> Any:
        return [job] if isinstance(message, RunningSnapshot) else None

    worker: pykka.ActorRef[Any] = stub(_snapshot)
    return start_actor("reaper", queue_worker=worker)


def heartbeat(reaper: ActorUnderTest, beats: Captured, count: int) -> None:
    """Publish one heartbeat of the job and wait until it went round the server."""
    beat = RunHeartbeat(job_id=JOB_ID, attempt=1, launcher="l1", at=reaper.clock.now())
    reaper.bus.publish_core(subjects.HEARTBEATS, beat)
    beats.wait_for(RunHeartbeat, count, what=f"heartbeat {count}")


def test_a_dead_job_without_heartbeats_is_reaped_after_the_configured_dead_ticks(
    start_actor: StartActor, stub: Any, dead_pid: int, cfg: Config
):
    reaper = start_reaper(start_actor, stub, running_job(dead_pid))
    reaps = Captured(reaper.bus, subjects.JOBS_REAP)
    interval = cfg.reaper.interval_s
    assert cfg.reaper.dead_ticks == 2

    # No verdict while launchers may not have had time to heartbeat yet
    assert reaper.tick(interval)["streaks"] == 0
    # Past the warm-up, the first tick that sees the pid dead starts a streak
    status = reaper.tick(cfg.reaper.heartbeat_timeout_s)
    assert (status["streaks"], status["reaped_total"]) == (1, 0)

    status = reaper.tick(interval)

    assert status["reaped_total"] == 1
    (reap,) = reaps.wait_for(ReapJob, what="the reap of the dead job")
    assert (reap.job_id, reap.attempt, reap.tier, reap.exit_code) == (JOB_ID, 1, 1, None)
    assert f"dead pid={dead_pid}" in reap.reason


def test_heartbeats_hold_off_the_reap_of_a_dead_pid_until_they_stop(
    start_actor: StartActor, stub: Any, dead_pid: int, cfg: Config
):
    reaper = start_reaper(start_actor, stub, running_job(dead_pid))
    reaps = Captured(reaper.bus, subjects.JOBS_REAP)
    beats = Captured(reaper.bus, subjects.HEARTBEATS, RunHeartbeat)
    interval = cfg.reaper.interval_s
    reaper.tick(cfg.reaper.heartbeat_timeout_s)

    # While the launcher heartbeats, a dead agent pid only means its finalizer is busy
    for count in range(1, 5):
        heartbeat(reaper, beats, count)
        reaper.tick(interval)
    status = reaper.tick(interval)
    assert (status["streaks"], status["reaped_total"]) == (0, 0)

    # When the heartbeats stop, the dead ticks count again
    status = reaper.tick(cfg.reaper.heartbeat_timeout_s)
    assert (status["streaks"], status["reaped_total"]) == (1, 0)
    status = reaper.tick(interval)
    assert status["reaped_total"] == 1
    (reap,) = reaps.wait_for(ReapJob, what="the reap once heartbeats stopped")
    assert (reap.job_id, reap.tier) == (JOB_ID, 1)
