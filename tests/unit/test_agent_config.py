"""One line per role picks the agent CLI; the price table; config errors name the key."""

from __future__ import annotations

import re

import msgspec
import pytest

from actors import launcher_policy as lp
from actors.jobs.agent import price_table
from bus.messages import LaunchOrder
from conveyor import config as config_mod
from conveyor.config import Config, QueueConfig, RepoConfig
from conveyor.config_check import AGENT_CLIS
from conveyor.errors import ConfigError
from gateways.agents.base import Usage, price_usd
from gateways.agents.registry import CLIS

REPO = RepoConfig(name="demo", prefix="DEMO")


def load(agents: dict[str, object], **more: object) -> Config:
    overrides: dict[str, object] = {"repos": [msgspec.to_builtins(REPO)], "agents": agents}
    overrides.update(more)
    return config_mod.load(env={}, overrides=overrides)


def order(role: str = "developer") -> LaunchOrder:
    return LaunchOrder(
        job_id="DEMO-1.development.1.work",
        attempt=1,
        task_id="DEMO-1",
        repo="demo",
        stage="development",
        role=role,
        visit=1,
        branch="feature/DEMO-1-x",
        title="x",
    )


def plan(cfg: Config) -> lp.LaunchPlan:
    return lp.plan(
        order(), cfg, worktree="/w", run_dir="/r", python="/py", base_env={"PATH": "/bin"}
    )


def test_every_cli_the_config_accepts_has_an_adapter() -> None:
    assert AGENT_CLIS == CLIS


def test_the_default_is_todays_command_with_no_brakes() -> None:
    agent = config_mod.load(env={}).agents.developer
    assert agent.cli == "command"
    assert agent.command == list(config_mod.DEMO_AGENT_COMMAND)
    assert (agent.stall_s, agent.max_run_usd, agent.max_run_tokens) == (0.0, 0.0, 0)


def test_one_line_puts_claude_on_a_role_with_model_args_endpoint_and_brakes() -> None:
    cfg = load(
        {
            "developer": {
                "cli": "claude",
                "model": "claude-sonnet-4-5",
                "args": ["--permission-mode", "acceptEdits"],
                "base_url": "http://127.0.0.1:9/",
                "api_key_env": "MY_ANTHROPIC_KEY",
                "stall_s": 30.0,
                "max_run_usd": 0.5,
                "max_run_tokens": 100000,
            }
        }
    )
    agent = cfg.agents.developer
    assert (agent.cli, agent.model, agent.args) == (
        "claude",
        "claude-sonnet-4-5",
        ["--permission-mode", "acceptEdits"],
    )
    launch = plan(cfg)
    assert launch.kind == "agent"
    assert (launch.cli, launch.stall_s, launch.max_run_usd, launch.max_run_tokens) == (
        "claude",
        30.0,
        0.5,
        100000,
    )
    # The other roles keep the demo agent
    assert cfg.agents.reviewer.cli == "command"


@pytest.mark.parametrize(
    ("agent", "key"),
    [
        ({"cli": "cursor"}, "agents.developer.cli"),
        ({"cli": "command", "command": []}, "agents.developer.command"),
        ({"cli": "claude", "api_key_env": "sk-ant-123 secret"}, "agents.developer.api_key_env"),
        ({"cli": "claude", "base_url": "not a url"}, "agents.developer.base_url"),
        ({"stall_s": -1.0}, "agents.developer.stall_s"),
        ({"max_run_usd": -0.1}, "agents.developer.max_run_usd"),
        ({"max_run_tokens": -5}, "agents.developer.max_run_tokens"),
        ({"request_timeout_s": 0.0}, "agents.developer.request_timeout_s"),
    ],
)
def test_a_bad_agent_setting_is_an_error_naming_the_key(agent: dict[str, object], key: str):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load({"developer": agent})


def test_a_cli_other_than_command_needs_no_command() -> None:
    assert load({"tester": {"cli": "codex", "command": []}}).agents.tester.cli == "codex"


def test_the_price_table_has_defaults_and_the_operator_edits_it() -> None:
    default = price_table(config_mod.load(env={}))
    usage = Usage(input_tokens=246, output_tokens=90)
    # The rate Claude Code itself priced sonnet-4-5 at
    assert price_usd("claude-sonnet-4-5", usage, default) == pytest.approx(0.002088)
    assert price_usd("unknown-model", usage, default) is None
    edited = price_table(
        load({}, prices={"*": {"input": 1.0, "output": 2.0}, "m": {"input": 1, "output": 1}})
    )
    assert price_usd("other", usage, edited) == pytest.approx((246 + 180) / 1e6)
    # An operator's table adds to the defaults
    assert price_usd("claude-sonnet-4-5", usage, edited) == pytest.approx(0.002088)
    cached = Usage(cached_tokens=1_000_000)
    # No cached price: cached tokens cost what input tokens cost
    assert price_usd("m", cached, edited) == pytest.approx(1.0)


def test_a_negative_price_names_its_key() -> None:
    with pytest.raises(ConfigError, match=re.escape("prices.m.output")):
        load({}, prices={"m": {"input": 1.0, "output": -2.0}})


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("rate_limited", "rate limited (429)"),
        ("overloaded", "overloaded (529)"),
        ("auth_refused", "authentication refused"),
        ("context_exceeded", "context exceeded"),
        ("permission_denied", "permission denied"),
        ("timed_out", "timed out"),
        ("success", ""),
        ("", ""),
        ("error", "error: boom"),
    ],
)
def test_each_outcome_has_its_reason(outcome: str, reason: str) -> None:
    assert lp.outcome_reason(outcome, "boom") == reason


def test_a_turned_away_run_waits_the_retry_after_else_the_queue_back_off() -> None:
    cfg = QueueConfig(backoff_base_s=2.0, backoff_max_s=60.0)
    assert lp.wait_s("rate_limited", 7.0, 1, cfg) == 7.0
    assert lp.wait_s("overloaded", None, 3, cfg) == 8.0
    assert lp.wait_s("rate_limited", 3600.0, 1, cfg) == 60.0
    assert lp.wait_s("error", 7.0, 1, cfg) == 0.0
    assert lp.wait_s("auth_refused", None, 1, cfg) == 0.0


def test_a_ceiling_is_crossed_only_past_it_and_named() -> None:
    cfg = load({"developer": {"max_run_tokens": 100, "max_run_usd": 0.01}})
    launch = plan(cfg)
    assert lp.over_budget(launch, 100, 0.01) == ""
    assert "max_run_tokens 100" in lp.over_budget(launch, 101, None)
    assert "max_run_usd" in lp.over_budget(launch, 50, 0.011)
    off = plan(load({}))
    assert lp.over_budget(off, 10**9, 10**6) == ""
