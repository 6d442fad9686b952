"""Reaper on a real nats-server: dead executors are reaped, heartbeats hold it off.

The QueueWorker is a stand-in answering the running jobs, and a bus stand-in that
applies every reap (answers `JobReaped`), except where the real QueueWorker decides.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from actors import reaper as reaper_module
from actors.queue_policy import Job, RunningSnapshot
from bus import subjects
from bus.bridge import Bus
from bus.messages import (
    Alert,
    JobFinished,
    JobOutcome,
    JobReaped,
    JobRequested,
    JobStarted,
    LaunchOrder,
    ReapJob,
    RunHeartbeat,
)
from conveyor.config import Config
from tests.actors.conftest import ActorUnderTest, Captured, StartActor, received
from tests.harness import make_config, wait_until

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


def apply_every_reap(bus: Bus) -> None:
    """Play the QueueWorker's answer: every reap is applied and comes back as `JobReaped`."""

    def _apply(reap: ReapJob) -> None:
        bus.publish_core(subjects.JOBS_REAPED, JobReaped(**msgspec.structs.asdict(reap)))

    bus.subscribe_core(subjects.JOBS_REAP, msgspec.json.Decoder(ReapJob), _apply)


def start_reaper(start_actor: StartActor, stub: Any, job: Job) -> ActorUnderTest:
    def _snapshot(message: Any) -> Any:
        return [job] if isinstance(message, RunningSnapshot) else None

    worker: pykka.ActorRef[Any] = stub(_snapshot)
    reaper = start_actor("reaper", queue_worker=worker)
    apply_every_reap(reaper.bus)
    return reaper


def reaped_total(reaper: ActorUnderTest, count: int) -> dict[str, Any]:
    """The status once `count` applied reaps came back to the Reaper."""
    found: dict[str, Any] = wait_until(
        lambda: (lambda status: status if status["reaped_total"] == count else None)(
            reaper.status()
        ),
        what=f"reaped_total {count}",
    )
    return found


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

    assert reaped_total(reaper, 1)["reaped_total"] == 1
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
    assert reaped_total(reaper, 1)["reaped_total"] == 1
    (reap,) = reaps.wait_for(ReapJob, what="the reap once heartbeats stopped")
    assert (reap.job_id, reap.tier) == (JOB_ID, 1)


# --- failures are isolated, and the pass goes on ------------------------------------------


def test_a_job_whose_observation_raises_does_not_stop_the_pass_and_is_alerted_once(
    start_actor: StartActor, stub: Any, dead_pid: int, cfg: Config, monkeypatch: Any
):
    # Given two dead jobs, and a run record whose read raises for the first one only
    broken = msgspec.structs.replace(running_job(dead_pid), id="DEMO-2.development.1.work")
    healthy = running_job(dead_pid)
    worker: pykka.ActorRef[Any] = stub(
        lambda m: [broken, healthy] if isinstance(m, RunningSnapshot) else None
    )
    reaper = start_actor("reaper", queue_worker=worker)
    apply_every_reap(reaper.bus)
    reaps = Captured(reaper.bus, subjects.JOBS_REAP)
    alerts = Captured(reaper.bus, subjects.ALERTS)
    real_key = reaper_module.run_key

    def _key(job_id: str, attempt: int) -> str:
        if job_id == broken.id:
            raise OSError("run record unreadable")
        return real_key(job_id, attempt)

    monkeypatch.setattr(reaper_module, "run_key", _key)

    # When the Reaper passes three times past its warm-up
    first = reaper.tick(cfg.reaper.heartbeat_timeout_s)
    reaper.tick(cfg.reaper.interval_s)
    last = reaper.tick(cfg.reaper.interval_s)

    # Then the healthy job is reaped and the broken one is not (its liveness is unknown)
    (reap,) = reaps.wait_for(ReapJob, what="the reap of the healthy job")
    assert reap.job_id == JOB_ID
    assert reaped_total(reaper, 1)["last_reaped"]["job_id"] == JOB_ID
    # and every pass stamped its time
    assert last["last_run_ts"] > first["last_run_ts"] > 0
    # and the broken job raised one alert over three passes
    (alert,) = alerts.wait_for(Alert, what="the alert about the unobservable job")
    assert alert.task_id == "DEMO-1"
    assert broken.id in alert.text
    assert "run record unreadable" in alert.text
    marker = Alert(level="info", text="marker", source="test")
    reaper.bus.publish(subjects.ALERTS, marker, msg_id="test:marker")
    alerts.wait_for(Alert, 2, what="the marker after any other alert")
    assert [a.text for a in alerts.of(Alert)] == [alert.text, "marker"]


