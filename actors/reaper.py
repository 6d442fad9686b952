"""Reaper: heals jobs left `running` whose executor died, without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pykka

from actors import reaper_policy as policy
from actors.hosts import HostWatch
from actors.launcher_policy import Run, run_key
from actors.owner import Owner
from actors.queue_policy import Job, RunningSnapshot
from actors.reaper_policy import ReaperState, RunningJob
from bus.bridge import Bus, Store
from bus.messages import Alert, JobReaped, ReapJob, RunHeartbeat, Tick
from bus.messages_hosts import HostHeartbeat, LivenessQuery, RunLiveness
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
        *,
        host: str = "",
        silence_s: float = 60.0,
    ) -> None:
        super().__init__()
        self._bus, self._worker, self._runs, self._clock, self._cfg = bus, worker, runs, clock, cfg
        # Pids are probed here only for this host; other hosts answer for their own.
        self._host = procs.host_id(host)
        self._hosts = HostWatch(bus, clock, silence_s=silence_s)
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

    def on_start(self) -> None:
        self._hosts.listen(self.actor_ref.tell)

    def handle(self, message: Any) -> Any:
        match message:
            case RunHeartbeat():
                # Our own clock, not the sender's: hosts' clocks may disagree.
                self._beats[(message.job_id, message.attempt)] = self._clock.now()
            case HostHeartbeat():
                self._hosts.heard(message)
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
                    interval = self._cfg.interval_s
                    self._next_tick = now + interval
                    if now >= self._warm_until:
                        self._tick(now)
                        # A slow pass (a host that did not answer in time) must not make the
                        # ticks queued meanwhile a burst of passes: dead ticks are apart.
                        self._next_tick = max(self._next_tick, self._clock.now() + interval)
                    else:
                        self._state = policy.without_verdict(self._state, now=now)
            case ReaperStatus():
                return {"healthy": True, **policy.reaper_status(self._state, self._cfg)}
        return None

    def _tick(self, now: float) -> None:
        jobs = self._running(now) if self._cfg.enabled else []
        if jobs is None:
            return
        live = [job for job in jobs if job.attempts > 0]
        answers = self._ask_hosts(live, now)
        snapshot = [self._observe_isolated(job, answers) for job in live]
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

    def _host_of(self, job: Job) -> str:
        """The host running `job`: from its start report, else from its run record."""
        if job.host:
            return job.host
        entry = self._runs.get(run_key(job.id, job.attempts))
        return entry.value.host if entry is not None else ""

    def _ask_hosts(self, jobs: list[Job], now: float) -> dict[str, dict[str, RunLiveness] | None]:
        """Each other host's answer for its running jobs (None: it did not answer)."""
        asked: dict[str, list[str]] = {}
        for job in jobs:
            try:
                host = self._host_of(job)
            except Exception:  # noqa: BLE001 - judged alone by `_observe_isolated`
                host = ""
            if host and host != self._host:
                asked.setdefault(host, []).append(run_key(job.id, job.attempts))
        answers: dict[str, dict[str, RunLiveness] | None] = {}
        for host, keys in asked.items():
            found = self._hosts.ask(host, LivenessQuery(runs=keys))
            answers[host] = (
                None if found is None else {run_key(r.job_id, r.attempt): r for r in found.runs}
            )
            if found is None and self._hosts.silent(host) and self._hosts.alert_due(host):
                silent_s = self._hosts.silence(host)
                text = (
                    f"Host {host} silent for {silent_s:.0f}s (no heartbeat, no answer): its "
                    f"{len(keys)} running job(s) are reaped as dead and retried elsewhere"
                )
                log.warning("reaper.host_silent", host=host, jobs=len(keys), silent_s=silent_s)
                self._alert(text, "", f"host:{host}:{now:.0f}")
        return answers

    def _observe_isolated(
        self, job: Job, answers: dict[str, dict[str, RunLiveness] | None]
    ) -> RunningJob:
        """`_observe`, or what the job record alone says when observing it raises.

        The record keeps the backstop (claimed_at) and heartbeats; the liveness
        stays unknown, which never counts toward a dead streak.
        """
        try:
            return self._observe(job, answers)
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
        evidence: str = "",
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
            evidence=evidence,
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

    def _observe(self, job: Job, answers: dict[str, dict[str, RunLiveness] | None]) -> RunningJob:
        """What can be known of one running job: liveness, recorded exit code, heartbeat."""
        entry = self._runs.get(run_key(job.id, job.attempts))
        run = entry.value if entry is not None else None
        host = job.host or (run.host if run is not None else "")
        if host and host != self._host:
            return self._observe_remote(job, run, host, answers.get(host))
        liveness = policy.UNKNOWN
        if job.pid is not None and job.host == self._host:
            # Only a provably dead pid counts toward a reap; uncertain is not dead.
            boot = run.boot_id if run is not None else ""
            liveness = _LIVENESS.get(procs.probe_on_boot(job.pid, job.create_time, boot), liveness)
        exit_code: int | None = None
        exit_at: float | None = None
        if run is not None:
            if run.status == "finished":
                # A failed post-step (push, PR) makes a clean exit code a failure.
                exit_code = run.exit_code if not run.error else None
                exit_at = run.finished_at
            elif run.host == self._host and run.run_dir:
                recorded = runwrap.read_exit_file(Path(run.run_dir) / "exit_code")
                if recorded is not None:
                    exit_code, exit_at = recorded
        return self._snapshot(job, liveness, exit_code, exit_at)

    def _observe_remote(
        self, job: Job, run: Run | None, host: str, said: dict[str, RunLiveness] | None
    ) -> RunningJob:
        """A job on another host, as that host answered; a silent host's jobs are dead."""
        if run is not None and run.status == "finished":
            code = run.exit_code if not run.error else None
            gone = policy.DEAD if said is None and self._hosts.silent(host) else policy.UNKNOWN
            return self._snapshot(job, gone, code, run.finished_at)
        if said is None:
            if not self._hosts.silent(host):
                return self._snapshot(job, policy.UNKNOWN)
            why = f"host {host} silent for {self._hosts.silence(host):.0f}s"
            return self._snapshot(job, policy.DEAD, evidence=why)
        found = said.get(run_key(job.id, job.attempts))
        if found is None or not found.known:
            return self._snapshot(job, policy.UNKNOWN)
        exit_at = None if found.exit_age_s is None else self._clock.now() - found.exit_age_s
        liveness = _LIVENESS.get(found.liveness, policy.UNKNOWN)
        return self._snapshot(job, liveness, found.exit_code, exit_at, evidence=f"on {host}")


_LIVENESS = {procs.ALIVE: policy.ALIVE, procs.DEAD: policy.DEAD}
