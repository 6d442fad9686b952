"""The repository's pre-merge checks, run in the merge candidate under the merge lease."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from pathlib import Path

import msgspec

from actors import merge_policy
from actors.jobs.context import JobContext
from actors.jobs.steps import tail
from actors.launcher_policy import Run
from bus.effects import effect_key
from bus.messages import LaunchOrder
from conveyor import procs
from conveyor.config import PYTHON, RepoConfig
from conveyor.logs import get_logger
from gateways import git

log = get_logger(__name__)

SHELL = "/bin/sh"
PASSED = "passed"
"""The effect ledger's result of checks that all exited 0 at a head."""


def run_checks(
    ctx: JobContext, run: Run, order: LaunchOrder, worktree: Path, head: str
) -> merge_policy.SendBack | None:
    """Run every pre-merge check in `worktree` at `head`; None when all exit 0.

    Once per head and set of commands (the effect ledger): a merge step re-driven
    after a crash finds the verdict and does not run the checks again. Checks that
    were interrupted (no verdict recorded) run again.
    """
    repo = ctx.cfg.repo(order.repo)
    if not repo.pre_merge_checks:
        return None
    digest = hashlib.sha256("\n".join(repo.pre_merge_checks).encode()).hexdigest()[:12]

    def _run() -> str:
        failed = _run_all(ctx, run, order, repo, worktree, head)
        return PASSED if failed is None else msgspec.json.encode(failed).decode()

    key = effect_key(order.task_id, "pre-merge", head, digest)
    result = ctx.effects.once(key, _run, lambda: None)
    if result == PASSED:
        return None
    return msgspec.json.decode(result, type=merge_policy.SendBack)


def _run_all(
    ctx: JobContext, run: Run, order: LaunchOrder, repo: RepoConfig, worktree: Path, head: str
) -> merge_policy.SendBack | None:
    run_dir = Path(run.run_dir) if run.run_dir else ctx.layout.run_dir(run.job_id, run.attempt)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **git.child_env(),
        "CONVEYOR_TASK_ID": order.task_id,
        "CONVEYOR_REPO": order.repo,
        "CONVEYOR_HEAD_SHA": head,
    }
    try:
        for number, command in enumerate(repo.pre_merge_checks, start=1):
            log_path = run_dir / f"pre-merge-{number}.log"
            exit_code = _run_one(ctx, command, worktree, log_path, env, repo.pre_merge_timeout_s)
            log.info(
                "launcher.pre_merge_checked",
                job_id=run.job_id,
                command=command,
                exit_code=exit_code,
                head=head,
            )
            if exit_code != 0:
                return merge_policy.failed_check(
                    command=command,
                    exit_code=exit_code,
                    timeout_s=repo.pre_merge_timeout_s,
                    output=tail(log_path),
                )
        return None
    finally:
        _restore(worktree)


def _run_one(
    ctx: JobContext,
    command: str,
    worktree: Path,
    log_path: Path,
    env: dict[str, str],
    timeout_s: float,
) -> int | None:
    """Run one check through the shell to its end; None when it was killed on its timeout."""
    script = command.replace(PYTHON, shlex.quote(ctx.python))
    proc, _ = procs.spawn(
        [SHELL, "-c", script],
        cwd=worktree,
        stdin=subprocess.DEVNULL,
        log_path=str(log_path),
        env=env,
    )
    finished = procs.wait_or_kill(proc.pid, timeout_s, ctx.cfg.launcher.kill_grace_s)
    code = proc.wait()
    return code if finished else None


def _restore(worktree: Path) -> None:
    """Leave the worktree at the candidate: what a check wrote is not the developer's work.

    Everything the agents wrote was committed before the merge step, so changed and
    untracked files here are the checks' (ignored files, such as caches, stay).
    """
    git.run_git_result(["reset", "--quiet", "--hard", "HEAD"], worktree)
    git.run_git_result(["clean", "--quiet", "-f", "-d"], worktree)