def test_a_failed_listing_still_stamps_the_pass_alerts_once_and_the_next_pass_recovers(
    start_actor: StartActor, stub: Any, dead_pid: int, cfg: Config
):
    # Given a QueueWorker that cannot list its running jobs for two passes
    failures = [RuntimeError("jobs unavailable")] * 2

    def _snapshot(message: Any) -> Any:
        if not isinstance(message, RunningSnapshot):
            return None
        if failures:
            raise failures.pop()
        return [running_job(dead_pid)]

    reaper = start_actor("reaper", queue_worker=stub(_snapshot))
    apply_every_reap(reaper.bus)
    alerts = Captured(reaper.bus, subjects.ALERTS)

    # When the Reaper passes
    warm = reaper.tick(0.0)
    blind = reaper.tick(cfg.reaper.heartbeat_timeout_s)
    still = reaper.tick(cfg.reaper.interval_s)

    # Then each pass moved last_run_ts (the warm-up pass too) and says why it is blind
    assert 0 < warm["last_run_ts"] < blind["last_run_ts"] < still["last_run_ts"]
    assert "jobs unavailable" in still["last_error"]
    assert still["healthy"]
    (alert,) = alerts.wait_for(Alert, what="one alert for the outage")
    assert "cannot list the running jobs" in alert.text
    # and once the listing works again, the dead job is judged and reaped
    recovered = reaper.tick(cfg.reaper.interval_s)
    assert (recovered["last_error"], recovered["streaks"]) == ("", 1)
    reaper.tick(cfg.reaper.interval_s)
    assert reaped_total(reaper, 1)["last_reaped"]["job_id"] == JOB_ID
    assert len(alerts.of(Alert)) == 1


def test_a_pid_the_reaper_cannot_judge_is_never_counted_dead(
    start_actor: StartActor, stub: Any, cfg: Config
):
    # Given a running job whose pid exists but whose start time was never recorded
    job = msgspec.structs.replace(running_job(os.getpid()), create_time=None)
    reaper = start_reaper(start_actor, stub, job)

    # When the Reaper passes many times (within the backstop)
    reaper.tick(cfg.reaper.heartbeat_timeout_s)
    for _ in range(5):
        status = reaper.tick(cfg.reaper.interval_s)

    # Then no dead streak starts and nothing is requested
    assert (status["streaks"], status["requested_total"], status["reaped_total"]) == (0, 0, 0)


# --- the kill switch -------------------------------------------------------------------------


def test_with_the_reaper_switched_off_passes_run_but_nothing_is_listed_or_reaped(
    start_actor: StartActor, stub: Any, dead_pid: int, tmp_path: Path, nats_url: str
):
    # Given reaper.enabled = false and a dead job far past every tier
    off = make_config(tmp_path / "off", nats_url, reaper={"enabled": False})
    job = msgspec.structs.replace(running_job(dead_pid), claimed_at=0.0)
    worker = stub(lambda m: [job] if isinstance(m, RunningSnapshot) else None)
    reaper = start_actor("reaper", config=off, queue_worker=worker)
    reaps = Captured(reaper.bus, subjects.JOBS_REAP)

    # When it passes several times
    before = reaper.tick(off.reaper.heartbeat_timeout_s)
    for _ in range(3):
        status = reaper.tick(off.reaper.max_running_s)

    # Then it answers its status as documented, and never asked for the running jobs
    assert status["enabled"] is False
    assert status["last_run_ts"] > before["last_run_ts"] > 0
    assert (status["streaks"], status["requested_total"], status["reaped_total"]) == (0, 0, 0)
    assert received(worker, RunningSnapshot) == []
    marker = ReapJob(job_id="marker", attempt=1, tier=1)
    reaper.bus.publish(subjects.JOBS_REAP, marker, msg_id="test:marker")
    assert [r.job_id for r in reaps.wait_for(ReapJob, what="the marker")] == ["marker"]


# --- with the real QueueWorker ---------------------------------------------------------------


def request(task_id: str, repo: str) -> JobRequested:
    return JobRequested(
        job_id=f"{task_id}.development.1.work",
        task_id=task_id,
        repo=repo,
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/{task_id}",
        title=f"work on {task_id}",
    )


def started(req: JobRequested, pid: int) -> JobStarted:
    return JobStarted(
        job_id=req.job_id,
        attempt=1,
        run_id=f"{req.job_id}.1",
        host=socket.gethostname(),
        pid=pid,
        create_time=1.0,
        log_path="/dev/null",
        started_at=1.0,
    )


def send(bus: Bus, subject: str, msg: Any) -> None:
    bus.publish(subject, msg, msg_id=f"test:{type(msg).__name__}:{msg.job_id}")


def stored(worker: ActorUnderTest, job_id: str) -> Job:
    entry = worker.store().get(job_id)
    assert entry is not None, f"job {job_id} is not stored"
    job: Job = entry.value
    return job


