"""Claude Code, the real binary, through its adapter against the fake Anthropic API."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateways.agents.claude import ClaudeAdapter
from tests.agent_clis.harness import request, run_against_fault, run_agent
from tests.fakes.models import HANG, RATE_LIMITED, UNAUTHORIZED, FakeModel, WriteFile

pytestmark = pytest.mark.agent_cli

MODEL = "claude-sonnet-4-5"


def test_claude_writes_the_file_with_its_write_tool_and_reports_usage_and_cost(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    # Given a model that answers with one Write call, then a final text
    fake_model.script.writes = [WriteFile("hello.txt", "hello from the fake model\n")]
    req = request(
        agent_clis["claude"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt with a greeting. MARKER-CLAUDE-7",
        model=MODEL,
    )
    # When the real binary runs
    run = run_agent(ClaudeAdapter(), req, timeout_s=60)
    # Then the file exists, and the parser saw success with the fake's usage and Claude's cost
    assert (workdir / "hello.txt").read_text() == "hello from the fake model\n", run.explain()
    assert run.result.outcome == "success", run.explain()
    assert run.result.exit_code == 0
    assert run.result.usage.input_tokens == 2 * 123
    assert run.result.usage.output_tokens == 2 * 45
    # sonnet-4-5 at $3/M in, $15/M out, priced by the CLI itself
    assert run.result.cost_usd == pytest.approx(246 * 3e-6 + 90 * 15e-6)
    assert any(a.kind == "tool" for a in run.activities)
    assert fake_model.saw("MARKER-CLAUDE-7")
    assert all(r.path == "/v1/messages" for r in fake_model.requests)


def test_claude_rate_limited_by_the_model_is_reported_as_rate_limited(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    run = run_against_fault(
        ClaudeAdapter(),
        agent_clis["claude"],
        fake_model,
        RATE_LIMITED,
        workdir,
        tmp_path / "run",
        model=MODEL,
        max_retries=1,
        request_timeout_s=10,
    )
    assert run.result.outcome == "rate_limited", run.explain()
    assert run.result.exit_code == 1
    assert any(a.kind == "retry" for a in run.activities)
    assert len(fake_model.logged("/v1/messages")) == 2


def test_claude_refused_api_key_is_reported_as_auth_refused(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    run = run_against_fault(
        ClaudeAdapter(),
        agent_clis["claude"],
        fake_model,
        UNAUTHORIZED,
        workdir,
        tmp_path / "run",
        model=MODEL,
        max_retries=1,
        request_timeout_s=10,
    )
    assert run.result.outcome == "auth_refused", run.explain()
    assert run.result.exit_code != 0


def test_claude_whose_writes_were_denied_exits_zero_but_is_not_success(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    # Given no permission flag at all: headless Claude denies the Write call
    fake_model.script.writes = [WriteFile("hello.txt", "hello\n")]
    req = request(
        agent_clis["claude"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt",
        model=MODEL,
    )
    run = run_agent(ClaudeAdapter(skip_permissions=False), req, timeout_s=60)
    assert not (workdir / "hello.txt").exists()
    assert run.result.exit_code == 0, run.explain()
    assert run.result.outcome == "permission_denied", run.explain()


def test_claude_hang_before_headers_ends_by_the_request_timeout(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    # Given a model that never answers, and a 3 s request timeout without retries
    run = run_against_fault(
        ClaudeAdapter(),
        agent_clis["claude"],
        fake_model,
        HANG,
        workdir,
        tmp_path / "run",
        model=MODEL,
        max_retries=0,
        request_timeout_s=3,
    )
    assert not run.timed_out, run.explain()
    assert run.result.outcome == "error", run.explain()
    assert run.result.exit_code == 1
