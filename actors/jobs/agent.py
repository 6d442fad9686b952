"""One agent run: the agent process in the task's worktree, watched live, then the post-steps."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from actors import launcher_policy as policy
from actors.jobs.context import KILLED, JobContext, RunDone, RunStarted
from actors.jobs.prompt import agent_prompt
from actors.jobs.steps import post_steps, prepare_run
from actors.jobs.watch import Prices, Watched, replay, run_watched, usage_dict
from actors.launcher_policy import LaunchPlan, Run
from bus.messages import LaunchOrder
from conveyor import faults
from conveyor.config import Config, default_prices
from conveyor.logs import get_logger
from conveyor.pipeline import (
    OUTCOME_ERROR,
    OUTCOME_SUCCESS,
    OUTCOME_TIMED_OUT,
    OUTCOME_UNKNOWN,
)
from gateways.agents.base import AgentRequest, ModelPrice, OutputParser, with_price
from gateways.agents.command import CommandParser
from gateways.agents.registry import adapter_for

log = get_logger(__name__)

COMMAND = "command"


def run_agent(ctx: JobContext, run: Run, order: LaunchOrder, plan: LaunchPlan) -> RunDone:
    """Run the agent of `plan` to its end, then commit and push what it left."""
    worktree = prepare_run(ctx, run, order, plan).worktree
    # The full prompt needs the worktree (the repository's role text, earlier artifacts).
    plan = msgspec.structs.replace(plan, prompt=agent_prompt(ctx, order, worktree))
    prompt_path = Path(run.run_dir) / "prompt.md"
    prompt_path.write_text(plan.prompt)
    stdin_path: Path | None = prompt_path
    parser: OutputParser
    if plan.cli == COMMAND:
        parser = CommandParser()
    else:
        plan, parser, stdin_path = _cli_launch(ctx, run, plan, worktree)

    def _started(pid: int, create_time: float) -> None:
        faults.point("launcher.spawned")
        ctx.report_started(RunStarted(run_id=run.id, pid=pid, create_time=create_time), False)

    agent = ctx.cfg.agents.for_role(run.role)
    watched = run_watched(
        plan,
        parser,
        cwd=worktree,
        log_path=Path(run.log_path),
        prices=Prices(agent.model or None, price_table(ctx.cfg)),
        meter=ctx.meter,
        kill_grace_s=ctx.cfg.launcher.kill_grace_s,
        on_started=_started,
        stdin_path=stdin_path,
    )
    if watched.exit_code is None:
        return _stopped(ctx, run, plan, watched)
    faults.point("launcher.agent_exited")
    if ctx.cancelled.is_set():
        # A killed run still spent what it spent: the ledger and the ceilings count it.
        return RunDone(
            run_id=run.id, exit_code=watched.exit_code, error=KILLED, usage=watched.usage
        )
    done = post_steps(ctx, run, order, watched.exit_code)
    return judged(done, watched, cli=plan.cli, attempt=order.attempt, cfg=ctx.cfg)


def _cli_launch(
    ctx: JobContext, run: Run, plan: LaunchPlan, worktree: Path
) -> tuple[LaunchPlan, OutputParser, Path | None]:
    """The plan with the adapter's argv and environment, its files written; parser; stdin."""
    agent = ctx.cfg.agents.for_role(run.role)
    adapter = adapter_for(plan.cli, field=f"agents.{run.role}.cli")
    api_key = os.environ.get(agent.api_key_env) if agent.api_key_env else None
    if agent.api_key_env and api_key is None:
        # The CLI may still find credentials of its own; say why it may be refused.
        log.warning("launcher.api_key_unset", role=run.role, variable=agent.api_key_env)
    # The CLI's own stream-idle timeout follows the stall brake when one is set.
    own_stall = {"stall_s": agent.stall_s} if agent.stall_s > 0 else {}
    request = AgentRequest(
        **own_stall,
        binary=agent.binary or plan.cli,
        prompt=plan.prompt,
        workdir=worktree,
        run_dir=Path(run.run_dir),
        env=plan.env,
        model=agent.model or None,
        extra_args=tuple(agent.args),
        base_url=agent.base_url or None,
        api_key=api_key,
        as_root=os.geteuid() == 0,
        max_retries=agent.max_retries,
        request_timeout_s=agent.request_timeout_s,
    )
    launch = adapter.plan(request)
    launch.materialize()
    stdin_path: Path | None = None
    if launch.stdin is not None:
        stdin_path = Path(run.run_dir) / "stdin.txt"
        stdin_path.write_text(launch.stdin, encoding="utf-8")
    argv = policy.wrap(list(launch.argv), exit_file=plan.exit_file, python=ctx.python)
    return msgspec.structs.replace(plan, argv=argv, env=launch.env), adapter.parser(), stdin_path


