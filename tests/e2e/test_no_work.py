"""No work is never progress: a developer that commits nothing never gets the item to done.

Before, the development gate read "CI green" at the branch head, which a developer that
failed every attempt left at the architecture commit (whose CI had passed), and the item
went on to done with no code merged.
"""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from bus import subjects
from bus.messages import Alert
from conveyor.app.cli import main
from gateways import git
from tests.agent_clis.conftest import (
    INSTALL_TIMEOUT_S,
    agent_clis,  # noqa: F401 - the installed CLIs fixture
)
from tests.fakes.models import RATE_LIMITED, FakeModel, Script
from tests.harness import Harness

pytestmark = pytest.mark.e2e

FAST = {
    "pipeline": {"max_developer_retries": 1},
    "queue": {"max_attempts": 1},
}


class Alerts:
    """Alerts published while the test runs."""

    def __init__(self, harness: Harness) -> None:
        self._seen: queue.Queue[Alert] = queue.Queue()
        self._kept: list[Alert] = []
        harness.client.bus.subscribe_core(
            subjects.ALERTS, msgspec.json.Decoder(Alert), self._seen.put
        )

    def of(self, task_id: str) -> list[Alert]:
        while not self._seen.empty():
            self._kept.append(self._seen.get_nowait())
        return [a for a in self._kept if a.task_id == task_id]


def _main_has(harness: Harness, path: str) -> bool:
    bare = harness.layout.forge / "repos" / "demo.git"
    return path in git.run_git(["ls-tree", "-r", "--name-only", "main"], git_dir=bare)


def _assert_escalated_on_development(
    harness: Harness, alerts: Alerts, item: str, *, developer_runs: int
) -> dict[str, object]:
    task = harness.wait_stage(item, "escalated", "review", "done", deadline_s=120)
    # The item never got past development: no review, no merge, nothing on main
    assert task["stage"] == "development", harness.stages_of(item)
    assert task["escalated"] is True
    assert "review" not in harness.stages_of(item)
    assert not _main_has(harness, f"docs/work-items/{item}/12-review.md")
    dev_jobs = [j for j in harness.jobs().values() if j.task_id == item and j.role == "developer"]
    assert len(dev_jobs) == developer_runs
    assert {j.status for j in dev_jobs} == {"failed"}
    reason = str(task["last_reason"])
    assert "did not move" in reason, reason
    # and the operator was told, with the reason
    escalations = [a for a in alerts.of(item) if a.kind == "escalated"]
    assert len(escalations) == 1, alerts.of(item)
    assert "did not move" in escalations[0].text
    return task


def test_a_developer_that_crashes_every_attempt_escalates_instead_of_reaching_done(
    harness_factory: Callable[..., Harness],
) -> None:
    # Given a developer that crashes on every visit, committing nothing
    harness = harness_factory(**FAST)
    alerts = Alerts(harness)
    item = harness.submit("Never codes", description="demo: developer=crash*always")["task"]["id"]

    # When the pipeline runs, then development is retried once, then escalated
    task = _assert_escalated_on_development(harness, alerts, item, developer_runs=2)
    assert "exit code" in str(task["job_reason"])
    # and the retried developer was told it produced nothing
    second = harness.jobs()[f"{item}.development.2.work"]
    assert second.brief.startswith("Sent back by the development gate (no_work at ")
    assert "You produced nothing" in second.brief

    # and `conveyor status ID` says why, in its table and in --json
    base = ["--nats-url", harness.url, "status", item]
    shown = CliRunner().invoke(main, base)
    assert shown.exit_code == 0, shown.output
    assert "job failed: exit code" in shown.output
    assert "did not move" in shown.output
    assert "no_work" in shown.output
    record = json.loads(CliRunner().invoke(main, [*base, "--json"]).output)
    assert record["job_reason"] == task["job_reason"]
    # (the same failure at the same head is kept once, counted)
    assert [(b["kind"], b["count"]) for b in record["briefs"]] == [("no_work", 2)]


def test_review_findings_reach_the_next_developer_job_as_a_brief(harness: Harness) -> None:
    # Given a reviewer that requests changes on its first visit
    item = harness.submit("Review loop", description="demo: reviewer=request_changes")["task"]["id"]

    # When the item goes through the review loop to done
    task = harness.wait_stage(item, "done", "escalated", deadline_s=120)
    assert task["stage"] == "done", task["last_reason"]

    # Then the second development job carried the review's findings, the first none
    jobs = harness.jobs()
    assert jobs[f"{item}.development.1.work"].brief == ""
    brief = jobs[f"{item}.development.2.work"].brief
    assert brief.startswith("Sent back by the review gate (review at ")
    assert "## Findings" in brief
    assert "verdict:" not in brief  # the body, not the front matter
    assert [b["kind"] for b in task["briefs"]] == ["review"]


@pytest.fixture
def fake_anthropic(tmp_path: Path) -> Iterator[FakeModel]:
    server = FakeModel(Script(workdir=tmp_path / "unused"))
    server.start()
    yield server
    server.stop()


@pytest.mark.agent_cli
# A fresh machine installs the CLIs inside this test's time.
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)
def test_real_claude_code_answered_429_never_gets_the_item_to_done(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811 - the fixture imported above
    fake_anthropic: FakeModel,
    tmp_path: Path,
) -> None:
    # Given the real Claude Code binary as the developer, whose model always answers 429
    fake_anthropic.fail_always(RATE_LIMITED)
    claude = agent_clis["claude"]
    home = tmp_path / "claude-home"
    home.mkdir()
    developer = {
        "command": [
            claude,
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
        ],
        "timeout_s": 120.0,
        "env": {
            "PATH": f"{Path(claude).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": fake_anthropic.url,
            "ANTHROPIC_API_KEY": "dummy",
            "IS_SANDBOX": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "API_TIMEOUT_MS": "5000",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        },
    }
    # A model that never lifts its limit: no waits, so each refusal is a failed attempt
    queue_cfg = {**FAST["queue"], "max_model_waits": 0}
    harness = harness_factory(**{**FAST, "queue": queue_cfg}, agents={"developer": developer})
    alerts = Alerts(harness)
    item = harness.submit("Rate limited")["task"]["id"]

    # When the pipeline runs, then the item escalates on development after the retries
    task = _assert_escalated_on_development(harness, alerts, item, developer_runs=2)
    # and it was the real binary that asked the fake model (and was refused)
    assert fake_anthropic.logged("/v1/messages")
    # and the operator reads why, in the model's words, not an exit code
    assert "rate limited (429)" in str(task["last_reason"]), task["last_reason"]
    escalation = next(a for a in alerts.of(item) if a.kind == "escalated")
    assert "rate limited (429)" in escalation.text, escalation.text