def has(worker: ActorUnderTest, job_id: str, **fields: Any) -> bool:
    """Whether the stored job exists and has these field values."""
    entry = worker.store().get(job_id)
    return entry is not None and all(getattr(entry.value, k) == v for k, v in fields.items())


def test_a_zombie_at_its_last_attempt_fails_with_one_alert_while_another_repo_starts(
    start_actor: StartActor, dead_pid: int, tmp_path: Path, nats_url: str
):
    # Given one slot for the whole daemon, one attempt per job, and the real QueueWorker
    config = make_config(
        tmp_path / "zombie", nats_url, queue={"max_concurrency": 1, "max_attempts": 1}
    )
    worker = start_actor("queue_worker", config=config)
    reaper = start_actor("reaper", config=config, queue_worker=worker.ref)
    orders = Captured(worker.bus, subjects.LAUNCH_ORDERS)
    alerts = Captured(worker.bus, subjects.ALERTS)
    outcomes = Captured(worker.bus, subjects.JOBS_OUTCOME)
    zombie, waiting = request("DEMO-1", "demo"), request("OTHER-1", "other")
    send(worker.bus, subjects.JOBS_REQUESTED, zombie)
    orders.wait_for(LaunchOrder, what="the zombie's launch")
    send(worker.bus, subjects.JOBS_REQUESTED, waiting)
    # whose executor died without a report, while another repository's job waits
    send(worker.bus, subjects.JOBS_STARTED, started(zombie, dead_pid))
    wait_until(lambda: has(worker, zombie.job_id, pid=dead_pid), what="pid stored")
    assert stored(worker, waiting.job_id).status == "queued"

    # When the Reaper passes until the dead streak is long enough
    reaper.tick(config.reaper.heartbeat_timeout_s)
    reaper.tick(config.reaper.interval_s)

    # Then the zombie fails, the other repository's job is launched
    (_, order) = orders.wait_for(LaunchOrder, 2, what="the waiting job's launch")
    assert order.job_id == waiting.job_id
    (outcome,) = outcomes.wait_for(JobOutcome, what="the zombie's outcome")
    assert (outcome.job_id, outcome.status) == (zombie.job_id, "failed")
    assert reaped_total(reaper, 1)["last_reaped"]["job_id"] == zombie.job_id
    # and more passes change nothing: exactly one alert, one reap
    for _ in range(3):
        status = reaper.tick(config.reaper.interval_s)
    assert (status["requested_total"], status["reaped_total"]) == (1, 1)
    marker = Alert(level="info", text="marker", source="test")
    worker.bus.publish(subjects.ALERTS, marker, msg_id="test:zombie-marker")
    alerts.wait_for(Alert, 2, what="the marker after the zombie's alert")
    (failed, _) = alerts.of(Alert)
    assert (failed.level, failed.task_id) == ("error", "DEMO-1")
    assert "failed after 1 attempts" in failed.text


def test_a_reap_that_lost_the_race_to_a_late_finisher_counts_nothing(
    start_actor: StartActor, stub: Any, dead_pid: int, tmp_path: Path, nats_url: str
):
    # Given two running jobs in the real QueueWorker, both with a dead pid
    config = make_config(tmp_path / "race", nats_url, queue={"max_attempts": 1})
    worker = start_actor("queue_worker", config=config)
    late, dead = request("DEMO-1", "demo"), request("OTHER-1", "other")
    for req in (late, dead):
        send(worker.bus, subjects.JOBS_REQUESTED, req)
        send(worker.bus, subjects.JOBS_STARTED, started(req, dead_pid))
    wait_until(
        lambda: all(has(worker, r.job_id, pid=dead_pid) for r in (late, dead)),
        what="both jobs started",
    )
    # and a Reaper that saw them both running just before the first one's late report
    snapshot = [stored(worker, late.job_id), stored(worker, dead.job_id)]
    reaper = start_actor(
        "reaper",
        config=config,
        queue_worker=stub(lambda m: snapshot if isinstance(m, RunningSnapshot) else None),
    )
    finished = JobFinished(job_id=late.job_id, attempt=1, run_id=f"{late.job_id}.1", exit_code=0)
    send(worker.bus, subjects.JOBS_FINISHED, finished)
    wait_until(lambda: has(worker, late.job_id, status="done"), what="late finish")

    # When the Reaper asks for both reaps
    reaper.tick(config.reaper.heartbeat_timeout_s)
    status = reaper.tick(config.reaper.interval_s)
    assert status["requested_total"] == 2

    # Then only the applied one is counted (the QueueWorker handles reaps in order)
    status = reaped_total(reaper, 1)
    assert status["last_reaped"]["job_id"] == dead.job_id
    assert stored(worker, late.job_id).status == "done"
    assert reaper.status()["reaped_total"] == 1
