"""Cross-field rules of the configuration that msgspec's types cannot express.

`conveyor.config.load` runs `check` after decoding; each rule raises `ConfigError`
naming the dotted key, the way it is written in `config.toml`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from conveyor import validate
from conveyor.config_nats import check_nats
from conveyor.errors import ConfigError, InvalidField
from conveyor.pipeline import AGENT_ROLES, GATES, ON_FAIL_RETRY, ON_UNSTAGED, RESERVED_STAGES

if TYPE_CHECKING:
    from conveyor.config import AgentConfig, Config

_STAGE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def check(cfg: Config) -> None:
    """Cross-field rules msgspec cannot express; raise ConfigError naming the key."""
    check_nats(cfg.nats, cfg.nats.url)
    names: list[str] = []
    for i, stage in enumerate(cfg.pipeline.stages):
        where = f"pipeline.stages[{i}]"
        if not _STAGE_RE.fullmatch(stage.name) or stage.name in RESERVED_STAGES:
            raise ConfigError(f"{where}.name: invalid or reserved stage name {stage.name!r}")
        if stage.name in names:
            raise ConfigError(f"{where}.name: duplicate stage {stage.name!r}")
        names.append(stage.name)
        if stage.role not in AGENT_ROLES:
            raise ConfigError(f"{where}.role: must be one of {', '.join(AGENT_ROLES)}")
        if stage.gate not in GATES:
            raise ConfigError(f"{where}.gate: unknown gate {stage.gate!r}")
    if not names:
        raise ConfigError("pipeline.stages: at least one stage is required")
    for i, stage in enumerate(cfg.pipeline.stages):
        if stage.on_fail not in (ON_FAIL_RETRY, *names[: names.index(stage.name)]):
            raise ConfigError(f"pipeline.stages[{i}].on_fail: must be 'retry' or an earlier stage")
    positive = {
        "queue.backoff_base_s": cfg.queue.backoff_base_s,
        "reaper.interval_s": cfg.reaper.interval_s,
        "reaper.finalize_grace_s": cfg.reaper.finalize_grace_s,
        "reaper.heartbeat_timeout_s": cfg.reaper.heartbeat_timeout_s,
        "reaper.max_running_s": cfg.reaper.max_running_s,
        "reaper.dead_ticks": cfg.reaper.dead_ticks,
        "leases.max_age_s": cfg.leases.max_age_s,
        "leases.busy_retry_s": cfg.leases.busy_retry_s,
        "leases.merge_wait_s": cfg.leases.merge_wait_s,
        "queue.backoff_max_s": cfg.queue.backoff_max_s,
        "nats.connect_timeout_s": cfg.nats.connect_timeout_s,
        "nats.request_timeout_s": cfg.nats.request_timeout_s,
        "nats.ack_wait_s": cfg.nats.ack_wait_s,
        "forge.check_timeout_s": cfg.forge.check_timeout_s,
        "queue.max_concurrency": cfg.queue.max_concurrency,
        "queue.per_repo_concurrency": cfg.queue.per_repo_concurrency,
        "queue.max_attempts": cfg.queue.max_attempts,
        "launcher.slots": cfg.launcher.slots,
        "queue.tick_s": cfg.queue.tick_s,
        "launcher.kill_grace_s": cfg.launcher.kill_grace_s,
        "launcher.host_silence_s": cfg.launcher.host_silence_s,
        "gitea.timeout_s": cfg.gitea.timeout_s,
        "gitea.ci_poll_s": cfg.gitea.ci_poll_s,
        "plane.timeout_s": cfg.plane.timeout_s,
        "plane.per_page": cfg.plane.per_page,
        "telegram.timeout_s": cfg.telegram.timeout_s,
        "gateway.max_body_bytes": cfg.gateway.max_body_bytes,
        "gateway.publish_timeout_s": cfg.gateway.publish_timeout_s,
        "reconciler.interval_s": cfg.reconciler.interval_s,
        "reconciler.plane_poll_s": cfg.reconciler.plane_poll_s,
        "supervisor.restart_base_s": cfg.supervisor.restart_base_s,
        "supervisor.restart_max_s": cfg.supervisor.restart_max_s,
        "supervisor.stable_s": cfg.supervisor.stable_s,
        "supervisor.check_s": cfg.supervisor.check_s,
    }
    for key, value in positive.items():
        if not value > 0:  # also refuses NaN
            raise ConfigError(f"{key}: must be > 0")
    for key, value in (
        ("pipeline.max_developer_retries", cfg.pipeline.max_developer_retries),
        ("pipeline.max_stage_retries", cfg.pipeline.max_stage_retries),
    ):
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1")
    for role in AGENT_ROLES:
        agent = cfg.agents.for_role(role)
        if cfg.reaper.enabled and agent.timeout_s + cfg.reaper.finalize_grace_s >= (
            cfg.reaper.max_running_s
        ):
            raise ConfigError(
                f"reaper.max_running_s: must exceed agents.{role}.timeout_s + "
                f"reaper.finalize_grace_s ({agent.timeout_s + cfg.reaper.finalize_grace_s:g}s), "
                "or the backstop would reap live agents"
            )
        if agent.timeout_s <= 0:
            raise ConfigError(f"agents.{role}.timeout_s: must be > 0")
        _check_agent(agent, f"agents.{role}")
    _check_integrations(cfg)
    _check_prices(cfg)
    _check_retention(cfg)
    if cfg.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level: must be debug, info, warning or error")
    if cfg.log.format not in ("auto", "json", "text"):
        raise ConfigError("log.format: must be auto, json or text")
    seen_repos: set[str] = set()
    seen_prefixes: set[str] = set()
    for i, repo in enumerate(cfg.repos):
        try:
            validate.repo_name(repo.name, f"repos[{i}].name")
            validate.prefix(repo.prefix, f"repos[{i}].prefix")
        except InvalidField as err:
            raise ConfigError(str(err)) from err
        if repo.template not in ("empty", "demo"):
            raise ConfigError(f"repos[{i}].template: must be 'empty' or 'demo'")
        if repo.name in seen_repos:
            raise ConfigError(f"repos[{i}].name: duplicate repository {repo.name!r}")
        if repo.prefix in seen_prefixes:
            raise ConfigError(f"repos[{i}].prefix: duplicate prefix {repo.prefix!r}")
        seen_repos.add(repo.name)
        seen_prefixes.add(repo.prefix)


AGENT_CLIS = ("claude", "codex", "gemini", "opencode", "aider", "command")
"""What `agents.<role>.cli` accepts (the adapters of `gateways.agents.registry`)."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_agent(agent: AgentConfig, where: str) -> None:
    if agent.cli not in AGENT_CLIS:
        raise ConfigError(
            f"{where}.cli: unknown agent CLI {agent.cli!r}; one of {', '.join(AGENT_CLIS)}"
        )
    if agent.cli == "command" and not agent.command:
        raise ConfigError(f"{where}.command: must not be empty")
    if agent.api_key_env and not _ENV_NAME.fullmatch(agent.api_key_env):
        raise ConfigError(f"{where}.api_key_env: must name an environment variable")
    if agent.base_url:
        _url(agent.base_url, f"{where}.base_url")
    for key in ("stall_s", "max_run_usd", "max_run_tokens", "max_retries"):
        if not getattr(agent, key) >= 0:  # also refuses NaN
            raise ConfigError(f"{where}.{key}: must be >= 0")
    if not agent.request_timeout_s > 0:
        raise ConfigError(f"{where}.request_timeout_s: must be > 0")


