"""Real agent CLIs drive a work item through Conveyor, answered by a fake model per role.

The fake model reads each prompt's role, item, stage and visit and answers with the tool
calls (in the CLI's own tool) that write what that stage's gate needs. When one CLI
plays every role, the repository has deploy commands, so Conveyor deploys without a
deployer run; otherwise the demo agent plays the roles the CLI does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent_clis.conftest import agent_clis  # noqa: F401 - the session fixture
from tests.e2e.agents_support import (
    KEY_ENV,
    PRICES,
    ROLES,
    cli_agent,
    deploying_repo,
    main_files,
    runs,
    worktree,
)
from tests.fakes.models import FakeModel
from tests.fakes.models.roles import RoleScript
from tests.harness import ALL_STAGES, Harness

pytestmark = [pytest.mark.e2e, pytest.mark.agent_cli, pytest.mark.timeout(600)]

ITEM = "DEMO-1"
AGENT_STAGES = ["analysis", "architecture", "development", "review", "testing"]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "dummy")


@pytest.fixture
def role_model(tmp_path: Path) -> Iterator[FakeModel]:
    server = FakeModel(RoleScript(workdir=worktree(tmp_path, ITEM)))
    server.start()
    yield server
    server.stop()


def _script(model: FakeModel) -> RoleScript:
    assert isinstance(model.script, RoleScript)
    return model.script


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_one_cli_plays_every_role_from_created_to_done(
    cli: str,
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    role_model: FakeModel,
) -> None:
    # Given one CLI on every agent role, on a fake model that answers each role's prompt
    agents = {role: cli_agent(cli, agent_clis[cli], role_model.url) for role in ROLES}
    harness = harness_factory(agents=agents, repos=deploying_repo(), prices=PRICES)
    # When a work item is submitted (and approved at analysis)
    harness.submit("Greet the user")
    task = harness.wait_stage(ITEM, "done", "escalated", deadline_s=300)
    # Then it went through every stage to done, merged to main
    assert task["stage"] == "done", task.get("last_reason")
    assert harness.stages_of(ITEM) == ALL_STAGES
    files = main_files(harness)
    assert "fake_demo_1_v1.py" in files
    assert f"docs/work-items/{ITEM}/12-review.md" in files
    assert f"docs/work-items/{ITEM}/06-adr/ADR-001-fake-model.md" in files
    # and each agent stage was one run of the real CLI, in order, each with its role's prompt
    seen = [(run.role, run.stage) for run in _script(role_model).runs]
    assert seen == list(zip(ROLES[:5], AGENT_STAGES, strict=True)), seen
    # and every agent run finished as a success with its usage and a cost recorded (the
    # deploy runs are Conveyor's own commands)
    agent_runs = [r for r in runs(harness) if r.stage in AGENT_STAGES]
    assert [r.outcome for r in agent_runs] == ["success"] * 5, agent_runs
    for run in agent_runs:
        assert run.usage["input_tokens"] > 0, run
        assert run.usage["output_tokens"] > 0, run
        assert run.usage["cost_usd"] > 0, run
    jobs = [j for j in harness.jobs().values() if j.stage in AGENT_STAGES]
    assert len(jobs) == 5
    assert all(j.status == "done" and j.cost_usd > 0 for j in jobs), jobs


@pytest.mark.parametrize("cli", ["gemini", "opencode", "aider"])
def test_a_cli_as_developer_gets_its_change_merged(
    cli: str,
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    role_model: FakeModel,
) -> None:
    # Given the CLI on the developer role (the demo agent on the others)
    if cli == "aider":
        role_model.script.whole_format = True
    agents = {"developer": cli_agent(cli, agent_clis[cli], role_model.url)}
    harness = harness_factory(agents=agents, prices=PRICES)
    # When a work item is submitted
    harness.submit("Greet the user")
    task = harness.wait_stage(ITEM, "done", "escalated", deadline_s=180)
    # Then the developer's change passed the development gate, and the item went on to done
    assert task["stage"] == "done", task.get("last_reason")
    assert harness.stages_of(ITEM) == ALL_STAGES
    assert [(r.role, r.stage) for r in _script(role_model).runs] == [("developer", "development")]
    # with the file the CLI's own tool wrote merged to main
    assert "fake_demo_1_v1.py" in main_files(harness)
    # and the run recorded as a success with its tokens and their price
    (dev,) = [r for r in runs(harness) if r.role == "developer"]
    assert dev.outcome == "success", dev
    assert dev.usage["input_tokens"] > 0, dev
    assert dev.usage["cost_usd"] > 0, dev
