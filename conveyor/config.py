"""Configuration: one tree of frozen Structs loaded from `config.toml` plus env.

Unknown keys and wrong types stop start-up with the dotted path of the key.
Environment overrides use `CONVEYOR_<SECTION>__<KEY>` (values parsed as TOML
scalars/arrays, falling back to plain strings), so they are validated too.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from conveyor import config_control, config_env, config_nats_auth, config_secrets, validate
from conveyor.config_board import BoardConfig, check_board
from conveyor.config_check import check
from conveyor.config_forge import ForgeConfig as ForgeConfig
from conveyor.config_nats import NatsClusterConfig as NatsClusterConfig
from conveyor.config_nats import NatsScaleOut
from conveyor.config_plane import PlaneConfig as PlaneConfig
from conveyor.config_plane import PlaneStates as PlaneStates
from conveyor.config_retention import RetentionConfig as RetentionConfig
from conveyor.errors import ConfigError, InvalidField
from conveyor.instructions import anchor_instructions, check_instructions
from conveyor.pipeline import (
    AGENT_ROLES,
    GATE_ANALYSIS,
    GATE_ARCHITECTURE,
    GATE_CI_GREEN,
    GATE_DEPLOY,
    GATE_REVIEW,
    GATE_STAGING,
    GATE_TESTS,
    ON_FAIL_RETRY,
    ON_UNSTAGED_RESTAGE,
    ROLE_ANALYST,
    ROLE_ARCHITECT,
    ROLE_DEPLOYER,
    ROLE_DEVELOPER,
    ROLE_REVIEWER,
    ROLE_TESTER,
)

PYTHON = "{python}"
"""Placeholder in agent commands for the interpreter running Conveyor."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of config sections: unknown keys are errors."""


class NatsConfig(NatsScaleOut, frozen=True):
    """How to reach NATS; an empty `url` starts the embedded server."""

    url: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    monitor_port: int = 0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 5.0
    ack_wait_s: float = 5.0
    """How long a message fetched by a process that died stays invisible before it is
    delivered again; a live process keeps what it holds alive meanwhile."""
    creds_file: str = ""
    nkey_seed_file: str = ""
    tls: config_nats_auth.NatsTls = msgspec.field(default_factory=config_nats_auth.NatsTls)


class StageConfig(_Section, frozen=True):
    """One pipeline stage: who works on it, which gate leaves it, where failure goes."""

    name: str
    role: str
    gate: str = ""
    on_fail: str = ON_FAIL_RETRY
    """`retry` the stage, or the name of an earlier stage to send the work back to."""
    human_approval: bool = False
    merge: bool = False


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="analysis", role=ROLE_ANALYST, gate=GATE_ANALYSIS, human_approval=True),
        StageConfig(name="architecture", role=ROLE_ARCHITECT, gate=GATE_ARCHITECTURE),
        StageConfig(name="development", role=ROLE_DEVELOPER, gate=GATE_CI_GREEN),
        StageConfig(name="review", role=ROLE_REVIEWER, gate=GATE_REVIEW, on_fail="development"),
        StageConfig(name="testing", role=ROLE_TESTER, gate=GATE_TESTS, on_fail="development"),
        StageConfig(name="deploy-staging", role=ROLE_DEPLOYER, gate=GATE_STAGING, merge=True),
        StageConfig(name="deploy", role=ROLE_DEPLOYER, gate=GATE_DEPLOY, on_fail="development"),
    ]


class PipelineConfig(_Section, frozen=True):
    """The ordered stages between `created` and `done`, and the rework budget."""

    stages: list[StageConfig] = msgspec.field(default_factory=_default_stages)
    max_developer_retries: int = 3
    max_stage_retries: int = 3
    max_task_jobs: int = 40
    """Circuit breaker: a task that requested this many jobs is escalated (0: off)."""
    max_task_cost_usd: float = 0.0
    """Circuit breaker: a task whose agents reported this much cost is escalated (0: off)."""
    max_task_tokens: int = 0
    """Circuit breaker: a task whose agents used this many tokens is escalated (0: off)."""
    merge_rework: bool = True
    """A rebase conflict, a red re-test or a failing pre-merge check sends the work back to
    development (a developer retry); false: the merge step fails and is retried."""


class QueueConfig(_Section, frozen=True):
    """Job queue limits and retry back-off."""

    max_concurrency: int = 4
    per_repo_concurrency: int = 1
    max_attempts: int = 2
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    tick_s: float = 1.0
    max_model_waits: int = 20
    """Waits a job may take for a rate-limited or overloaded model API before such a
    finish spends an attempt like any failure (a limit that never lifts must end)."""
    max_repo_usd_per_day: float = 0.0
    """Daily ceiling: a repository whose runs cost this much today (UTC) starts no more (0: off)."""
    max_repo_tokens_per_day: int = 0
    """Daily ceiling: a repository whose runs used this many tokens today starts none (0: off)."""