def _check_prices(cfg: Config) -> None:
    for model, price in cfg.prices.items():
        for key in ("input", "output"):
            if not getattr(price, key) >= 0:
                raise ConfigError(f"prices.{model}.{key}: must be >= 0")


_HTTP_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_GITEA_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
LEVELS = ("info", "warning", "error")


def _need(cfg_value: str, key: str, why: str) -> None:
    if not cfg_value:
        raise ConfigError(f"{key}: required {why}")


def _url(value: str, key: str) -> None:
    if not _HTTP_URL.fullmatch(value):
        raise ConfigError(f"{key}: must be an http(s) URL without query, got {value!r}")


def _check_deploy(cfg: Config) -> None:
    """Deploy commands, health URLs and the post-deploy monitor."""
    for i, repo in enumerate(cfg.repos):
        if repo.health_url:
            _url(repo.health_url, f"repos[{i}].health_url")
    names = {r.name for r in cfg.repos}
    for i, name in enumerate(cfg.monitor.repos):
        if name not in names:
            raise ConfigError(f"monitor.repos[{i}]: unknown repository {name!r}")
    m = cfg.monitor
    for key, value in (
        ("deploy.timeout_s", cfg.deploy.timeout_s),
        ("deploy.health_timeout_s", cfg.deploy.health_timeout_s),
        ("deploy.health_interval_s", cfg.deploy.health_interval_s),
        ("monitor.window_s", m.window_s),
        ("monitor.interval_s", m.interval_s),
        ("monitor.probe_timeout_s", m.probe_timeout_s),
        ("monitor.rollback_timeout_s", m.rollback_timeout_s),
        ("monitor.fail_threshold", m.fail_threshold),
        ("monitor.min_checks", m.min_checks),
    ):
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0")
    if not 0 < m.error_ratio <= 1:
        raise ConfigError("monitor.error_ratio: must be in (0, 1]")
    if cfg.deploy.on_unstaged_tree not in ON_UNSTAGED:
        raise ConfigError(f"deploy.on_unstaged_tree: must be one of {', '.join(ON_UNSTAGED)}")
    longest = cfg.deploy.timeout_s + cfg.deploy.health_timeout_s
    if cfg.reaper.enabled and longest >= cfg.reaper.max_running_s:
        raise ConfigError(
            f"deploy.timeout_s: with health_timeout_s ({longest:g}s) it must stay under "
            f"reaper.max_running_s ({cfg.reaper.max_running_s:g}s), or the backstop reaps "
            "a live deploy"
        )


