"""Pure decisions of the PostDeployMonitor: when to probe, when production is degraded, what to do.

After a task reaches `done`, its repository's `health_url` is probed every
`interval_s` for `window_s` seconds counted from the `done` itself (a restart
resumes the window, never starts it again). Each probe is one of:

- `ok`: a 2xx answer;
- `server_error`: a 5xx answer;
- `failed`: any other answer (4xx, 3xx, 1xx);
- `failed` too: no connection at all (refused, host unreachable, name not
  resolved): nothing serves there, and that is production down, not doubt;
- `uncertain`: a connection but no answer (a timeout, a connection dropped
  or reset mid-request).

Production is DEGRADED when `fail_threshold` failed or 5xx probes come in a
row, or when at least `min_checks` probes were made and the share of 5xx among
them reaches `error_ratio`. An uncertain probe counts as healthy everywhere: it
is a check in the ratio's denominator, it is not a failure, and it breaks a run
of failures. A flaky network between Conveyor and production must never roll
production back; only an answer from the service itself can.

DEGRADED leads to ROLLBACK when the repository is not protected and has a
rollback command, otherwise to ALERT. A window that ends without degradation
is HEALTHY with action NONE. Nothing here does I/O, reads a clock or logs.
"""

from __future__ import annotations

import json

import msgspec

from bus.messages import StageChanged
from conveyor.config import MonitorConfig, RepoConfig
from conveyor.pipeline import DONE

WATCHING = "watching"
HEALTHY = "HEALTHY"
DEGRADED = "DEGRADED"

NONE = "NONE"
ROLLBACK = "ROLLBACK"
ALERT = "ALERT"

OK = "ok"
SERVER_ERROR = "server_error"
FAILED = "failed"
UNCERTAIN = "uncertain"


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one health probe; `status_code` is None when nothing answered."""

    outcome: str
    status_code: int | None = None
    detail: str = ""


def classify(status_code: int | None, detail: str = "", *, refused: bool = False) -> Probe:
    """A probe from the HTTP status code, or from no answer at all (`status_code` None).

    No answer is uncertain (the probe, not the service, may be at fault: a timeout,
    a dropped connection) except a refused connection: nothing listens there, and
    that is production down, not doubt.
    """
    if status_code is None:
        return Probe(outcome=FAILED if refused else UNCERTAIN, detail=detail)
    if 200 <= status_code < 300:
        outcome = OK
    elif 500 <= status_code < 600:
        outcome = SERVER_ERROR
    else:
        outcome = FAILED
    return Probe(outcome=outcome, status_code=status_code, detail=detail)


class Watch(msgspec.Struct, frozen=True, kw_only=True):
    """One task's observation window; stored in KV `conveyor_monitor` under the task id.

    `closed` turns true once the outcome was acted on (rollback or alert done,
    log written); a watch that is decided but not closed is finished on start.
    """

    task_id: str
    repo: str
    health_url: str
    protected: bool
    has_rollback: bool
    started_at: float
    ends_at: float
    window_s: float
    checks: int = 0
    failures: int = 0
    server_errors: int = 0
    uncertain: int = 0
    consecutive_failures: int = 0
    status: str = WATCHING
    action: str = NONE
    decided_at: float | None = None
    reason: str = ""
    last_probe_at: float | None = None
    last_outcome: str = ""
    rollback_result: str = ""
    log_commit: str = ""
    """The commit of `16-post-deploy-log.md` on the task's branch (or why there is none)."""
    closed: bool = False


def watched(repo: RepoConfig | None, cfg: MonitorConfig) -> str:
    """Why `repo` is not watched, or "" when it is."""
    if not cfg.enabled:
        return "monitor disabled"
    if repo is None:
        return "unknown repository"
    if cfg.repos and repo.name not in cfg.repos:
        return f"repository {repo.name} not in monitor.repos"
    if not repo.health_url:
        return f"repository {repo.name} has no health_url"
    return ""


