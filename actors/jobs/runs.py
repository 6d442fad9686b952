"""The body of a run thread: one launch, or the adoption of a previous incarnation's run."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil

from actors import launcher_policy as policy
from actors.jobs.agent import judged_adopted, run_agent
from actors.jobs.context import KILLED, Abandoned, JobContext, RunDone, RunStarted
from actors.jobs.deploy import finalize, run_deploy
from actors.jobs.leases import LeaseBusy, transition
from actors.jobs.merge_gate import merge_gate
from actors.jobs.steps import intake, post_steps
from actors.launcher_policy import LaunchPlan, Run
from bus.messages import LaunchOrder
from conveyor import procs, runwrap
from conveyor.errors import Fenced
from conveyor.logs import get_logger
from conveyor.pipeline import BUILTIN_ROLES, ROLE_INTAKE

log = get_logger(__name__)


def execute(ctx: JobContext, run: Run, order: LaunchOrder, plan: LaunchPlan | None) -> None:
    """Run one launch to its end and report it; `plan` None: the launch could not be planned."""

    def _launch() -> RunDone:
        chosen = plan if plan is not None else _plan(ctx, run, order)
        if chosen.kind == "deploy":
            return run_deploy(ctx, run, order, chosen)
        if chosen.kind == "agent":
            return run_agent(ctx, run, order, chosen)
        return _builtin(ctx, run, order)

    _finish(ctx, run, _launch, failed_event="launcher.run_failed")


def _finish(ctx: JobContext, run: Run, body: Callable[[], RunDone], *, failed_event: str) -> None:
    """Report what `body` returns; an abandoned run reports nothing (the next incarnation will)."""
    try:
        done = body()
    except Abandoned:
        log.info("launcher.run_abandoned", job_id=run.job_id)
        return
    except Fenced as err:
        # Expected of an executor that lost its attempt (a pause, a partition): no trace.
        log.warning("launcher.run_fenced", job_id=run.job_id, attempt=run.attempt, error=str(err))
        done = RunDone(run_id=run.id, exit_code=None, error=f"Fenced: {err}")
    except Exception as err:
        log.exception(failed_event, job_id=run.job_id)
        done = RunDone(run_id=run.id, exit_code=None, error=f"{type(err).__name__}: {err}")
    ctx.report_done(done)


def _plan(ctx: JobContext, run: Run, order: LaunchOrder) -> LaunchPlan:
    return policy.plan(
        order,
        ctx.cfg,
        worktree=str(ctx.layout.worktree(order.repo, order.task_id)),
        run_dir=run.run_dir,
        python=ctx.python,
        base_env=os.environ,
    )


def _builtin(ctx: JobContext, run: Run, order: LaunchOrder) -> RunDone:
    ctx.report_started(
        RunStarted(run_id=run.id, pid=os.getpid(), create_time=psutil.Process().create_time()),
        False,
    )
    try:
        with transition(ctx, order, wait=False) as fence:
            if order.role == ROLE_INTAKE:
                return intake(ctx, run, order, fence)
            return merge_gate(ctx, run, order, fence)
    except LeaseBusy as err:
        return RunDone(
            run_id=run.id, exit_code=None, error=str(err), defer_s=ctx.cfg.leases.busy_retry_s
        )


def resume(ctx: JobContext, run: Run, order: LaunchOrder) -> None:
    """Wait for a run a previous incarnation started, or report its result; never rerun it."""
    _finish(ctx, run, lambda: _resume(ctx, run, order), failed_event="launcher.adopt_failed")


def _resume(ctx: JobContext, run: Run, order: LaunchOrder) -> RunDone:
    exit_file = Path(run.run_dir) / "exit_code"
    builtin = run.role in BUILTIN_ROLES
    gate = policy.stage_gate(ctx.cfg, run.stage)
    pid = None if builtin else wrapper_pid(run, exit_file)
    if pid is not None:
        log.info("launcher.adopted", job_id=run.job_id, pid=pid)
        adopted = RunStarted(
            run_id=run.id, pid=pid, create_time=run.create_time or 0.0, adopted=True
        )
        ctx.report_started(adopted, False)
        timeout_s = policy.timeout_s(ctx.cfg, run.role, deploy=bool(run.deploy_command))
        remaining = max(0.0, run.started_at + timeout_s - ctx.clock.now())
        if not procs.wait_or_kill(pid, remaining, ctx.cfg.launcher.kill_grace_s):
            if run.deploy_command and not ctx.cancelled.is_set():
                why = f"timed out after {timeout_s:g}s; process tree killed"
                return finalize(ctx, run, order, gate, None, why, Path(run.log_path))
            return RunDone(
                run_id=run.id,
                exit_code=None,
                error=f"timed out after {timeout_s:g}s; tree killed",
            )
    recorded = runwrap.read_exit_file(exit_file)
    if recorded is None or builtin:
        return RunDone(run_id=run.id, exit_code=None, error="launcher died; run result unknown")
    if ctx.cancelled.is_set():
        return RunDone(run_id=run.id, exit_code=recorded[0], error=KILLED)
    if run.deploy_command:
        return finalize(ctx, run, order, gate, recorded[0], "", Path(run.log_path))
    return judged_adopted(ctx, run, order, post_steps(ctx, run, order, recorded[0]), recorded[0])


def wrapper_pid(run: Run, exit_file: Path) -> int | None:
    """The live wrapper of `run`: by recorded pid and start time, else by its unique argv.

    A launcher that died between spawning the wrapper and recording its pid left a
    run in `starting`; its wrapper is found by the exit-file path on its command line.
    """
    if run.pid is not None:
        return run.pid if procs.alive(run.pid, run.create_time) else None
    marker = str(exit_file)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if runwrap.is_wrapper(cmdline) and marker in cmdline:
            return int(proc.info["pid"])
    return None
