"""A red check's output reaches the developer's next run through its brief."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conveyor.app.cli import main
from tests.harness import Harness

pytestmark = pytest.mark.e2e

# The demo repository's check runs its unit tests; the broken feature fails this one.
FAILING_CASE = "FAIL: test_feature_reports_done"


def test_the_second_developer_run_is_told_the_red_checks_output(harness: Harness) -> None:
    # Given a developer whose first visit breaks the feature's unit test
    item = harness.submit("Red once", description="demo: developer=fail")["task"]["id"]

    # When the check goes red and development runs again, then the item moves on
    harness.wait_stage(item, "review")

    # Then the task's brief carries the check's state, context and the tail of its output
    base = ["--nats-url", harness.url]
    detail = CliRunner().invoke(main, [*base, "status", item, "--json"])
    assert detail.exit_code == 0, detail.output
    (brief,) = [b for b in json.loads(detail.output)["briefs"] if b["kind"] == "ci"]
    assert brief["text"].startswith("CI failure at ")
    assert "conveyor/ci: check exited 1" in brief["text"]
    assert "The check's output ends with:" in brief["text"]
    assert FAILING_CASE in brief["text"]
    # and the second developer run's prompt carries it
    [second] = [
        job
        for job in harness.jobs().values()
        if (job.task_id, job.role, job.visit) == (item, "developer", 2)
    ]
    prompt = (harness.layout.run_dir(second.id, 1) / "prompt.md").read_text()
    assert "Sent back by the development gate (ci at " in prompt
    assert FAILING_CASE in prompt