DEMO_AGENT_COMMAND = (PYTHON, "-P", "-m", "conveyor.demo_agent")
"""The built-in demo agent; -P keeps the worktree (its cwd) from shadowing Conveyor's modules."""


class AgentConfig(_Section, frozen=True):
    """The command line of one agent role (argument list; `{python}` = this interpreter)."""

    command: list[str] = msgspec.field(default_factory=lambda: list(DEMO_AGENT_COMMAND))
    timeout_s: float = 1800.0
    env: dict[str, str] = msgspec.field(default_factory=dict)
    # The agent CLI (docs/agents.md); "command" runs `command`. Brakes: 0 is off.
    cli: str = "command"
    binary: str = ""
    model: str = ""
    args: list[str] = msgspec.field(default_factory=list)
    base_url: str = ""
    api_key_env: str = ""
    """The environment variable holding the API key (never the key itself in config)."""
    max_retries: int = 3
    request_timeout_s: float = 600.0
    stall_s: float = 0.0
    max_run_usd: float = 0.0
    max_run_tokens: int = 0
    instructions: str = ""
    """A file whose text replaces the role's shipped instructions; empty: none."""


def _demo_agent() -> AgentConfig:
    return AgentConfig()


ROLES = AGENT_ROLES


class AgentsConfig(_Section, frozen=True):
    """Agent command per role; the built-in demo agent plays every role by default."""

    analyst: AgentConfig = msgspec.field(default_factory=_demo_agent)
    architect: AgentConfig = msgspec.field(default_factory=_demo_agent)
    developer: AgentConfig = msgspec.field(default_factory=_demo_agent)
    reviewer: AgentConfig = msgspec.field(default_factory=_demo_agent)
    tester: AgentConfig = msgspec.field(default_factory=_demo_agent)
    deployer: AgentConfig = msgspec.field(default_factory=_demo_agent)

    def for_role(self, role: str) -> AgentConfig:
        """Return the agent of `role`."""
        agent: AgentConfig = getattr(self, role)
        return agent


class PriceConfig(_Section, frozen=True):
    """USD per million tokens of one model; `cached` < 0: the input price."""

    input: float
    output: float
    cached: float = -1.0


def default_prices() -> dict[str, PriceConfig]:
    """List prices when written; a `[prices]` table adds to and overrides them."""
    return {
        "claude-sonnet-4-5": PriceConfig(input=3.0, output=15.0, cached=0.3),
        "claude-opus-5-5": PriceConfig(input=4.0, output=20.0, cached=0.4),
        "gpt-5.5": PriceConfig(input=1.25, output=10.0, cached=0.125),
        "gemini-3.8-flash": PriceConfig(input=0.3, output=2.5, cached=0.03),
        "gemini-3.1-pro-preview": PriceConfig(input=2.0, output=12.0, cached=0.2),
    }


class LauncherConfig(_Section, frozen=True):
    """Agent process supervision on one host."""

    slots: int = 4
    kill_grace_s: float = 5.0
    name: str = ""
    host_id: str = ""
    host_silence_s: float = 60.0

    def identity(self) -> str:
        """The launcher's name on its runs and subjects: `name`, else the host name."""
        return self.name or socket.gethostname()


class ReaperConfig(_Section, frozen=True):
    """Healing of jobs left `running` by a dead executor (see docs/failure-model.md)."""

    enabled: bool = True
    interval_s: float = 2.0
    dead_ticks: int = 2
    finalize_grace_s: float = 60.0
    heartbeat_timeout_s: float = 15.0
    max_running_s: float = 7200.0


class LeaseConfig(_Section, frozen=True):
    """Merge leases: one merge at a time per repository, never taken from a live holder."""

    enabled: bool = True
    reclaim_enabled: bool = True
    max_age_s: float = 3600.0
    busy_retry_s: float = 5.0
    merge_wait_s: float = 600.0
    """How long a merge step refused a lease another merge holds waits in its run for its
    release (`LeaseFreed`) before it defers by `busy_retry_s` (a slot is not held forever)."""


class SupervisorConfig(_Section, frozen=True):
    """Restarts of a stopped actor, and the health its absence reports (docs/operations.md)."""

    enabled: bool = True
    restart_base_s: float = 1.0
    restart_max_s: float = 60.0
    stable_s: float = 60.0
    max_fenced_restarts: int = 2
    check_s: float = 0.5


