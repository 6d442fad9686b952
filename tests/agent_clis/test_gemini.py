"""Gemini CLI, the real binary, through its adapter against the fake Gemini API."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateways.agents.base import ModelPrice, with_price
from gateways.agents.gemini import GeminiAdapter
from tests.agent_clis.harness import request, run_against_fault, run_agent
from tests.fakes.models import UNAUTHORIZED, FakeModel, WriteFile

pytestmark = pytest.mark.agent_cli

PRICES = {"*": ModelPrice(input_per_mtok=0.5, output_per_mtok=3.0)}


def test_gemini_writes_the_file_with_write_file_and_reports_usage_priced_by_the_table(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    fake_model.script.writes = [WriteFile("hello.txt", "hello from the fake model\n")]
    req = request(
        agent_clis["gemini"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt with a greeting. MARKER-GEMINI-7",
    )
    run = run_agent(GeminiAdapter(), req, timeout_s=60)
    assert (workdir / "hello.txt").read_text() == "hello from the fake model\n", run.explain()
    assert run.result.outcome == "success", run.explain()
    # The model router's call, then the write turn and the final turn: three replies
    calls = len(fake_model.requests)
    assert calls == 3, [r.path for r in fake_model.requests]
    assert run.result.usage.input_tokens == calls * 123, run.explain()
    assert run.result.usage.output_tokens == calls * 45
    assert run.result.cost_usd is None
    priced = with_price(run.result, None, PRICES)
    assert priced.cost_usd == pytest.approx((calls * 123 * 0.5 + calls * 45 * 3.0) / 1e6)
    assert any(a.kind == "tool" for a in run.activities)
    assert fake_model.saw("MARKER-GEMINI-7")
    assert all(r.path.startswith("/v1beta/models/") for r in fake_model.requests)


def test_gemini_refused_api_key_is_reported_as_auth_refused(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    run = run_against_fault(
        GeminiAdapter(), agent_clis["gemini"], fake_model, UNAUTHORIZED, workdir, tmp_path / "run"
    )
    assert run.result.exit_code == 401 % 256, run.explain()
    assert run.result.outcome == "auth_refused", run.explain()
