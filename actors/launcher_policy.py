"""Pure parts of the Launcher: the launch plan, environment, argv placeholders, usage, verdicts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from actors import prompt_policy
from actors.deploy_policy import DEPLOY_LOG_TAIL_CHARS as DEPLOY_LOG_TAIL_CHARS
from actors.deploy_policy import VERDICT_FILES
from actors.deploy_policy import DeployFacts as DeployFacts
from actors.deploy_policy import deploy_log as deploy_log
from actors.deploy_policy import verdict as verdict
from actors.role_text_policy import ROLE_TEXTS
from bus.messages import LaunchOrder
from conveyor import retry
from conveyor.config import AgentConfig, Config, QueueConfig, RepoConfig
from conveyor.pipeline import (
    BUILTIN_ROLES,
    GATE_DEPLOY,
    GATE_NONE,
    GATE_STAGING,
    OUTCOME_AUTH_REFUSED,
    OUTCOME_CONTEXT_EXCEEDED,
    OUTCOME_OVERLOADED,
    OUTCOME_PERMISSION_DENIED,
    OUTCOME_RATE_LIMITED,
    OUTCOME_SUCCESS,
    OUTCOME_TIMED_OUT,
    ROLE_INTAKE,
    ROLE_MERGE,
    RUN_FINISHED,
    RUN_RUNNING,
    RUN_STARTING,
    WAIT_OUTCOMES,
    artifact_path,
)

STARTING = RUN_STARTING
RUNNING = RUN_RUNNING
FINISHED = RUN_FINISHED

PLACEHOLDERS = ("{work_item}", "{repo}", "{branch}", "{worktree}", "{stage}")

COMMIT_PLACEHOLDERS = ("{sha}", "{base_sha}")
"""Filled by a deploy Conveyor runs itself (the commit it ships, the one deployed before)."""

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
    deploy_command: list[str] = msgspec.field(default_factory=list)
    """The repository's deploy argv Conveyor runs instead of an agent; empty: an agent run."""
    outcome: str = ""
    """How the agent run ended (`conveyor.pipeline.AgentOutcome`); empty when unknown."""
    reason: str = ""
    """The outcome for people ("rate limited (429)", "stalled (no output for 30s)")."""
    boot_id: str = ""
    """The boot of `host` it was launched under: under another boot its pid means nothing."""


def run_key(job_id: str, attempt: int) -> str:
    """KV key of a run; the exclusive create on it fences a launch."""
    return f"{job_id}.{attempt}"


_PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in (*PLACEHOLDERS, *COMMIT_PLACEHOLDERS)))