class RepoConfig(_Section, frozen=True):
    """One repository Conveyor delivers to."""

    name: str
    prefix: str
    template: str = "empty"
    check_command: list[str] = msgspec.field(default_factory=list)
    staging_command: list[str] = msgspec.field(default_factory=list)
    deploy_command: list[str] = msgspec.field(default_factory=list)
    gitea_repo: str = ""
    """`owner/name` on Gitea; empty: `<gitea.owner>/<name>`."""
    plane_project: str = ""
    """Plane project id (UUID) whose work items become this repository's tasks."""
    protected: bool = False
    """Production deploys wait for an explicit Confirm Deploy; the monitor only alerts."""
    health_url: str = ""
    """Probed after a configured deploy command and during the post-deploy window."""
    rollback_command: list[str] = msgspec.field(default_factory=list)
    """Run once when the post-deploy window finds production degraded (not for protected)."""
    pre_merge_checks: list[str] = msgspec.field(default_factory=list)
    """Shell commands run in the merge candidate before the merge; each must exit 0."""
    pre_merge_timeout_s: float = 600.0
    """How long one pre-merge check may run before its process tree is killed (a failure)."""


class DeployConfig(_Section, frozen=True):
    """How Conveyor runs a repository's `staging_command` / `deploy_command` itself."""

    timeout_s: float = 600.0
    health_timeout_s: float = 60.0
    """How long a deploy's health check may take to answer 2xx before it is FAILED."""
    health_interval_s: float = 2.0
    on_unstaged_tree: str = ON_UNSTAGED_RESTAGE
    """A production deploy whose tree differs from the one staging judged: `restage` (back
    to the staging stage) or `fail` (a FAILED verdict, back to the deploy stage's on_fail)."""


class MonitorConfig(_Section, frozen=True):
    """The post-deploy watch window after `done`."""

    enabled: bool = True
    repos: list[str] = msgspec.field(default_factory=list)
    """Repositories watched; empty: every repository with a `health_url`."""
    window_s: float = 600.0
    interval_s: float = 15.0
    fail_threshold: int = 3
    """Consecutive failed probes that make production degraded."""
    error_ratio: float = 0.5
    """Share of 5xx answers in the window that makes production degraded."""
    min_checks: int = 4
    """Probes needed before the 5xx ratio counts."""
    probe_timeout_s: float = 5.0
    rollback_timeout_s: float = 600.0


class TrackerConfig(_Section, frozen=True):
    """Which tracker holds work items (`local`: files under data_dir)."""

    kind: str = "local"


class GiteaConfig(_Section, frozen=True):
    """A Gitea server as the forge (`forge.kind = "gitea"`) and its webhooks."""

    url: str = ""
    token: str = ""
    owner: str = ""
    webhook_secret: str = ""
    timeout_s: float = 10.0
    retries: int = 3
    status_context: str = ""
    """Only this status context decides CI; empty: the combined status of every context."""
    ci_poll_s: float = 5.0
    """How often the merge step polls a pending re-test."""


class TelegramConfig(_Section, frozen=True):
    """Alerts to a Telegram chat (every alert is on `conveyor.alerts` regardless)."""

    enabled: bool = False
    bot_token: str = ""
    chat_id: str = ""
    api_url: str = "https://api.telegram.org"
    timeout_s: float = 10.0
    max_retries: int = 5
    min_level: str = "info"


class GatewayConfig(_Section, frozen=True):
    """The inbound webhook server (`conveyor gateway`, also inside `conveyor up`)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    max_body_bytes: int = 1024 * 1024
    publish_timeout_s: float = 5.0


class ReconcilerConfig(_Section, frozen=True):
    """Replays what webhooks missed: green gates, Plane states, unknown CI commits."""

    enabled: bool = True
    interval_s: float = 5.0
    grace_s: float = 30.0
    stage_grace_s: dict[str, float] = msgspec.field(default_factory=dict)
    skip_blocked: bool = True
    notify_unblock: bool = True
    plane_poll_enabled: bool = True
    plane_poll_s: float = 60.0
    retry_red_ci: bool = True


class DiskConfig(_Section, frozen=True):
    """The data directory's filesystem: an alert above a use, no launches below a floor."""

    interval_s: float = 30.0
    alert_percent: float = 90.0
    min_free_mb: float = 1024.0


class LogConfig(_Section, frozen=True):
    """Logging level and format (`auto`: JSON unless stderr is a terminal)."""

    level: str = "info"
    format: str = "auto"