def _check_integrations(cfg: Config) -> None:
    """Forge, tracker, Telegram, gateway and reconciler settings."""
    if cfg.forge.kind not in ("local", "gitea"):
        raise ConfigError(
            f"forge.kind: unsupported forge {cfg.forge.kind!r} (supported: local, gitea)"
        )
    if cfg.tracker.kind not in ("local", "plane"):
        raise ConfigError(
            f"tracker.kind: unsupported tracker {cfg.tracker.kind!r} (supported: local, plane)"
        )
    if cfg.forge.kind == "gitea":
        why = 'with forge.kind = "gitea"'
        _need(cfg.gitea.url, "gitea.url", why)
        _url(cfg.gitea.url, "gitea.url")
        _need(cfg.gitea.token, "gitea.token", f"{why} (set CONVEYOR_GITEA__TOKEN)")
        for i, repo in enumerate(cfg.repos):
            if not repo.gitea_repo and not cfg.gitea.owner:
                raise ConfigError(f"repos[{i}].gitea_repo: required when gitea.owner is empty")
    if cfg.tracker.kind == "plane":
        why = 'with tracker.kind = "plane"'
        _need(cfg.plane.url, "plane.url", why)
        _url(cfg.plane.url, "plane.url")
        _need(cfg.plane.api_key, "plane.api_key", f"{why} (set CONVEYOR_PLANE__API_KEY)")
        _need(cfg.plane.workspace, "plane.workspace", why)
    for i, repo in enumerate(cfg.repos):
        if repo.gitea_repo and not _GITEA_REPO.fullmatch(repo.gitea_repo):
            raise ConfigError(f"repos[{i}].gitea_repo: must be owner/name")
        if repo.plane_project and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", repo.plane_project):
            raise ConfigError(f"repos[{i}].plane_project: must be a Plane project id")
        if not repo.pre_merge_timeout_s > 0:
            raise ConfigError(f"repos[{i}].pre_merge_timeout_s: must be > 0")
        if any(not command.strip() for command in repo.pre_merge_checks):
            raise ConfigError(f"repos[{i}].pre_merge_checks: a command is empty")
    projects = [r.plane_project for r in cfg.repos if r.plane_project]
    if len(projects) != len(set(projects)):
        raise ConfigError("repos: two repositories name the same plane_project")
    if cfg.telegram.enabled:
        _need(
            cfg.telegram.bot_token,
            "telegram.bot_token",
            "when telegram.enabled (env CONVEYOR_TELEGRAM__BOT_TOKEN)",
        )
        _need(cfg.telegram.chat_id, "telegram.chat_id", "when telegram.enabled")
        _url(cfg.telegram.api_url, "telegram.api_url")
    if cfg.telegram.min_level not in LEVELS:
        raise ConfigError(f"telegram.min_level: must be one of {', '.join(LEVELS)}")
    for key, count in (
        ("pipeline.max_task_jobs", cfg.pipeline.max_task_jobs),
        ("pipeline.max_task_cost_usd", cfg.pipeline.max_task_cost_usd),
        ("pipeline.max_task_tokens", cfg.pipeline.max_task_tokens),
        ("queue.max_repo_usd_per_day", cfg.queue.max_repo_usd_per_day),
        ("queue.max_repo_tokens_per_day", cfg.queue.max_repo_tokens_per_day),
        ("gitea.retries", cfg.gitea.retries),
        ("plane.retries", cfg.plane.retries),
        ("telegram.max_retries", cfg.telegram.max_retries),
        ("queue.max_model_waits", cfg.queue.max_model_waits),
    ):
        if count < 0:
            raise ConfigError(f"{key}: must be >= 0")
    _check_deploy(cfg)
    if cfg.plane.per_page > 1000:
        raise ConfigError("plane.per_page: must be <= 1000 (Plane's maximum)")
    if not 0 <= cfg.gateway.port <= 65535:
        raise ConfigError("gateway.port: must be 0-65535")
    names = {s.name for s in cfg.pipeline.stages}
    for stage, grace in cfg.reconciler.stage_grace_s.items():
        if stage not in names:
            raise ConfigError(f"reconciler.stage_grace_s.{stage}: unknown stage")
        if not grace >= 0:
            raise ConfigError(f"reconciler.stage_grace_s.{stage}: must be >= 0")
    if not cfg.reconciler.grace_s >= 0:
        raise ConfigError("reconciler.grace_s: must be >= 0")


def _check_retention(cfg: Config) -> None:
    """Retention and disk figures: intervals > 0, ages and sizes >= 0, a percentage."""
    for key, value in (
        ("retention.interval_s", cfg.retention.interval_s),
        ("retention.branches_interval_s", cfg.retention.branches_interval_s),
        ("disk.interval_s", cfg.disk.interval_s),
    ):
        if not value > 0:  # also refuses NaN
            raise ConfigError(f"{key}: must be > 0")
    for key, value in (
        ("retention.worktrees_days", cfg.retention.worktrees_days),
        ("retention.records_days", cfg.retention.records_days),
        ("retention.log_max_mb", cfg.retention.log_max_mb),
        ("retention.log_keep", cfg.retention.log_keep),
        ("disk.min_free_mb", cfg.disk.min_free_mb),
    ):
        if not value >= 0:
            raise ConfigError(f"{key}: must be >= 0")
    if not 0 <= cfg.disk.alert_percent <= 100:
        raise ConfigError("disk.alert_percent: must be between 0 and 100")
