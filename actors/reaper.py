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
from bus.messages import Alert, JobReaped, ReapJob, RunHeartbeat, Tick
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
        # Attempts whose observation failed, alerted once each; and whether the
        # running jobs could not be listed (alerted once per outage).
        self._unobservable: set[tuple[str, int]] = set()
        self._blind = False
        self._next_tick = 0.0
        # No verdicts until launchers had time to heartbeat: a control process that just
        # restarted knows no finalizer yet.
        self._warm_until = clock.now() + cfg.heartbeat_timeout_s

    def handle(self, message: Any) -> Any:
        match message:
            case RunHeartbeat():
                # Our own clock, not the sender's: hosts' clocks may disagree.
                self._beats[(message.job_id, message.attempt)] = self._clock.now()
            case JobReaped():
                self._state = policy.applied(self._state, message, now=self._clock.now())
                log.info(
                    "reaper.reap_applied",
                    job_id=message.job_id,
                    attempt=message.attempt,
                    tier=message.tier,
                )
            case Tick():
                now = self._clock.now()
                if now >= self._next_tick:
                    self._next_tick = now + self._cfg.interval_s
                    if now >= self._warm_until:
                        self._tick(now)
                    else:
                        self._state = policy.without_verdict(self._state, now=now)
            case ReaperStatus():
                return {"healthy": True, **policy.reaper_status(self._state, self._cfg)}
        return None

    def _tick(self, now: float) -> None:
        jobs = self._running(now) if self._cfg.enabled else []
        if jobs is None:
            return
        snapshot = [self._observe_isolated(job) for job in jobs if job.attempts > 0]
        decision = policy.decide(self._state, snapshot, now=now, cfg=self._cfg)
        self._state = decision.state
        for reap in decision.reaps:
            try:
                self._request(reap)
            except Exception:
                # One failed request must not hold back the others; the job is
                # still running, so a later pass judges it again.
                log.exception("reaper.reap_request_failed", job_id=reap.job_id)
        running = {(job.id, job.attempts) for job in jobs}
        self._beats = {k: v for k, v in self._beats.items() if k in running}
        self._unobservable &= running

    def _running(self, now: float) -> list[Job] | None:
        """The running jobs, or None when the QueueWorker could not list them."""
        try:
            answer: Any = self._worker.ask(RunningSnapshot(), timeout=SNAPSHOT_TIMEOUT_S)
            jobs: list[Job] = list(answer)
        except Exception as err:  # noqa: BLE001 - a failed listing is a pass without verdict
            error = f"{type(err).__name__}: {err}"
            self._state = policy.without_verdict(self._state, now=now, error=error)
            log.warning("reaper.snapshot_failed", error=error)
            if not self._blind:
                self._blind = True
                self._alert(f"Reaper cannot list the running jobs: {error}", "", f"blind:{now}")
            return None
        self._blind = False
        return jobs

    def _observe_isolated(self, job: Job) -> RunningJob:
        """`_observe`, or what the job record alone says when observing it raises.

        The record keeps the backstop (claimed_at) and heartbeats; the liveness
        stays unknown, which never counts toward a dead streak.
        """
        try:
            return self._observe(job)
        except Exception as err:
            key = (job.id, job.attempts)
            log.exception("reaper.observe_failed", job_id=job.id, attempt=job.attempts)
            if key not in self._unobservable:
                self._unobservable.add(key)
                text = f"Reaper cannot observe job {job.id} attempt {job.attempts}: {err}"
                self._alert(text, job.task_id, f"observe:{job.id}:{job.attempts}")
        return self._snapshot(job)

    def _snapshot(
        self,
        job: Job,
        liveness: str = policy.UNKNOWN,
        exit_code: int | None = None,
        exit_at: float | None = None,
    ) -> RunningJob:
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

    def _alert(self, text: str, task_id: str, key: str) -> None:
        alert = Alert(
            level="error", text=text, task_id=task_id, source="reaper", at=self._clock.now()
        )
        try:
            self._bus.emit(alert, msg_id=f"reaper:{key}")
        except Exception:
            log.exception("reaper.alert_failed", text=text)

    def _request(self, reap: policy.Reap) -> None:
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

    def _observe(self, job: Job) -> RunningJob:
        """What can be known of one running job: liveness, recorded exit code, heartbeat."""
        liveness = policy.UNKNOWN
        if job.pid is not None and job.host == self._host:
            # Only a provably dead pid counts toward a reap; uncertain is not dead.
            probed = procs.probe(job.pid, job.create_time)
            liveness = {procs.ALIVE: policy.ALIVE, procs.DEAD: policy.DEAD}.get(
                probed, policy.UNKNOWN
            )
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
        return self._snapshot(job, liveness, exit_code, exit_at)