def price_table(cfg: Config) -> dict[str, ModelPrice]:
    """The default prices with the configured ones over them, in the adapters' terms.

    A `[prices]` table adds and overrides models; it does not drop the defaults. A
    negative cached price means the input price.
    """
    return {
        model: ModelPrice(
            input_per_mtok=p.input,
            output_per_mtok=p.output,
            cached_per_mtok=p.cached if p.cached >= 0 else None,
        )
        for model, p in {**default_prices(), **cfg.prices}.items()
    }


def _stopped(ctx: JobContext, run: Run, plan: LaunchPlan, watched: Watched) -> RunDone:
    """A run a brake killed: no exit code, no post-steps; the reason names the brake."""
    if watched.stopped == OUTCOME_TIMED_OUT:
        log.warning("launcher.timed_out", job_id=run.job_id, timeout_s=plan.timeout_s)
        error = f"timed out after {plan.timeout_s:g}s; process tree killed"
        reason = "timed out"
    else:
        log.warning("launcher.braked", job_id=run.job_id, outcome=watched.stopped)
        error = reason = watched.reason
    if ctx.cancelled.is_set():
        error = KILLED
    return RunDone(
        run_id=run.id,
        exit_code=None,
        error=error,
        usage=watched.usage,
        outcome=watched.stopped,
        reason=reason,
    )


def judged(done: RunDone, watched: Watched, *, cli: str, attempt: int, cfg: Config) -> RunDone:
    """The post-steps' result with the parser's verdict: usage, outcome, reason, any wait.

    A CLI that exits 0 after failing (denied writes, Aider) is not a success: its reason
    becomes the error. A plain command is judged by its exit code, as before, unless its
    output names a specific failure.
    """
    result = watched.result
    outcome: str = result.outcome
    if cli == COMMAND and outcome in (OUTCOME_SUCCESS, OUTCOME_ERROR):
        outcome = OUTCOME_UNKNOWN
    reason = policy.outcome_reason(outcome, result.detail)
    error = done.error
    if not error and outcome not in (OUTCOME_SUCCESS, OUTCOME_UNKNOWN):
        error = reason
    return msgspec.structs.replace(
        done,
        error=error,
        usage={**done.usage, **watched.usage},
        outcome=outcome,
        reason=reason,
        defer_s=done.defer_s or policy.wait_s(outcome, result.retry_after_s, attempt, cfg.queue),
    )


def judged_adopted(
    ctx: JobContext, run: Run, order: LaunchOrder, done: RunDone, exit_code: int
) -> RunDone:
    """`done` of a run a previous incarnation started, judged by its whole log read now.

    Nobody watched it live (no brakes but the timeout), but its outcome still decides
    whether it spends an attempt.
    """
    agent = ctx.cfg.agents.for_role(run.role)
    if agent.cli == COMMAND:
        parser: OutputParser = CommandParser()
    else:
        parser = adapter_for(agent.cli, field=f"agents.{run.role}.cli").parser()
    replay(Path(run.log_path), parser)
    prices = Prices(agent.model or None, price_table(ctx.cfg))
    result = with_price(parser.finish(exit_code), prices.model, prices.table)
    watched = Watched(exit_code, result, "", "", usage_dict(result.usage, result.cost_usd))
    return judged(done, watched, cli=agent.cli, attempt=order.attempt, cfg=ctx.cfg)
