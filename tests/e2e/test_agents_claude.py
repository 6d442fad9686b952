"""Claude Code, the real binary, as the developer of a work item driven by Conveyor.

The fake Anthropic API answers the developer's run; every other role stays the demo agent.
Each run is kept short by the CLI's own retry and timeout settings (`max_retries`,
`request_timeout_s`) and by Conveyor's brakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.launcher_policy import Run
from actors.queue_policy import Job
from bus import subjects
from bus.messages import RunHeartbeat
from conveyor.layout import Layout
from gateways import git
from tests.agent_clis.conftest import agent_clis  # noqa: F401 - the session fixture
from tests.fakes.models import HANG, RATE_LIMITED, STALL, FakeModel, Script, WriteFile
from tests.fakes.models.script import Fault
from tests.harness import Harness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.agent_cli, pytest.mark.timeout(600)]

MODEL = "claude-sonnet-4-5"
ITEM = "DEMO-1"


class HangAfter(FakeModel):
    """Answers the first `answered` requests by the script, then hangs every later one."""

    def __init__(self, script: Script, answered: int) -> None:
        super().__init__(script)
        self.answered = answered

    def _fault(self) -> Fault | None:
        if len(self.requests) > self.answered:
            return HANG
        return super()._fault()


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return Layout((tmp_path / "data").resolve()).worktree("demo", ITEM)


@pytest.fixture
def fake_model(worktree: Path) -> Iterator[FakeModel]:
    server = FakeModel(Script(workdir=worktree))
    server.start()
    yield server
    server.stop()


def claude_developer(binary: str, url: str, **agent: Any) -> dict[str, Any]:
    """The one config block that puts Claude Code on the developer role."""
    return {
        "developer": {
            "cli": "claude",
            "binary": binary,
            "model": MODEL,
            "base_url": url,
            "api_key_env": "CONVEYOR_TEST_ANTHROPIC_KEY",
            "max_retries": 1,
            "request_timeout_s": 30.0,
            **agent,
        }
    }


def development_job(harness: Harness) -> Job | None:
    return next((j for j in harness.jobs().values() if j.stage == "development"), None)


def runs_of(harness: Harness, job_id: str) -> list[Run]:
    store = harness.client.bus.store(subjects.BUCKET_RUNS, Run)
    found = [e.value for e in store.load_all().values() if e.value.job_id == job_id]
    return sorted(found, key=lambda r: r.attempt)


def finished_job(harness: Harness) -> Job:
    """The development job once finished, the item approved at analysis on the way."""
    harness.wait_stage(ITEM, "development", "review", "testing", "escalated", deadline_s=60)

    def _done() -> Job | None:
        job = development_job(harness)
        return job if job is not None and job.status in ("done", "failed") else None

    result: Job = wait_until(_done, deadline_s=120, what="the development job to finish")
    return result


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_ANTHROPIC_KEY", "dummy")


def test_claude_as_developer_writes_the_change_with_its_tool_and_records_usage_and_cost(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    fake_model: FakeModel,
    worktree: Path,
) -> None:
    # Given Claude Code on the developer role, and a model that writes one file with Write
    fake_model.script.writes = [WriteFile("hello_claude.py", "GREETING = 'hello'\n")]
    fake_model.script.final_text = "Done: wrote hello_claude.py. MARKER-DEV"
    harness = harness_factory(agents=claude_developer(agent_clis["claude"], fake_model.url))
    # When a work item is submitted and approved
    harness.submit("Add a greeting")
    task = harness.wait_stage(ITEM, "review", "testing", "done", deadline_s=120)
    # Then the development stage passed with the file Claude's own tool wrote, pushed
    assert "development" in harness.stages_of(ITEM)
    bare = harness.layout.forge / "repos" / "demo.git"
    shown = git.run_git(["show", f"{task['branch']}:hello_claude.py"], git_dir=bare)
    assert shown.strip() == "GREETING = 'hello'"
    # and the prompt reached the model, and usage and cost were recorded on the job and run
    assert fake_model.saw(ITEM)
    job = development_job(harness)
    assert job is not None
    assert job.status == "done", job
    # sonnet-4-5 at $3/M in, $15/M out, as Claude Code itself priced two turns
    assert job.cost_usd == pytest.approx(246 * 3e-6 + 90 * 15e-6)
    (run,) = runs_of(harness, job.id)
    assert run.outcome == "success"
    assert run.usage["input_tokens"] == 246
    assert run.usage["output_tokens"] == 90
    assert run.usage["cost_usd"] == pytest.approx(job.cost_usd)


def test_a_rate_limited_run_waits_without_spending_an_attempt_then_finishes(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    fake_model: FakeModel,
) -> None:
    # Given a model that answers 429 to both requests of the first run (1 retry), then works
    fake_model.script.writes = [WriteFile("hello_claude.py", "GREETING = 'hi'\n")]
    fake_model.fail_next(RATE_LIMITED, count=2)
    # and a queue that allows one attempt only
    harness = harness_factory(
        agents=claude_developer(agent_clis["claude"], fake_model.url),
        queue={"max_attempts": 1},
    )
    harness.submit("Add a greeting")
    # When the development job finishes
    job = finished_job(harness)
    # Then it is done: the rate-limited run did not spend the only attempt
    assert job.status == "done", job
    assert job.attempts == 2
    assert job.max_attempts - job.attempts == 0
    first, second = runs_of(harness, job.id)
    assert first.outcome == "rate_limited"
    assert first.reason == "rate limited (429)"
    assert first.defer_s > 0
    assert second.outcome == "success"
    assert len(fake_model.logged("/v1/messages")) >= 4


def test_a_stalled_stream_is_killed_by_the_stall_brake_and_reported_stalled(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    fake_model: FakeModel,
) -> None:
    # Given a model whose stream stops after its first event, and a 2 s stall brake
    fake_model.fail_always(STALL)
    harness = harness_factory(
        agents=claude_developer(agent_clis["claude"], fake_model.url, stall_s=2.0),
        queue={"max_attempts": 1},
    )
    harness.submit("Add a greeting")
    # When the development job ends
    job = finished_job(harness)
    # Then the run was killed by the brake, not by the 1800 s timeout, and says why
    assert job.status == "failed", job
    assert job.error == "stalled (no output for 2s)"
    (run,) = runs_of(harness, job.id)
    assert run.outcome == "stalled"
    assert run.exit_code is None


def test_a_run_crossing_its_budget_mid_run_is_killed_and_reported_over_budget(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    worktree: Path,
) -> None:
    # Given a model that answers the first turn (123 tokens in) and then hangs, and a
    # developer allowed 100 tokens per run
    server = HangAfter(Script(workdir=worktree), answered=1)
    server.script.writes = [WriteFile("a.py", "A = 1\n"), WriteFile("b.py", "B = 2\n")]
    server.start()
    try:
        harness = harness_factory(
            agents=claude_developer(agent_clis["claude"], server.url, max_run_tokens=100),
            queue={"max_attempts": 1},
        )
        harness.submit("Add a greeting")
        # When the development job ends
        job = finished_job(harness)
    finally:
        server.stop()
    # Then the run was killed the moment its running total crossed the ceiling
    assert job.status == "failed", job
    assert "max_run_tokens 100" in job.error
    (run,) = runs_of(harness, job.id)
    assert run.outcome == "over_budget"
    # (Claude reports the first turn's usage as it streams; the run never got further)
    assert run.usage["input_tokens"] == 123
    assert not (worktree / "b.py").exists()


def test_running_totals_travel_on_heartbeats_until_the_stall_brake_kills_the_run(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    worktree: Path,
) -> None:
    # Given a model that answers the first turn and then never answers again, and a 3 s
    # stall brake
    server = HangAfter(Script(workdir=worktree), answered=1)
    server.script.writes = [WriteFile("a.py", "A = 1\n"), WriteFile("b.py", "B = 2\n")]
    server.start()
    beats: list[RunHeartbeat] = []
    try:
        harness = harness_factory(
            agents=claude_developer(agent_clis["claude"], server.url, stall_s=3.0),
            queue={"max_attempts": 1},
        )
        harness.client.bus.subscribe_core(
            subjects.HEARTBEATS, msgspec.json.Decoder(RunHeartbeat), beats.append
        )
        harness.submit("Add a greeting")
        job = finished_job(harness)
    finally:
        server.stop()
    # Then while it waited, the launcher's heartbeats carried its running tokens and cost
    running = [b.usage for b in list(beats) if b.job_id == job.id and b.usage]
    assert running, beats
    assert running[-1]["input_tokens"] == 123
    assert running[-1]["cost_usd"] > 0  # priced by the table: the stream has no cost yet
    # and the silent wait for the model was a stall
    assert job.error == "stalled (no output for 3s)"