def substitute(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace documented placeholders inside each argument, in one pass (never a shell).

    A substituted value is never scanned again, so a value containing `{stage}`
    stays literal.
    """

    def _one(match: re.Match[str]) -> str:
        return values.get(match.group(0)[1:-1], match.group(0))

    return [_PLACEHOLDER_RE.sub(_one, arg) for arg in argv]


def placeholder_values(
    order: LaunchOrder, worktree: str, *, sha: str = "", base_sha: str = ""
) -> dict[str, str]:
    """Values of the documented placeholders for one launch.

    `sha`: the commit a deploy runs at; `base_sha`: the repository's deployed commit
    before it. Only a deploy Conveyor runs itself knows them; elsewhere they are "".
    """
    return {
        "work_item": order.task_id,
        "repo": order.repo,
        "branch": order.branch,
        "worktree": worktree,
        "stage": order.stage,
        "sha": sha,
        "base_sha": base_sha,
    }


def wrapped_argv(
    command: Sequence[str], order: LaunchOrder, *, exit_file: str, worktree: str, python: str
) -> list[str]:
    """The agent command behind the exit-code wrapper, placeholders filled in."""
    agent = substitute(python_argv(command, python), placeholder_values(order, worktree))
    return wrap(agent, exit_file=exit_file, python=python)


def agent_env(
    base: Mapping[str, str],
    order: LaunchOrder,
    *,
    repo: RepoConfig,
    gate: str,
    worktree: str,
    python: str,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """Environment of an agent: the launcher's, minus nesting guards, plus the job's facts."""
    env = {k: v for k, v in base.items() if k not in STRIPPED_ENV and not k.startswith("CONVEYOR_")}
    values = placeholder_values(order, worktree)
    deploy = deploy_command_for(gate, repo)
    env.update(
        {
            "CONVEYOR_ROLE": order.role,
            "CONVEYOR_WORK_ITEM": order.task_id,
            "CONVEYOR_TITLE": order.title,
            "CONVEYOR_REPO": order.repo,
            "CONVEYOR_BRANCH": order.branch,
            "CONVEYOR_STAGE": order.stage,
            "CONVEYOR_GATE": gate,
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


def prompt(
    order: LaunchOrder,
    cfg: Config | None = None,
    *,
    prose: str | None = None,
    existing: Sequence[str] = (),
) -> str:
    """The task file an agent reads: role text with its gate contract, work item, brief.

    `prose`: the role's text chosen by the job (None: the shipped one); `existing`:
    the earlier stages' artifacts present in the worktree. Without `cfg` the
    contract is the default pipeline's.
    """
    chosen = ROLE_TEXTS.get(order.role, "") if prose is None else prose
    return prompt_policy.render(order, cfg or Config(), prose=chosen, existing=existing)


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


# --- deploys run by Conveyor ---------------------------------------------------------------


def stage_gate(cfg: Config, stage: str) -> str:
    """The gate of the configured stage `stage`; none for a stage no longer configured."""
    found = cfg.stage(stage)
    return found.gate if found is not None else GATE_NONE


def deploy_command_for(gate: str, repo: RepoConfig) -> list[str]:
    """The repository's command for a stage with `gate` (unsubstituted); [] for other gates."""
    if gate == GATE_STAGING:
        return list(repo.staging_command)
    if gate == GATE_DEPLOY:
        return list(repo.deploy_command)
    return []


def deploy_argv(
    order: LaunchOrder,
    repo: RepoConfig,
    *,
    gate: str,
    worktree: str,
    python: str,
    sha: str = "",
    base_sha: str = "",
) -> list[str]:
    """What the Launcher runs itself instead of the agent for `order`; [] when an agent runs.

    Only the stage's work step: a merge step on a deploy stage is built in.
    """
    if order.role in BUILTIN_ROLES:
        return []
    command = deploy_command_for(gate, repo)
    if not command:
        return []
    values = placeholder_values(order, worktree, sha=sha, base_sha=base_sha)
    return substitute(python_argv(command, python), values)


RUNWRAP_SCRIPT = str(Path(__file__).parent.parent / "conveyor" / "runwrap.py")
"""The exit-code wrapper, started as a script: see `conveyor/runwrap.py` for why."""


def wrap(argv: Sequence[str], *, exit_file: str, python: str) -> list[str]:
    """`argv` behind the exit-code wrapper (already substituted).

    `-I -S`: no `site`, no user paths, no PYTHON* variables. The wrapper needs
    only the standard library, and every stage start pays for its interpreter.
    """
    return [python, "-I", "-S", RUNWRAP_SCRIPT, "--exit-file", exit_file, "--", *argv]


def verdict_path(gate: str, task_id: str) -> str | None:
    """The verdict file a deploy gate reads (repository path), or None for other gates."""
    found = VERDICT_FILES.get(gate)
    return artifact_path(task_id, found[0]) if found else None


# --- the launch plan -----------------------------------------------------------------------

JobKind = Literal["intake", "merge", "deploy", "agent"]


class LaunchPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one launch runs, where, for how long, and where its results go."""

    kind: JobKind
    gate: str
    """The stage's configured gate (`GATE_NONE` for a stage no longer configured)."""
    command: list[str]
    """The deploy command Conveyor runs itself (substituted, unwrapped); [] otherwise."""
    argv: list[str]
    """What is spawned (behind the exit-code wrapper); [] for a built-in step."""
    env: dict[str, str]
    cwd: str
    timeout_s: float
    prompt: str
    """The agent's stdin; empty when no agent runs."""
    exit_file: str
    log_path: str
    verdict_path: str | None
    """The verdict file a deploy gate reads, cleared before the stage's work starts."""
    cli: str = "command"
    """The agent CLI (`agents.<role>.cli`); "command": `argv` is the configured command."""
    stall_s: float = 0.0
    max_run_usd: float = 0.0
    max_run_tokens: int = 0


def timeout_s(cfg: Config, role: str, *, deploy: bool) -> float:
    """How long a deploy command or the agent of `role` may run."""
    return cfg.deploy.timeout_s if deploy else cfg.agents.for_role(role).timeout_s


def plan(
    order: LaunchOrder,
    cfg: Config,
    *,
    worktree: str,
    run_dir: str,
    python: str,
    base_env: Mapping[str, str],
) -> LaunchPlan:
    """The launch plan of `order`; raises `InvalidField` for an unknown repository."""
    gate = stage_gate(cfg, order.stage)
    exit_file = f"{run_dir}/exit_code"
    log_path = f"{run_dir}/output.log"
    if order.role == ROLE_INTAKE or order.role == ROLE_MERGE:
        return LaunchPlan(
            kind=ROLE_INTAKE if order.role == ROLE_INTAKE else ROLE_MERGE,
            gate=gate,
            command=[],
            argv=[],
            env={},
            cwd=worktree,
            timeout_s=0.0,
            prompt="",
            exit_file=exit_file,
            log_path=log_path,
            verdict_path=None,
        )
    repo = cfg.repo(order.repo)
    command = deploy_argv(order, repo, gate=gate, worktree=worktree, python=python)
    if command:
        argv = wrap(command, exit_file=exit_file, python=python)
        extra: Mapping[str, str] = {}
        text = ""
    else:
        agent = cfg.agents.for_role(order.role)
        argv = wrapped_argv(
            agent.command, order, exit_file=exit_file, worktree=worktree, python=python
        )
        extra = agent.env
        text = prompt(order)
    env = agent_env(
        base_env, order, repo=repo, gate=gate, worktree=worktree, python=python, extra=extra
    )
    brakes = {} if command else _brakes(cfg.agents.for_role(order.role))
    return LaunchPlan(
        **brakes,
        kind="deploy" if command else "agent",
        gate=gate,
        command=command,
        argv=argv,
        env=env,
        cwd=worktree,
        timeout_s=timeout_s(cfg, order.role, deploy=bool(command)),
        prompt=text,
        exit_file=exit_file,
        log_path=log_path,
        verdict_path=verdict_path(gate, order.task_id),
    )


def _brakes(agent: AgentConfig) -> dict[str, Any]:
    """The plan fields of an agent run: which CLI, and the brakes applied while it runs."""
    return {
        "cli": agent.cli,
        "stall_s": agent.stall_s,
        "max_run_usd": agent.max_run_usd,
        "max_run_tokens": agent.max_run_tokens,
    }


# --- how an agent run ended ----------------------------------------------------------------

_REASONS = {
    OUTCOME_RATE_LIMITED: "rate limited (429)",
    OUTCOME_OVERLOADED: "overloaded (529)",
    OUTCOME_AUTH_REFUSED: "authentication refused",
    OUTCOME_CONTEXT_EXCEEDED: "context exceeded",
    OUTCOME_PERMISSION_DENIED: "permission denied",
    OUTCOME_TIMED_OUT: "timed out",
}


def outcome_reason(outcome: str, detail: str = "") -> str:
    """What an outcome says to people; a plain error quotes the CLI's own words."""
    if outcome in _REASONS:
        return _REASONS[outcome]
    if outcome == OUTCOME_SUCCESS or not outcome:
        return ""
    return f"{outcome}: {detail}" if detail else outcome


def stalled_reason(stall_s: float) -> str:
    """The reason of a run the stall brake killed."""
    return f"stalled (no output for {stall_s:g}s)"


def over_budget(plan: LaunchPlan, tokens: int, cost_usd: float | None) -> str:
    """The ceiling a run's running totals crossed, named for the alert; "" when none."""
    if plan.max_run_tokens > 0 and tokens > plan.max_run_tokens:
        return f"over budget: {tokens} tokens > agents max_run_tokens {plan.max_run_tokens}"
    if plan.max_run_usd > 0 and cost_usd is not None and cost_usd > plan.max_run_usd:
        return f"over budget: ${cost_usd:.4f} > agents max_run_usd ${plan.max_run_usd:g}"
    return ""


def wait_s(outcome: str, retry_after_s: float | None, attempt: int, cfg: QueueConfig) -> float:
    """How long a run the model API turned away waits (no attempt spent); 0: not a wait."""
    if outcome not in WAIT_OUTCOMES:
        return 0.0
    if retry_after_s is not None and retry_after_s > 0:
        return min(retry_after_s, cfg.backoff_max_s)
    return retry.backoff_s(cfg.backoff_base_s, cfg.backoff_max_s, attempt - 1)


BEATS_PER_WINDOW = 5
"""Heartbeats sent within the silence their receiver tolerates, so a few may be lost."""


def beat_due(
    last: tuple[float, Mapping[str, Any]] | None,
    now: float,
    window_s: float,
    usage: Mapping[str, Any],
) -> bool:
    """Whether a heartbeat is due: the first, one with new usage, or a fifth of the window on.

    `last`: when the previous one went out and the usage it carried. New usage goes
    out at once (spending ceilings act on it); otherwise a beat every tick would only
    cost the receivers a message each (8 runs at a 0.1 s tick: 80 a second).
    """
    if last is None:
        return True
    at, sent = last
    return usage != sent or now - at >= window_s / BEATS_PER_WINDOW
