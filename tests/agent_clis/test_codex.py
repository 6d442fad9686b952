"""OpenAI Codex, the real binary, through its adapter against the fake Responses API."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateways.agents.base import ModelPrice, with_price
from gateways.agents.codex import CodexAdapter
from tests.agent_clis.harness import request, run_against_fault, run_agent
from tests.fakes.models import RATE_LIMITED, STALL, FakeModel, WriteFile

pytestmark = pytest.mark.agent_cli

MODEL = "gpt-5.5"
PRICES = {MODEL: ModelPrice(input_per_mtok=1.25, output_per_mtok=10.0, cached_per_mtok=0.125)}


def test_codex_writes_the_file_with_apply_patch_and_reports_usage_priced_by_the_table(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    fake_model.script.writes = [WriteFile("hello.txt", "hello from the fake model\n")]
    fake_model.script.cached_tokens = 20
    req = request(
        agent_clis["codex"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt with a greeting. MARKER-CODEX-7",
        model=MODEL,
    )
    run = run_agent(CodexAdapter(), req, timeout_s=60)
    assert (workdir / "hello.txt").read_text() == "hello from the fake model\n", run.explain()
    assert run.result.outcome == "success", run.explain()
    # Two responses of 123 fresh + 20 cached in, 45 out; Codex reports no cost of its own
    assert run.result.usage.input_tokens == 2 * 123, run.explain()
    assert run.result.usage.cached_tokens == 2 * 20
    assert run.result.usage.output_tokens == 2 * 45
    assert run.result.cost_usd is None
    priced = with_price(run.result, MODEL, PRICES)
    assert priced.cost_usd == pytest.approx((246 * 1.25 + 40 * 0.125 + 90 * 10.0) / 1e6)
    assert any(a.kind == "tool" for a in run.activities)
    assert fake_model.saw("MARKER-CODEX-7")
    assert {r.path for r in fake_model.requests} == {"/v1/responses"}


def test_codex_rate_limited_by_the_model_is_reported_as_rate_limited(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    run = run_against_fault(
        CodexAdapter(),
        agent_clis["codex"],
        fake_model,
        RATE_LIMITED,
        workdir,
        tmp_path / "run",
        model=MODEL,
        max_retries=1,
    )
    assert run.result.exit_code == 1, run.explain()
    assert run.result.outcome == "rate_limited", run.explain()


def test_codex_stalled_stream_ends_by_its_idle_timeout_as_an_error(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    # Given a model that sends headers and its first event, then nothing
    run = run_against_fault(
        CodexAdapter(),
        agent_clis["codex"],
        fake_model,
        STALL,
        workdir,
        tmp_path / "run",
        model=MODEL,
        max_retries=0,
        stall_s=2,
    )
    assert not run.timed_out, run.explain()
    assert run.result.outcome == "error", run.explain()
    assert "idle timeout" in run.result.detail
