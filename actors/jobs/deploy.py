"""Deploys Conveyor runs itself: the command, the health check, and the proven verdict."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import msgspec

from actors import deploy_policy
from actors import launcher_policy as policy
from actors.deploy_policy import DeployFacts
from actors.jobs.context import KILLED, Abandoned, JobContext, RunDone, RunStarted
from actors.jobs.deploy_target import Target, target
from actors.jobs.steps import drop_checkout, post_steps, prepare_run, run_process, tail
from actors.launcher_policy import LaunchPlan, Run
from bus.messages import LaunchOrder
from conveyor import faults, runwrap
from conveyor.clock import Clock, iso
from conveyor.logs import get_logger
from conveyor.pipeline import FAILED

log = get_logger(__name__)

DEPLOY_MARKER = "deploy.json"
"""In a run directory: this run is a deploy command, not an agent (its argv, the commit
it runs at, the deployed commit before it, and its clean checkout if any)."""


def check_health(
    url: str, *, timeout_s: float, interval_s: float, clock: Clock, stop: threading.Event
) -> tuple[bool, str]:
    """Poll `url` until it answers 2xx or `timeout_s` passes; `(ok, what it last answered)`."""
    deadline = clock.monotonic() + timeout_s
    last = "not checked"
    with httpx.Client(follow_redirects=False) as client:
        while True:
            remaining = deadline - clock.monotonic()
            try:
                answer = client.get(url, timeout=max(0.1, min(remaining, 10.0)))
                last = f"HTTP {answer.status_code}"
                if answer.is_success:
                    return True, last
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            if clock.monotonic() + interval_s > deadline:
                return False, f"{last} (no 2xx within {timeout_s:g}s)"
            if stop.wait(interval_s):
                raise Abandoned(url)


def earlier_deploy(ctx: JobContext, run: Run) -> tuple[int, Path] | None:
    """An earlier attempt of this job that already ran the deploy to its exit code.

    Its result is the deploy's: a new attempt (after a reap, or a lost report)
    finalizes it instead of deploying a second time.
    """
    for attempt in range(run.attempt - 1, 0, -1):
        run_dir = ctx.layout.run_dir(run.job_id, attempt)
        recorded = runwrap.read_exit_file(run_dir / "exit_code")
        if recorded is not None and (run_dir / DEPLOY_MARKER).exists():
            return recorded[0], run_dir / "output.log"
    return None


def run_deploy(ctx: JobContext, run: Run, order: LaunchOrder, plan: LaunchPlan) -> RunDone:
    """Run the repository's deploy command (not an agent), then finalize its verdict.

    Staging runs in the task's worktree at its head. Production runs in a clean
    checkout of the task's merge commit, once `deploy_target` found that it may
    ship: otherwise its verdict (superseded, unstaged, failed) is written without
    running anything.
    """
    earlier = earlier_deploy(ctx, run)
    if earlier is not None:
        # No RunStarted: this process is not a kill target, and the heartbeat covers it.
        log.info("launcher.deploy_reused", job_id=run.job_id, exit_code=earlier[0])
        return finalize(ctx, run, order, plan.gate, earlier[0], "", earlier[1])
    prepared = prepare_run(ctx, run, order, plan)
    worktree = prepared.worktree
    where = target(ctx, run, order, plan.gate, worktree, head=prepared.head)
    if where.status:
        return _decided(ctx, run, order, plan.gate, where)
    repo = ctx.cfg.repo(order.repo)
    command = policy.deploy_argv(
        order,
        repo,
        gate=plan.gate,
        worktree=str(where.cwd),
        python=ctx.python,
        sha=where.sha,
        base_sha=where.base_sha,
    )
    env = {**plan.env, "CONVEYOR_DEPLOY_SHA": where.sha, "CONVEYOR_BASE_SHA": where.base_sha}
    argv = policy.wrap(command, exit_file=plan.exit_file, python=ctx.python)
    marker = {"argv": command, "sha": where.sha, "base_sha": where.base_sha}
    marker["checkout"] = str(where.cwd) if where.cwd != worktree else ""
    (Path(run.run_dir) / DEPLOY_MARKER).write_text(json.dumps(marker))

    def _started(pid: int, create_time: float) -> None:
        # Stored before going on: a restart adopts the deploy by this pid, never reruns it.
        ctx.report_started(RunStarted(run_id=run.id, pid=pid, create_time=create_time), True)
        log.info("launcher.deploy_started", job_id=run.job_id, pid=pid, stage=order.stage)
        faults.point("launcher.deploy_started")

    spawned = msgspec.structs.replace(plan, argv=argv, env=env, command=command)
    result = run_process(ctx, run, spawned, where.cwd, _started)
    if result.exit_code is None:
        log.warning("launcher.deploy_timed_out", job_id=run.job_id, timeout_s=plan.timeout_s)
        if ctx.cancelled.is_set():
            return RunDone(run_id=run.id, exit_code=None, error=KILLED)
        why = f"timed out after {plan.timeout_s:g}s; process tree killed"
        return finalize(ctx, run, order, plan.gate, None, why, Path(run.log_path))
    if ctx.cancelled.is_set():
        return RunDone(run_id=run.id, exit_code=result.exit_code, error=KILLED)
    return finalize(ctx, run, order, plan.gate, result.exit_code, "", Path(run.log_path))


def _marker(run: Run, output: Path) -> dict[str, Any]:
    """What the deploy that wrote `output` recorded before it started (older runs: argv only)."""
    try:
        data = json.loads((output.parent / DEPLOY_MARKER).read_text())
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict):
        return data
    return {"argv": data if isinstance(data, list) else run.deploy_command}


def finalize(
    ctx: JobContext,
    run: Run,
    order: LaunchOrder,
    gate: str,
    exit_code: int | None,
    detail: str,
    output: Path,
) -> RunDone:
    """Turn the deploy's exit code and health check into the verdict file, then commit it.

    The verdict overwrites whatever an agent or an earlier incarnation wrote: it
    is proven here, never claimed. The job itself succeeds once the verdict is on
    the branch, FAILED or not, so the queue never retries (redeploys) it; the gate
    reads the verdict and decides.
    """
    if ctx.abandoned.is_set():
        raise Abandoned(run.id)
    repo = ctx.cfg.repo(order.repo)
    marker = _marker(run, output)
    health_ok: bool | None = None
    health = "not configured"
    if exit_code == 0 and repo.health_url:
        health_ok, health = check_health(
            repo.health_url,
            timeout_s=ctx.cfg.deploy.health_timeout_s,
            interval_s=ctx.cfg.deploy.health_interval_s,
            clock=ctx.clock,
            stop=ctx.abandoned,
        )
        detail = health
    elif repo.health_url:
        health = "not checked (the command failed)"
    status, reason = policy.verdict(exit_code, health_ok, detail=detail)
    facts = DeployFacts(
        work_item=order.task_id,
        job_id=run.job_id,
        timestamp=iso(ctx.clock.now()),
        command=list(marker.get("argv") or []),
        exit_code=exit_code,
        health_url=repo.health_url,
        health=health,
        status=status,
        reason=reason,
        output=tail(output),
        commit=str(marker.get("sha") or ""),
        base_sha=str(marker.get("base_sha") or ""),
    )
    if marker.get("checkout"):
        drop_checkout(ctx, order.repo, Path(marker["checkout"]))
    return _write_verdict(ctx, run, order, gate, facts)


def _decided(ctx: JobContext, run: Run, order: LaunchOrder, gate: str, where: Target) -> RunDone:
    """The verdict of a deploy Conveyor decided not to run (superseded, unstaged, refused)."""
    repo = ctx.cfg.repo(order.repo)
    facts = DeployFacts(
        work_item=order.task_id,
        job_id=run.job_id,
        timestamp=iso(ctx.clock.now()),
        command=[],
        exit_code=None,
        health_url=repo.health_url,
        health="not checked (the command did not run)",
        status=where.status,
        reason=where.reason,
        commit=where.sha,
        base_sha=where.base_sha,
        ran=False,
    )
    level = log.info if where.status != FAILED else log.warning
    level("launcher.deploy_skipped", job_id=run.job_id, status=where.status, reason=where.reason)
    return _write_verdict(ctx, run, order, gate, facts)


def _write_verdict(
    ctx: JobContext, run: Run, order: LaunchOrder, gate: str, facts: DeployFacts
) -> RunDone:
    """Write the verdict file into the task's worktree, then commit and push it."""
    relative, text = deploy_policy.deploy_log(gate, facts)
    path = ctx.layout.worktree(order.repo, order.task_id) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    log.info(
        "launcher.deploy_verdict",
        job_id=run.job_id,
        stage=order.stage,
        status=facts.status,
        reason=facts.reason,
        exit_code=facts.exit_code,
        commit=facts.commit,
    )
    faults.point("launcher.deploy_verdict")
    done = post_steps(ctx, run, order, 0)
    usage = {
        "exit_code": facts.exit_code,
        "status": facts.status,
        "reason": facts.reason,
        "commit": facts.commit,
    }
    return msgspec.structs.replace(done, usage={**done.usage, "deploy": usage})
