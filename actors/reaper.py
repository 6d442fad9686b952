"""Reaper: heals jobs left `running` whose executor died, without a restart."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import msgspec
import pykka

from actors import reaper_policy as policy
from actors.launcher_policy import Run, run_key
from actors.owner import Owner
from actors.queue_policy import Job, RunningSnapshot
from actors.reaper_policy import ReaperState, RunningJob
from bus.bridge import Bus, Store
from bus.messages import ReapJob, RunHeartbeat, Tick
from conveyor import procs, runwrap
from conveyor.clock import Clock
from conveyor.config import ReaperConfig
from conveyor.logs import get_logger

log = get_logger(__name__)

SNAPSHOT_TIMEOUT_S = 10.0


class ReaperStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> Reaper (ask)."""


class Reaper(Owner):
    """Sole owner of liveness streaks and reap figures; asks the QueueWorker to flip jobs."""

    name = "reaper"
    # A failed tick must not stop the reaper; the next one tries again.
    failed_event = "tick_failed"
    stops_when_fenced = False

    def __init__(
        self,
        bus: Bus,
        worker: pykka.ActorRef[Any],
        runs: Store[Run],
        clock: Clock,
        cfg: ReaperConfig,
    ) -> None:
        super().__init__()
        self._bus, self._worker, self._runs, self._clock, self._cfg = bus, worker, runs, clock, cfg
        self._host = socket.gethostname()
        self._state = ReaperState()
        self._beats: dict[tuple[str, int], float] = {}
        self._next_tick = 0.0
        # No verdicts until launchers had time to heartbeat: a control process that just
        # restarted knows no finalizer yet.
        self._warm_until = clock.now() + cfg.heartbeat_timeout_s

    def handle(self, message: Any) -> Any:
        match message:
            case RunHeartbeat():
                # Our own clock, not the sender's: hosts' clocks may disagree.
                self._beats[(message.job_id, message.attempt)] = self._clock.now()
            case Tick():
                now = self._clock.now()
                if now >= self._next_tick and now >= self._warm_until:
                    self._next_tick = now + self._cfg.interval_s
                    self._tick(now)
            case ReaperStatus():
                return {"healthy": True, **policy.reaper_status(self._state, self._cfg)}
        return None

    def _tick(self, now: float) -> None:
        answer: Any = self._worker.ask(RunningSnapshot(), timeout=SNAPSHOT_TIMEOUT_S)
        jobs: list[Job] = list(answer)
        snapshot = [self._observe(job) for job in jobs if job.attempts > 0]
        decision = policy.decide(self._state, snapshot, now=now, cfg=self._cfg)
        self._state = decision.state
        for reap in decision.reaps:
            log.warning(
                "reaper.job_reaped",
                job_id=reap.job_id,
                attempt=reap.attempt,
                tier=reap.tier,
                exit_code=reap.exit_code,
                reason=reap.reason,
            )
            self._bus.emit(
                ReapJob(
                    job_id=reap.job_id,
                    attempt=reap.attempt,
                    tier=reap.tier,
                    exit_code=reap.exit_code,
                    reason=reap.reason,
                ),
                msg_id=f"reap:{reap.job_id}:{reap.attempt}",
            )
        running = {(job.id, job.attempts) for job in jobs}
        self._beats = {k: v for k, v in self._beats.items() if k in running}

    def _observe(self, job: Job) -> RunningJob:
        """What can be known of one running job: liveness, recorded exit code, heartbeat."""
        liveness = policy.UNKNOWN
        if job.pid is not None and job.host == self._host:
            liveness = policy.ALIVE if procs.alive(job.pid, job.create_time) else policy.DEAD
        exit_code: int | None = None
        exit_at: float | None = None
        entry = self._runs.get(run_key(job.id, job.attempts))
        if entry is not None:
            run = entry.value
            if run.status == "finished":
                # A failed post-step (push, PR) makes a clean exit code a failure.
                exit_code = run.exit_code if not run.error else None
                exit_at = run.finished_at
            elif run.host == self._host and run.run_dir:
                recorded = runwrap.read_exit_file(Path(run.run_dir) / "exit_code")
                if recorded is not None:
                    exit_code, exit_at = recorded
        return RunningJob(
            job_id=job.id,
            attempt=job.attempts,
            repo=job.repo,
            role=job.role,
            claimed_at=job.claimed_at,
            pid=job.pid,
            liveness=liveness,
            exit_code=exit_code,
            exit_recorded_at=exit_at,
            last_heartbeat_at=self._beats.get((job.id, job.attempts)),
        )