class Config(_Section, frozen=True):
    """The whole configuration."""

    data_dir: str = ".conveyor"
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)
    prices: dict[str, PriceConfig] = msgspec.field(default_factory=default_prices)
    """Per model, for the CLIs that report tokens but no cost; "*" prices any other model."""
    launcher: LauncherConfig = msgspec.field(default_factory=LauncherConfig)
    reaper: ReaperConfig = msgspec.field(default_factory=ReaperConfig)
    leases: LeaseConfig = msgspec.field(default_factory=LeaseConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    control: config_control.ControlConfig = config_control.ControlConfig()
    forge: ForgeConfig = msgspec.field(default_factory=ForgeConfig)
    tracker: TrackerConfig = msgspec.field(default_factory=TrackerConfig)
    gitea: GiteaConfig = msgspec.field(default_factory=GiteaConfig)
    plane: PlaneConfig = msgspec.field(default_factory=PlaneConfig)
    telegram: TelegramConfig = msgspec.field(default_factory=TelegramConfig)
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    board: BoardConfig = msgspec.field(default_factory=BoardConfig)
    reconciler: ReconcilerConfig = msgspec.field(default_factory=ReconcilerConfig)
    deploy: DeployConfig = msgspec.field(default_factory=DeployConfig)
    monitor: MonitorConfig = msgspec.field(default_factory=MonitorConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    disk: DiskConfig = msgspec.field(default_factory=DiskConfig)
    repos: list[RepoConfig] = msgspec.field(default_factory=list)

    @property
    def data_path(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.data_dir).expanduser().resolve()

    def repo(self, name: str) -> RepoConfig:
        """Return the configured repository `name`."""
        for repo in self.repos:
            if repo.name == name:
                return repo
        raise InvalidField("repo", f"unknown repository {name!r}")

    def repo_for_prefix(self, item_prefix: str) -> RepoConfig | None:
        """Return the repository whose work-item prefix is `item_prefix`."""
        return next((r for r in self.repos if r.prefix == item_prefix), None)

    def repo_for_gitea(self, full_name: str) -> RepoConfig | None:
        """Return the repository that is `owner/name` on Gitea."""
        return next((r for r in self.repos if self.gitea_repo(r) == full_name), None)

    def gitea_repo(self, repo: RepoConfig) -> str:
        """`owner/name` of a repository on Gitea."""
        return repo.gitea_repo or f"{self.gitea.owner}/{repo.name}"

    def repo_for_plane(self, project_id: str) -> RepoConfig | None:
        """Return the repository whose work items live in Plane project `project_id`."""
        return next((r for r in self.repos if project_id and r.plane_project == project_id), None)

    def stage(self, name: str) -> StageConfig | None:
        """Return the configured stage `name`."""
        return next((s for s in self.pipeline.stages if s.name == name), None)


def default_toml() -> str:
    """Return the embedded default `config.toml`."""
    return resources.files("conveyor").joinpath("default_config.toml").read_text()


def load(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the config file (or the embedded defaults), overlay env, validate."""
    try:
        text = path.read_text() if path is not None else default_toml()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    where = str(path) if path is not None else "embedded defaults"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML: {err}") from err
    data = config_env.overlay_env(data, os.environ if env is None else env)
    config_secrets.read_files(data, path.parent.resolve() if path else Path.cwd(), Config)
    if overrides:
        data.update(overrides)
    data_dir = data.get("data_dir")
    if path is not None and isinstance(data_dir, str) and not Path(data_dir).is_absolute():
        data["data_dir"] = str((path.parent / data["data_dir"]).resolve())
    if path is not None:
        anchor_instructions(data, path.parent.resolve())
    try:
        cfg = msgspec.convert(data, Config)
    except msgspec.ValidationError as err:
        raise ConfigError(f"{where}: {_dotted(str(err))}") from err
    check(cfg)
    check_board(cfg.board)
    check_instructions(cfg)
    return cfg


def _dotted(message: str) -> str:
    """Turn msgspec's message into `a.b[0].key: problem`, the way keys are written in TOML."""
    unknown = re.fullmatch(r"Object contains unknown field `(.+?)`(?: - at `\$\.?(.*)`)?", message)
    if unknown:
        field, parent = unknown.groups()
        return f"{parent + '.' if parent else ''}{field}: unknown key"  # parent may be None
    path, problem = validate.msgspec_error(message)
    return f"{path or '(top level)'}: {problem.replace('`', '')}"


def python_argv(argv: list[str]) -> list[str]:
    """Replace a `{python}` argument with the interpreter running Conveyor."""
    return [sys.executable if part == PYTHON else part for part in argv]