def start_watch(
    event: StageChanged, repo: RepoConfig | None, *, now: float, cfg: MonitorConfig
) -> Watch | None:
    """The watch a `done` starts, or None when this task is not to be watched.

    The window counts from the `done` itself, so a late delivery (control was
    down) shortens it, and a delivery after the window would have ended starts
    nothing: a replayed stream must not probe tasks finished long ago.
    """
    if event.new != DONE or watched(repo, cfg) or repo is None:
        return None
    # A `done` stamped in the future (another host's clock) starts now.
    started = min(event.at, now) if event.at > 0 else now
    ends = started + cfg.window_s
    if ends <= now:
        return None
    return Watch(
        task_id=event.task_id,
        repo=repo.name,
        health_url=repo.health_url,
        protected=repo.protected,
        has_rollback=bool(repo.rollback_command),
        started_at=started,
        ends_at=ends,
        window_s=cfg.window_s,
    )


def due(watch: Watch, now: float, cfg: MonitorConfig) -> bool:
    """Whether a probe of `watch` is due at `now` (only inside an open window)."""
    if watch.status != WATCHING or now >= watch.ends_at:
        return False
    return watch.last_probe_at is None or now - watch.last_probe_at >= cfg.interval_s


def window_over(watch: Watch, now: float) -> bool:
    """Whether a still-watching window has run out."""
    return watch.status == WATCHING and now >= watch.ends_at


def action_for(watch: Watch, protected: bool, has_rollback: bool) -> str:
    """What a DEGRADED watch does: ROLLBACK an unprotected repo with a command, else ALERT."""
    if watch.status != DEGRADED:
        return NONE
    if not protected and has_rollback:
        return ROLLBACK
    return ALERT


def degraded_reason(watch: Watch, cfg: MonitorConfig) -> str:
    """Why the counts of `watch` make production degraded, or "" when they do not."""
    if watch.consecutive_failures >= cfg.fail_threshold:
        return (
            f"{watch.consecutive_failures} consecutive failed probes "
            f"(fail_threshold {cfg.fail_threshold})"
        )
    if watch.checks >= cfg.min_checks and watch.checks > 0:
        ratio = watch.server_errors / watch.checks
        if ratio >= cfg.error_ratio:
            return (
                f"5xx ratio {watch.server_errors}/{watch.checks} = {ratio:.2f} "
                f">= error_ratio {cfg.error_ratio:g} (min_checks {cfg.min_checks})"
            )
    return ""


def on_probe(watch: Watch, probe: Probe, now: float, cfg: MonitorConfig) -> Watch:
    """Count one probe; decide DEGRADED (with its action) when the counts say so.

    A probe reaching a watch that is no longer watching changes nothing: the
    verdict of a window is final.
    """
    if watch.status != WATCHING:
        return watch
    failed = probe.outcome in (SERVER_ERROR, FAILED)
    counted = msgspec.structs.replace(
        watch,
        checks=watch.checks + 1,
        failures=watch.failures + (1 if failed else 0),
        server_errors=watch.server_errors + (1 if probe.outcome == SERVER_ERROR else 0),
        uncertain=watch.uncertain + (1 if probe.outcome == UNCERTAIN else 0),
        # Uncertain is healthy: it breaks a run of failures like a 2xx does.
        consecutive_failures=watch.consecutive_failures + 1 if failed else 0,
        last_probe_at=now,
        last_outcome=probe.outcome,
    )
    why = degraded_reason(counted, cfg)
    if not why:
        return counted
    decided = msgspec.structs.replace(counted, status=DEGRADED, decided_at=now, reason=why)
    return msgspec.structs.replace(
        decided, action=action_for(decided, watch.protected, watch.has_rollback)
    )


def on_window_end(watch: Watch, now: float) -> Watch:
    """A window that ran out without degradation: HEALTHY, nothing to do."""
    if watch.status != WATCHING:
        return watch
    return msgspec.structs.replace(
        watch,
        status=HEALTHY,
        action=NONE,
        decided_at=now,
        reason=f"{watch.checks} probes in {watch.window_s:g}s, not degraded",
    )


def needs_finishing(watch: Watch) -> bool:
    """A decided watch whose action, alert, log and its commit are not all done yet."""
    return watch.status != WATCHING and not watch.closed


