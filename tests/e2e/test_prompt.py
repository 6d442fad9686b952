"""What an agent is fed: the `prompt.md` of real runs, with the demo agent playing every role."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from actors.role_text_policy import ROLE_TEXTS
from tests.harness import Harness

pytestmark = pytest.mark.e2e


def _prompt(harness: Harness, item: str, stage: str, visit: int = 1) -> str:
    [job] = [
        job
        for job in harness.jobs().values()
        if (job.task_id, job.stage, job.visit) == (item, stage, visit)
    ]
    return (harness.layout.run_dir(job.id, 1) / "prompt.md").read_text()


def test_each_run_is_fed_its_role_text_contract_earlier_artifacts_and_work_item(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given an operator's own text for the reviewer
    reviewer_text = tmp_path / "reviewer.md"
    reviewer_text.write_text("OPERATOR-REVIEWER-PROSE: be strict.\n")
    harness = harness_factory(agents={"reviewer": {"instructions": str(reviewer_text)}})
    # and a work item whose text carries a marker and a demo directive
    description = "PROMPT-MARKER-41 greet politely.\ndemo: reviewer=request_changes"
    item = harness.submit("Prompt check", description=description)["task"]["id"]

    # When it goes through review twice (the reviewer asks for changes once)
    harness.wait_stage(item, "testing", "done")

    # Then the architect got the shipped text, its ADR contract and the analysis artifacts
    architect = _prompt(harness, item, "architecture")
    assert ROLE_TEXTS["architect"].strip() in architect
    assert f"- `docs/work-items/{item}/06-adr/`: at least one `.md` file" in architect
    assert f"- `docs/work-items/{item}/01-brd.md`\n" in architect
    assert f"- `docs/work-items/{item}/04-test-plan.yaml`\n" in architect
    assert architect.endswith(description + "\n")
    # and the reviewer got the operator's text, still with the generated contract,
    # the ADRs the architect wrote, and the work item whose directive steered it
    review = _prompt(harness, item, "review")
    assert "OPERATOR-REVIEWER-PROSE: be strict." in review
    assert ROLE_TEXTS["reviewer"].strip() not in review
    assert "`verdict` must be exactly one of `APPROVED`, `REQUEST_CHANGES`" in review
    assert f"- `docs/work-items/{item}/06-adr/" in review
    assert "Do not merge anything" in review
    assert review.endswith(description + "\n")
    assert harness.task(item)["developer_retries"] == 1
    # and the second development visit lists only what the stages before development
    # wrote (the review's findings reach it through the brief, not this list)
    again = _prompt(harness, item, "development", visit=2)
    assert "visit 2" in again
    assert "12-review.md" not in again.split("## Artifacts of earlier stages", 1)[1]
