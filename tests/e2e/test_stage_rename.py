"""Deploy behaviour follows a stage's gate, not its name.

The pipeline here renames `deploy-staging` to `stage-it` and `deploy` to `ship`,
with the same gates, roles and merge flags. Conveyor must still run the
repository's `staging_command` and `deploy_command` itself, write both verdicts
and carry the item to `done`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.gate_policy import split_front_matter
from gateways import git
from tests.harness import DEMO_CHECK, Harness

pytestmark = pytest.mark.e2e

ITEM = "DEMO-1"

STAGES = [
    {"name": "analysis", "role": "analyst", "gate": "analysis_complete", "human_approval": True},
    {"name": "architecture", "role": "architect", "gate": "architecture_done"},
    {"name": "development", "role": "developer", "gate": "ci_green"},
    {"name": "review", "role": "reviewer", "gate": "review_approved", "on_fail": "development"},
    {"name": "testing", "role": "tester", "gate": "tests_passed", "on_fail": "development"},
    {"name": "stage-it", "role": "deployer", "gate": "staging_status", "merge": True},
    {"name": "ship", "role": "deployer", "gate": "deploy_status", "on_fail": "development"},
]

SCRIPT = """\
import sys

out, stage, item = sys.argv[1:4]
with open(out, "a") as log:
    log.write(f"{stage} {item}\\n")
print(f"deployed {item} to {stage}")
"""


def _front_matter(bare: Path, ref: str, path: str) -> dict[str, Any]:
    text = git.run_git(["show", f"{ref}:{path}"], git_dir=bare)
    data: dict[str, Any] = msgspec.yaml.decode(split_front_matter(text).encode())
    return data


def test_renamed_deploy_stages_still_run_both_commands_and_reach_done(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given a pipeline whose deploy stages are renamed, and a repository with both commands
    script = tmp_path / "deploy_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "deploys.txt"
    command = ["{python}", str(script), str(out), "{stage}", "{work_item}"]
    repos = [
        {
            "name": "demo",
            "prefix": "DEMO",
            "template": "demo",
            "check_command": DEMO_CHECK,
            "staging_command": command,
            "deploy_command": command,
        }
    ]
    harness = harness_factory(repos=repos, pipeline={"stages": STAGES})

    # When a work item goes through the pipeline
    item = harness.submit("Ship it", item_id=ITEM)["task"]["id"]
    task = harness.wait_stage(item, "done", deadline_s=120)

    # Then both commands ran once each, under the renamed stages
    assert out.read_text().splitlines() == [f"stage-it {item}", f"ship {item}"]
    assert harness.stages_of(item)[-3:] == ["stage-it", "ship", "done"]
    # and Conveyor wrote both verdicts into the files the gates read
    bare = harness.layout.forge / "repos" / "demo.git"
    staging = _front_matter(bare, task["branch"], f"docs/work-items/{item}/15-staging-log.md")
    deploy = _front_matter(bare, task["branch"], f"docs/work-items/{item}/14-deploy-log.md")
    assert staging["staging_status"] == "SUCCESS"
    assert deploy["deploy_status"] == "SUCCESS"
    for verdict in (staging, deploy):
        assert verdict["decided_by"] == "conveyor"
        assert verdict["exit_code"] == 0
    assert {job.status for job in harness.jobs().values()} == {"done"}
