"""Pure parts of the Launcher: paths, environment, argv placeholders, usage parsing."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from bus.messages import LaunchOrder
from conveyor.config import RepoConfig

STARTING = "starting"
RUNNING = "running"
FINISHED = "finished"

PLACEHOLDERS = ("{work_item}", "{repo}", "{branch}", "{worktree}", "{stage}")

# Environment variables that would make an agent CLI think it is nested in another session.
STRIPPED_ENV = ("CLAUDECODE",)


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one job on this host; owned by the Launcher alone."""

    id: str
    job_id: str
    attempt: int
    task_id: str
    repo: str
    role: str
    stage: str
    visit: int
    branch: str
    host: str
    launcher: str
    status: str = STARTING
    pid: int | None = None
    create_time: float | None = None
    started_at: float = 0.0
    run_dir: str = ""
    log_path: str = ""
    exit_code: int | None = None
    head_sha: str = ""
    error: str = ""
    finished_at: float | None = None
    reported: bool = False
    defer_s: float = 0.0
    usage: dict[str, Any] = msgspec.field(default_factory=dict)


def run_key(job_id: str, attempt: int) -> str:
    """KV key of a run; the exclusive create on it fences a launch."""
    return f"{job_id}.{attempt}"


_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def substitute(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace documented placeholders inside each argument, in one pass (never a shell).

    A substituted value is never scanned again, so a value containing `{stage}`
    stays literal.
    """

    def _one(match: re.Match[str]) -> str:
        return values.get(match.group(0)[1:-1], match.group(0))

    return [_PLACEHOLDER_RE.sub(_one, arg) for arg in argv]


def placeholder_values(order: LaunchOrder, worktree: str) -> dict[str, str]:
    """Values of the documented placeholders for one launch."""
    return {
        "work_item": order.task_id,
        "repo": order.repo,
        "branch": order.branch,
        "worktree": worktree,
        "stage": order.stage,
    }


def wrapped_argv(
    command: Sequence[str], order: LaunchOrder, *, exit_file: str, worktree: str, python: str
) -> list[str]:
    """The agent command behind the exit-code wrapper, placeholders filled in."""
    agent = substitute(python_argv(command, python), placeholder_values(order, worktree))
    return [python, "-m", "conveyor.runwrap", "--exit-file", exit_file, "--", *agent]


def agent_env(
    base: Mapping[str, str],
    order: LaunchOrder,
    *,
    repo: RepoConfig,
    worktree: str,
    python: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """Environment of an agent: the launcher's, minus nesting guards, plus the job's facts."""
    env = {k: v for k, v in base.items() if k not in STRIPPED_ENV and not k.startswith("CONVEYOR_")}
    values = placeholder_values(order, worktree)
    deploy: list[str] = []
    if order.stage == "deploy-staging":
        deploy = repo.staging_command
    elif order.stage == "deploy":
        deploy = repo.deploy_command
    env.update(
        {
            "CONVEYOR_ROLE": order.role,
            "CONVEYOR_WORK_ITEM": order.task_id,
            "CONVEYOR_TITLE": order.title,
            "CONVEYOR_REPO": order.repo,
            "CONVEYOR_BRANCH": order.branch,
            "CONVEYOR_STAGE": order.stage,
            "CONVEYOR_VISIT": str(order.visit),
            "CONVEYOR_ATTEMPT": str(order.attempt),
            "CONVEYOR_CHECK_COMMAND": json.dumps(python_argv(repo.check_command, python)),
            "CONVEYOR_DEPLOY_COMMAND": json.dumps(substitute(python_argv(deploy, python), values)),
        }
    )
    env.update(extra)
    return env


def python_argv(argv: Sequence[str], python: str) -> list[str]:
    """Replace a `{python}` argument with the interpreter running Conveyor."""
    return [python if part == "{python}" else part for part in argv]


def prompt(order: LaunchOrder) -> str:
    """The task file an agent reads on stdin."""
    return (
        f"# {order.role} for {order.task_id}: {order.title}\n\n"
        f"Repository: {order.repo}\nBranch: {order.branch}\nStage: {order.stage} "
        f"(visit {order.visit}, attempt {order.attempt})\n"
        f"Artifacts go in docs/work-items/{order.task_id}/ with YAML front matter; "
        "the stage gate reads only the front matter.\n\n"
        f"## Work item\n\n{order.description or '(no description)'}\n"
    )


def parse_usage(tail: str) -> dict[str, Any]:
    """Find usage and cost in an agent's last output lines (Claude/Gemini/demo `result` line)."""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") == "result":
            usage = data.get("usage") or data.get("stats") or {}
            out: dict[str, Any] = {"usage": usage if isinstance(usage, dict) else {}}
            cost = data.get("total_cost_usd")
            if isinstance(cost, int | float) and not isinstance(cost, bool):
                out["cost_usd"] = float(cost)
            if data.get("is_error") is True:
                out["is_error"] = True
            return out
    return {}
