"""Aider, the real program, through its adapter against the fake Chat Completions API."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateways.agents.aider import AiderAdapter
from gateways.agents.base import ModelPrice, with_price
from tests.agent_clis.harness import request, run_agent
from tests.fakes.models import BAD_REQUEST, FakeModel, WriteFile

pytestmark = pytest.mark.agent_cli

MODEL = "fake"
PRICES = {MODEL: ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0)}
WHOLE = ("--edit-format", "whole")


def test_aider_writes_the_file_in_whole_format_and_reports_its_token_counts(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    fake_model.script.whole_format = True
    fake_model.script.writes = [WriteFile("hello.txt", "hello from the fake model\n")]
    req = request(
        agent_clis["aider"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt with a greeting. MARKER-AIDER-7",
        model=MODEL,
        extra_args=WHOLE,
    )
    run = run_agent(AiderAdapter(), req, timeout_s=90)
    assert (workdir / "hello.txt").read_text() == "hello from the fake model\n", run.explain()
    assert run.result.outcome == "success", run.explain()
    # Aider counts tokens itself (the request asks for no usage); one reply, priced by the table
    assert run.result.usage.input_tokens > 0, run.explain()
    assert run.result.usage.output_tokens > 0
    priced = with_price(run.result, MODEL, PRICES)
    usage = run.result.usage
    assert priced.cost_usd == pytest.approx(
        (usage.input_tokens * 3 + usage.output_tokens * 15) / 1e6
    )
    assert fake_model.saw("MARKER-AIDER-7")
    assert len(fake_model.logged("/v1/chat/completions")) == 1
    # History files stay in the run directory; only the repo map's tag cache is left behind
    assert not list(workdir.glob(".aider*history*")), sorted(p.name for p in workdir.iterdir())
    assert (tmp_path / "run" / "aider.chat.history.md").exists()


def test_aider_failed_model_call_exits_zero_but_is_not_success(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    fake_model.fail_always(BAD_REQUEST)
    req = request(
        agent_clis["aider"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt",
        model=MODEL,
        extra_args=WHOLE,
    )
    run = run_agent(AiderAdapter(), req, timeout_s=90)
    assert run.result.exit_code == 0, run.explain()
    assert run.result.outcome == "error", run.explain()
    assert "fake bad request" in run.result.detail
