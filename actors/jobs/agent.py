"""One agent run: the agent process in the task's worktree, then the post-steps."""

from __future__ import annotations

from pathlib import Path

from actors.jobs.context import KILLED, JobContext, RunDone, RunStarted
from actors.jobs.prompt import agent_prompt
from actors.jobs.steps import post_steps, prepare_run, run_process
from actors.launcher_policy import LaunchPlan, Run
from bus.messages import LaunchOrder
from conveyor import faults
from conveyor.logs import get_logger

log = get_logger(__name__)


def run_agent(ctx: JobContext, run: Run, order: LaunchOrder, plan: LaunchPlan) -> RunDone:
    """Run the agent of `plan` to its end, then commit and push what it left."""
    worktree = prepare_run(ctx, run, order, plan)
    prompt_path = Path(run.run_dir) / "prompt.md"
    prompt_path.write_text(agent_prompt(ctx, order, worktree))

    def _started(pid: int, create_time: float) -> None:
        faults.point("launcher.spawned")
        ctx.report_started(RunStarted(run_id=run.id, pid=pid, create_time=create_time), False)

    result = run_process(ctx, run, plan, worktree, _started, stdin_path=prompt_path)
    if result.exit_code is None:
        log.warning("launcher.timed_out", job_id=run.job_id, timeout_s=plan.timeout_s)
        return RunDone(
            run_id=run.id,
            exit_code=None,
            error=f"timed out after {plan.timeout_s:g}s; process tree killed",
        )
    faults.point("launcher.agent_exited")
    if ctx.cancelled.is_set():
        return RunDone(run_id=run.id, exit_code=result.exit_code, error=KILLED)
    return post_steps(ctx, run, order, result.exit_code)
