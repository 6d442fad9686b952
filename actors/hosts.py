"""Liveness across hosts: the question a control actor asks, and the answer a launcher gives.

`HostWatch` is what the Reaper and the LeaseKeeper each keep (on their own
thread) of the other hosts: when each was last heard, and whether it is silent
(`actors.host_policy`). `answer` is what a launcher replies on its host's
subject, probing on its own machine (pid + create time + boot id, exit file).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import msgspec
import psutil
import pykka

from actors import host_policy as policy
from actors import lease_policy
from actors.hot_jobs import HotJobs
from actors.launcher_policy import FINISHED, Run
from actors.queue_policy import RUNNING, Job
from bus import subjects
from bus.bridge import Bus, Store
from bus.messages import LeaseHolder, encode
from bus.messages_hosts import HostHeartbeat, LivenessAnswer, LivenessQuery, RunLiveness
from conveyor import procs, runwrap
from conveyor.clock import Clock
from conveyor.errors import ConveyorError
from conveyor.logs import get_logger

log = get_logger(__name__)

ANSWER_TIMEOUT_S = 1.0
"""A launcher answers from memory, KV and /proc in milliseconds; a longer wait is silence."""

_answers = msgspec.json.Decoder(LivenessAnswer)
_beats = msgspec.json.Decoder(HostHeartbeat)


class HostWatch:
    """One control actor's view of the other hosts; used on that actor's thread only."""

    def __init__(self, bus: Bus, clock: Clock, *, silence_s: float) -> None:
        self._bus, self._clock, self.silence_s = bus, clock, silence_s
        self.state = policy.HostState(since=clock.now())

    def listen(self, deliver: Callable[[HostHeartbeat], None]) -> None:
        """Hand every launcher's heartbeat to `deliver` (the actor's `tell`)."""

        def _deliver(beat: HostHeartbeat) -> None:
            # The subscription outlives an actor the supervisor replaced: drop its beats.
            with contextlib.suppress(pykka.ActorDeadError):
                deliver(beat)

        self._bus.subscribe_core(subjects.HOSTS_HEARTBEAT, _beats, _deliver)

    def heard(self, beat: HostHeartbeat) -> None:
        self.state = policy.heard(self.state, beat.host, beat.boot_id, now=self._clock.now())

    def silent(self, host: str) -> bool:
        return policy.is_silent(self.state, host, now=self._clock.now(), silence_s=self.silence_s)

    def silence(self, host: str) -> float:
        return policy.silence(self.state, host, now=self._clock.now())

    def alert_due(self, host: str) -> bool:
        self.state, due = policy.alert_due(self.state, host)
        return due

    def ask(self, host: str, query: LivenessQuery) -> LivenessAnswer | None:
        """The host's answer, or None: silent already, or no answer in time."""
        if self.silent(host):
            return None
        try:
            data = self._bus.request(
                subjects.host_liveness(host), encode(query), timeout_s=ANSWER_TIMEOUT_S
            )
            found = _answers.decode(data)
        except (ConveyorError, msgspec.DecodeError, msgspec.ValidationError) as err:
            log.info("hosts.unanswered", host=host, error=str(err))
            return None
        self.state = policy.heard(self.state, host, found.boot_id, now=self._clock.now())
        return found

    def holder_alive(self, holder: LeaseHolder, *, ask: bool) -> bool | None:
        """A holder on another host, judged by its host (asked when `ask`) or its silence."""
        said: str | None = None
        if ask:
            found = self.ask(holder.host, LivenessQuery(holders=[holder]))
            said = found.holders[0] if found is not None and found.holders else None
        return policy.holder_alive(
            self.state,
            holder.host,
            holder.boot_id,
            said,
            now=self._clock.now(),
            silence_s=self.silence_s,
        )


def run_liveness(run: Run | None, job_id: str, attempt: int, now: float) -> RunLiveness:
    """One run as this host sees it (`run` from this host's memory or KV; None: unknown)."""
    if run is None:
        return RunLiveness(job_id=job_id, attempt=attempt, liveness=procs.UNCERTAIN, known=False)
    if run.status == FINISHED:
        # The launcher finished it: nothing of it runs any more.
        probed = procs.DEAD
    else:
        probed = procs.probe_on_boot(run.pid, run.create_time, run.boot_id)
    recorded = runwrap.read_exit_file(Path(run.run_dir) / "exit_code") if run.run_dir else None
    liveness, code, age = policy.run_liveness(probed, recorded, now=now)
    return RunLiveness(
        job_id=job_id, attempt=attempt, liveness=liveness, exit_code=code, exit_age_s=age
    )


def heartbeat(host: str, boot: str, launcher: str, runs: list[Run], now: float) -> HostHeartbeat:
    """A launcher's heartbeat: its host, its own process, its unfinished runs as seen here."""
    me = psutil.Process()
    return HostHeartbeat(
        host=host,
        boot_id=boot,
        launcher=launcher,
        pid=me.pid,
        create_time=me.create_time(),
        at=now,
        runs=[run_liveness(run, run.job_id, run.attempt, now) for run in runs],
    )


def answer(
    query: LivenessQuery, *, host: str, find: Callable[[str], Run | None], now: float
) -> LivenessAnswer:
    """What this host says of the runs and holders asked about (probed on this machine)."""
    runs = []
    for key in query.runs:
        job_id, _, attempt = key.rpartition(".")
        number = int(attempt) if attempt.isdigit() else 0
        runs.append(run_liveness(find(key), job_id, number, now))
    holders = [procs.probe_on_boot(h.pid, h.create_time, h.boot_id) for h in query.holders]
    return LivenessAnswer(host=host, boot_id=procs.boot_id(), runs=runs, holders=holders)


def serve(bus: Bus, host: str, find: Callable[[str], Run | None], clock: Clock) -> None:
    """Answer liveness questions for `host` (any launcher of the host may answer)."""
    queries = msgspec.json.Decoder(LivenessQuery)

    def _handle(_subject: str, data: bytes) -> bytes:
        found = answer(queries.decode(data), host=host, find=find, now=clock.now())
        return encode(found)

    bus.add_service(
        "conveyor_host",
        "1.0.0",
        f"liveness of the runs and lease holders on {host}",
        [("liveness", subjects.host_liveness(host), _handle)],
    )


def attempt_owner(jobs: Store[Job], hot: HotJobs | None = None) -> Callable[[str, int], bool]:
    """Whether attempt `attempt` of a job is still the one the job runs.

    Read from the QueueWorker's hot set when it runs in this process (`hot`), else KV.
    A "no" from the hot set is read again from KV: it ends the attempt for good, so it
    must come from the record itself, not from a memory that can lag it (a process
    paused past its leader lease, woken before it stands down).
    """

    def _current(job: Job | None, attempt: int) -> bool:
        return lease_policy.attempt_current(
            job.status if job is not None else None,
            job.attempts if job is not None else 0,
            attempt,
            running=RUNNING,
        )

    def _owns(job_id: str, attempt: int) -> bool:
        remembered = hot.get(job_id) if hot is not None else None
        if remembered is not None and _current(remembered, attempt):
            return True
        entry = jobs.get(job_id)  # a job's key is its id
        return _current(entry.value if entry is not None else None, attempt)

    return _owns
