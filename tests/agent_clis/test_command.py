"""The generic command adapter, with a real process reading its prompt from stdin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateways.agents.base import AgentRequest
from gateways.agents.command import CommandAdapter
from tests.agent_clis.harness import BASE_PATH, run_agent

pytestmark = pytest.mark.agent_cli

AGENT = """
import json, pathlib, sys
prompt = sys.stdin.read()
pathlib.Path("prompt.txt").write_text(prompt)
print("thinking", flush=True)
usage = {"input_tokens": 10, "output_tokens": 5}
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "usage": usage, "total_cost_usd": 0.25}))
"""


def test_command_gets_the_prompt_on_stdin_and_reports_a_result_lines_usage(
    workdir: Path, tmp_path: Path
) -> None:
    req = AgentRequest(
        binary=sys.executable,
        prompt="Do the work. MARKER-COMMAND-7",
        workdir=workdir,
        run_dir=tmp_path / "run",
        env={"PATH": BASE_PATH},
    )
    run = run_agent(CommandAdapter((sys.executable, "-c", AGENT)), req, timeout_s=30)
    assert (workdir / "prompt.txt").read_text() == "Do the work. MARKER-COMMAND-7"
    assert run.result.outcome == "success", run.explain()
    assert (run.result.usage.input_tokens, run.result.usage.output_tokens) == (10, 5)
    assert run.result.cost_usd == 0.25
    assert any(a.detail == "thinking" for a in run.activities)


def test_command_that_fails_reports_its_stderr(workdir: Path, tmp_path: Path) -> None:
    req = AgentRequest(binary=sys.executable, prompt="x", workdir=workdir, run_dir=tmp_path / "run")
    failing = (sys.executable, "-c", "import sys; sys.exit('no model configured')")
    run = run_agent(CommandAdapter(failing), req, timeout_s=30)
    assert (run.result.outcome, run.result.exit_code) == ("error", 1)
    assert run.result.detail == "no model configured"