def rollback_outcome(result: str) -> int | None:
    """The rollback's exit code from its ledger result, None when unknown (timeout, interrupted)."""
    try:
        return int(result)
    except ValueError:
        return None


def summary(watches: list[Watch]) -> dict[str, int]:
    """Counts by status for the status endpoint."""
    counts = {WATCHING: 0, HEALTHY: 0, DEGRADED: 0, "rolled_back": 0, "alert_only": 0}
    for w in watches:
        counts[w.status] = counts.get(w.status, 0) + 1
        if w.status == DEGRADED:
            counts["rolled_back" if w.action == ROLLBACK else "alert_only"] += 1
    return counts


def log_front_matter(watch: Watch, *, window_ended: str, window_started: str) -> dict[str, object]:
    """The YAML front matter fields of `16-post-deploy-log.md`, in order."""
    fields: dict[str, object] = {
        "work_item": watch.task_id,
        "repo": watch.repo,
        "post_deploy_status": watch.status,
        "action_taken": watch.action,
        "action": watch.action,
        "window_s": watch.window_s,
        "window_started": window_started,
        "window_ended": window_ended,
        "checks_total": watch.checks,
        "checks_failed": watch.failures,
        "server_errors": watch.server_errors,
        "checks_uncertain": watch.uncertain,
        "health_url": watch.health_url,
    }
    if watch.action == ROLLBACK:
        fields["rollback_exit_code"] = rollback_outcome(watch.rollback_result)
    return fields


def log_text(watch: Watch, *, window_started: str, window_ended: str, rollback_log: str) -> str:
    """`16-post-deploy-log.md`: YAML front matter with the figures, then a short body.

    The same stored watch always gives the same bytes, so a commit of it that a crash
    interrupted is recognised on the branch by its content.
    """
    fields = log_front_matter(watch, window_started=window_started, window_ended=window_ended)
    # JSON scalars are valid YAML scalars, and quote what YAML would misread.
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in fields.items()), "---", ""]
    lines += [
        f"# Post-deploy monitor: {watch.task_id}",
        "",
        f"- Verdict: **{watch.status}**, action **{watch.action}**.",
        f"- Why: {watch.reason}.",
        f"- Probes of {watch.health_url}: {watch.checks} "
        f"({watch.failures} failed, of which {watch.server_errors} 5xx; "
        f"{watch.uncertain} uncertain, counted healthy).",
    ]
    if watch.action == ROLLBACK:
        lines.append(f"- Rollback: {watch.rollback_result} (output in `{rollback_log}`).")
    elif watch.action == ALERT:
        lines.append("- No rollback: alert only. Check production by hand.")
    return "\n".join(lines) + "\n"


def degraded_text(watch: Watch) -> str:
    """The error alert of a DEGRADED verdict."""
    if watch.action == ROLLBACK:
        then = "running its rollback_command"
    elif watch.protected:
        then = "protected repository: alert only, check production by hand"
    else:
        then = "no rollback_command: alert only, check production by hand"
    return f"production of {watch.repo} degraded after {watch.task_id}: {watch.reason}; {then}"


def rollback_text(watch: Watch) -> str:
    """The alert after the rollback: its exit code, or that its outcome is unknown."""
    code = rollback_outcome(watch.rollback_result)
    if code is not None:
        return f"rollback of {watch.repo} after {watch.task_id} exited {code}"
    return (
        f"rollback of {watch.repo} after {watch.task_id}: {watch.rollback_result}; "
        "outcome unknown, check production by hand"
    )


def healthy_text(watch: Watch) -> str:
    """The info alert of a window that ended HEALTHY."""
    return (
        f"post-deploy window of {watch.task_id} ({watch.repo}) healthy: "
        f"{watch.checks} probes, {watch.failures} failed, {watch.uncertain} uncertain"
    )


def cause(watch: Watch) -> str:
    """The line the task's history gets when the watch closes."""
    if watch.status == HEALTHY:
        return f"post-deploy HEALTHY ({watch.checks} probes)"
    if watch.action == ROLLBACK:
        return f"post-deploy DEGRADED: {watch.reason}; rollback {watch.rollback_result}"
    return f"post-deploy DEGRADED: {watch.reason}; alert only"
