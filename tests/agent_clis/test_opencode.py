"""OpenCode, the real binary, through its adapter against the fake Chat Completions API."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateways.agents.base import ModelPrice, with_price
from gateways.agents.opencode import OpenCodeAdapter
from tests.agent_clis.harness import request, run_agent
from tests.fakes.models import FakeModel, WriteFile

pytestmark = pytest.mark.agent_cli

MODEL = "fake-model"
PRICES = {MODEL: ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0)}


def test_opencode_writes_the_file_with_its_write_tool_and_reports_usage(
    agent_clis: dict[str, str], fake_model: FakeModel, workdir: Path, tmp_path: Path
) -> None:
    fake_model.script.writes = [WriteFile("hello.txt", "hello from the fake model\n")]
    req = request(
        agent_clis["opencode"],
        workdir,
        tmp_path / "run",
        fake_model.url,
        prompt="Create hello.txt with a greeting. MARKER-OPENCODE-7",
        model=MODEL,
    )
    run = run_agent(OpenCodeAdapter(), req, timeout_s=90)
    assert (workdir / "hello.txt").read_text() == "hello from the fake model\n", run.explain()
    assert run.result.outcome == "success", run.explain()
    # Two agent steps count; the title request is not part of the session's steps
    assert run.result.usage.input_tokens == 2 * 123, run.explain()
    assert run.result.usage.output_tokens == 2 * 45
    # An unknown model is priced 0 by OpenCode: no cost reported, so the table prices it
    assert run.result.cost_usd is None
    priced = with_price(run.result, MODEL, PRICES)
    assert priced.cost_usd == pytest.approx((246 * 2.0 + 90 * 8.0) / 1e6)
    assert any(a.kind == "tool" for a in run.activities)
    assert fake_model.saw("MARKER-OPENCODE-7")
    assert {r.path for r in fake_model.requests} == {"/v1/chat/completions"}
