"""Pure decisions of the Reaper: which running jobs lost their executor and must be finished.

Each tick the actor snapshots the running jobs (liveness probed by pid and
process create time, the exit code the run wrapper recorded, the launcher's
last heartbeat) and calls `decide`. Per job, in order:

1. Tier 2: an exit code is recorded. Past `finalize_grace_s` it is reaped with
   that code unless a live finalizer (fresh heartbeat) still owns the job.
2. Tier 1: no exit code. A pid seen dead on `dead_ticks` consecutive ticks,
   with no live finalizer, is reaped with an unknown outcome.
3. Tier 3: backstop. A job running `max_running_s` since its claim is reaped
   whatever its liveness or finalizer, so a stuck owner is bounded too.

A `Reap` only asks: the QueueWorker applies it when that attempt is still
running (claim before act), so a reap racing a late `JobFinished` is harmless.
`decide` counts requests; `applied` counts the reaps the QueueWorker confirmed
(`JobReaped`), and only those make `reaped_total` and `last_reaped`.
Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from bus.messages import JobReaped
from conveyor.config import ReaperConfig

ALIVE = "alive"
DEAD = "dead"
UNKNOWN = "unknown"

TIER_DEAD = 1
TIER_EXITED = 2
TIER_BACKSTOP = 3


class RunningJob(msgspec.Struct, frozen=True, kw_only=True):
    """Snapshot of one running job, assembled by the Reaper actor each tick."""

    job_id: str
    attempt: int
    repo: str
    role: str
    claimed_at: float | None
    pid: int | None = None
    liveness: str = UNKNOWN
    exit_code: int | None = None
    exit_recorded_at: float | None = None
    last_heartbeat_at: float | None = None
    evidence: str = ""
    """Where the liveness comes from when not from a local probe ("host h silent for 60s")."""


class ReaperState(msgspec.Struct, frozen=True, kw_only=True):
    """What the Reaper remembers between ticks; streaks hold only unfinished dead runs.

    `reaped_total` and `last_reaped` count reaps the QueueWorker applied;
    `requested_total` counts every reap asked for, including those that lost the
    race to a late finisher. `last_error` is why the last pass could not judge.
    """

    streaks: dict[str, int] = msgspec.field(default_factory=dict)
    reaped_total: int = 0
    deferred_total: int = 0
    last_reaped: dict[str, object] | None = None
    last_run_ts: float = 0.0
    requested_total: int = 0
    last_error: str = ""


class Reap(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the QueueWorker to finish attempt `attempt` of `job_id`.

    Reaper -> QueueWorker. The QueueWorker applies it only while the job is
    still running that attempt, so a replayed or late reap changes nothing.
    """

    job_id: str
    attempt: int
    tier: int
    exit_code: int | None
    reason: str


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The state after one tick, the reaps to request, and why."""

    state: ReaperState
    reaps: tuple[Reap, ...] = ()
    reason: str


class _Verdict(msgspec.Struct, frozen=True, kw_only=True):
    reap: Reap | None = None
    streak: int = 0
    deferred: bool = False


def _finite(value: object) -> float | None:
    """A usable time or duration: a finite real number; anything else is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _exit_code(value: object) -> int | None:
    """The recorded exit code, or None when absent or not an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _age(now: float, since: object) -> float:
    """Seconds since `since`; an unknown time counts as infinitely old, never as new."""
    start = _finite(since)
    return math.inf if start is None else now - start


def _secs(seconds: float) -> str:
    return f"{math.floor(seconds)}s" if math.isfinite(seconds) else "an unknown time"


def _ticks(n: int) -> str:
    return f"{n} tick" if n == 1 else f"{n} ticks"


def _judge(job: RunningJob, streak: int, *, now: float, cfg: ReaperConfig) -> _Verdict:
    """The tiers for one job, given its dead streak from earlier ticks."""

    def reap(tier: int, reason: str, exit_code: int | None = None) -> Reap:
        return Reap(
            job_id=job.job_id, attempt=job.attempt, tier=tier, exit_code=exit_code, reason=reason
        )

    heartbeat_age = _age(now, job.last_heartbeat_at)
    live_finalizer = heartbeat_age < cfg.heartbeat_timeout_s
    deferred = False
    code = _exit_code(job.exit_code)

    if code is not None:
        streak = 0
        exit_age = _age(now, job.exit_recorded_at)
        if exit_age >= cfg.finalize_grace_s:
            if live_finalizer:
                deferred = True
            else:
                recorded = (
                    f"recorded {_secs(exit_age)} ago"
                    if math.isfinite(exit_age)
                    else "recorded at an unknown time"
                )
                why = f"exit code {code} {recorded}, no live finalizer"
                return _Verdict(reap=reap(TIER_EXITED, why, code))
    elif job.liveness == DEAD and not live_finalizer:
        streak += 1
        if streak >= max(cfg.dead_ticks, 1):
            why = f"dead pid={job.pid} for {_ticks(streak)}"
            if job.evidence:
                why += f" ({job.evidence})"
            return _Verdict(reap=reap(TIER_DEAD, why))
    else:
        # A live or unprobeable pid, or a launcher still heartbeating, breaks the streak.
        streak = 0

    running_age = _age(now, job.claimed_at)
    if running_age >= cfg.max_running_s:
        running = (
            f"running {_secs(running_age)}" if math.isfinite(running_age) else "claim time unknown"
        )
        evidence = f"pid={job.pid} {job.liveness}"
        if live_finalizer:
            evidence += f", finalizer heartbeat {_secs(heartbeat_age)} ago ignored"
        why = f"backstop: {running} (ceiling {_secs(cfg.max_running_s)}), {evidence}"
        return _Verdict(reap=reap(TIER_BACKSTOP, why), deferred=deferred)
    return _Verdict(streak=streak, deferred=deferred)


def _well_formed(job: object) -> bool:
    """A snapshot the Reaper can name in a `Reap`: a string id and an integer attempt."""
    return (
        isinstance(job, RunningJob)
        and isinstance(job.job_id, str)
        and job.job_id != ""
        and isinstance(job.attempt, int)
        and not isinstance(job.attempt, bool)
    )


def decide(
    state: ReaperState, jobs: Sequence[RunningJob], *, now: float, cfg: ReaperConfig
) -> Decision:
    """One tick over the running jobs: new streaks and counters, and the reaps to request.

    Each job is judged alone. A snapshot without a usable id or attempt is
    skipped, and a repeated id is judged once (its first snapshot), so no job
    is reaped twice in a tick and no streak counts a tick twice.
    """
    if _finite(now) is None:
        return Decision(state=state, reason=f"now={now!r} is not a finite time; nothing decided")
    if not cfg.enabled:
        off = msgspec.structs.replace(state, streaks={}, last_run_ts=now, last_error="")
        return Decision(state=off, reason="reaper disabled; nothing reaped")

    streaks: dict[str, int] = {}
    reaps: list[Reap] = []
    deferred: list[str] = []
    seen: set[str] = set()
    malformed = 0
    for job in jobs:
        if not _well_formed(job):
            malformed += 1
            continue
        if job.job_id in seen:
            malformed += 1
            continue
        seen.add(job.job_id)
        before = state.streaks.get(job.job_id, 0)
        verdict = _judge(job, before if isinstance(before, int) else 0, now=now, cfg=cfg)
        if verdict.deferred:
            deferred.append(job.job_id)
        if verdict.reap is not None:
            reaps.append(verdict.reap)
        elif verdict.streak > 0:
            streaks[job.job_id] = verdict.streak

    new_state = msgspec.structs.replace(
        state,
        streaks=streaks,
        requested_total=state.requested_total + len(reaps),
        deferred_total=state.deferred_total + len(deferred),
        last_run_ts=now,
        last_error="",
    )
    return Decision(
        state=new_state,
        reaps=tuple(reaps),
        reason=_summary(len(seen), reaps, deferred, streaks, malformed),
    )


def _summary(
    running: int,
    reaps: Sequence[Reap],
    deferred: Sequence[str],
    streaks: dict[str, int],
    malformed: int,
) -> str:
    parts = [f"{running} running"]
    parts.extend(
        f"reaped {r.job_id} attempt {r.attempt} (tier {r.tier}: {r.reason})" for r in reaps
    )
    if deferred:
        parts.append(f"live finalizer deferred {', '.join(deferred)}")
    if streaks:
        parts.append(
            "dead streak " + ", ".join(f"{job_id}={n}" for job_id, n in sorted(streaks.items()))
        )
    if malformed:
        parts.append(f"{malformed} malformed or repeated snapshot(s) skipped")
    if not reaps:
        parts.append("nothing reaped")
    return "; ".join(parts)


def applied(state: ReaperState, reaped: JobReaped, *, now: float) -> ReaperState:
    """The QueueWorker applied a reap: only now does it count as reaped."""
    return msgspec.structs.replace(
        state,
        reaped_total=state.reaped_total + 1,
        last_reaped={
            "job_id": reaped.job_id,
            "attempt": reaped.attempt,
            "tier": reaped.tier,
            "reason": reaped.reason,
            "at": now,
        },
    )


def without_verdict(state: ReaperState, *, now: float, error: str = "") -> ReaperState:
    """A pass that judged nothing (warming up, or the running jobs could not be listed).

    It still stamps `last_run_ts`: the Reaper is alive. Streaks are kept, since
    nothing was learnt about the jobs; `error` says why, "" when there is none.
    """
    return msgspec.structs.replace(state, last_run_ts=now, last_error=error)


def reaper_status(state: ReaperState, cfg: ReaperConfig) -> dict[str, object]:
    """The `reaper` block of `conveyor.status.reaper` (and of the queue status).

    `interval` is the reference's name for `interval_s`; both are kept.
    """
    return {
        "enabled": cfg.enabled,
        "interval_s": cfg.interval_s,
        "interval": cfg.interval_s,
        "last_run_ts": state.last_run_ts,
        "reaped_total": state.reaped_total,
        "requested_total": state.requested_total,
        "deferred_total": state.deferred_total,
        "last_reaped": None if state.last_reaped is None else dict(state.last_reaped),
        "streaks": len(state.streaks),
        "last_error": state.last_error,
    }
