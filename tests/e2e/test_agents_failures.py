"""Real agent CLIs failing through Conveyor: a refused key, refused writes, a rework brief.

Filling what `test_agents_claude.py` and `test_no_work.py` do not cover: the real binaries
answered 401, a Claude run whose writes are refused while it exits 0, and a review's
findings reaching the model in the developer's next prompt.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from bus import subjects
from bus.messages import Alert
from tests.agent_clis.conftest import agent_clis  # noqa: F401 - the session fixture
from tests.e2e.agents_support import KEY_ENV, PRICES, cli_agent, main_files, runs, worktree
from tests.fakes.models import UNAUTHORIZED, FakeModel
from tests.fakes.models.roles import RoleScript
from tests.harness import Harness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.agent_cli, pytest.mark.timeout(600)]

ITEM = "DEMO-1"
FAST = {"pipeline": {"max_developer_retries": 1}, "queue": {"max_attempts": 2}}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "dummy")


@pytest.fixture
def role_model(tmp_path: Path) -> Iterator[FakeModel]:
    server = FakeModel(RoleScript(workdir=worktree(tmp_path, ITEM)))
    server.start()
    yield server
    server.stop()


def _alerts(harness: Harness) -> queue.Queue[Alert]:
    seen: queue.Queue[Alert] = queue.Queue()
    harness.client.bus.subscribe_core(subjects.ALERTS, msgspec.json.Decoder(Alert), seen.put)
    return seen


def _drain(seen: queue.Queue[Alert]) -> list[Alert]:
    found = []
    while not seen.empty():
        found.append(seen.get_nowait())
    return found


@pytest.mark.parametrize("cli", ["claude", "codex"])
def test_a_refused_api_key_escalates_at_once_with_an_alert_saying_so(
    cli: str,
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    role_model: FakeModel,
) -> None:
    # Given the real CLI as the analyst, whose model refuses the key (401)
    role_model.fail_always(UNAUTHORIZED)
    agents = {"analyst": cli_agent(cli, agent_clis[cli], role_model.url)}
    harness = harness_factory(agents=agents, prices=PRICES, **FAST)
    alerts = _alerts(harness)
    harness.submit("Refused")
    # When the pipeline runs
    task = harness.wait_stage(ITEM, "escalated", "architecture", deadline_s=120)
    # Then the task is escalated on analysis after one run: another would be refused too
    assert task["escalated"] is True
    assert task["stage"] == "analysis"
    assert "authentication refused" in task["last_reason"], task["last_reason"]
    (run,) = [r for r in runs(harness) if r.role == "analyst"]
    assert run.outcome == "auth_refused", run
    assert role_model.logged()  # the real binary asked, and was refused
    # and the operator was told so
    escalated = wait_until(
        lambda: [a for a in _drain(alerts) if a.kind == "escalated"], what="the escalation alert"
    )
    assert "authentication refused" in escalated[0].text, escalated


def test_claude_whose_writes_are_refused_while_it_exits_0_is_not_a_success(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    role_model: FakeModel,
) -> None:
    # Given Claude Code as the analyst with its Write tool taken away (it still exits 0)
    analyst = cli_agent("claude", agent_clis["claude"], role_model.url)
    analyst["args"] = ["--disallowedTools", "Write"]
    harness = harness_factory(agents={"analyst": analyst}, prices=PRICES, **FAST)
    harness.submit("Refused writes")

    first = f"{ITEM}.analysis.1.work"

    # When its first job has used both attempts
    def _failed() -> bool:
        job = harness.jobs().get(first)
        return job is not None and job.status == "failed"

    wait_until(_failed, deadline_s=120, what="the analyst job to fail")
    # Then no run counted as a success: each says its writes were denied
    analyst_runs = [r for r in runs(harness) if r.job_id == first]
    assert [r.outcome for r in analyst_runs] == ["permission_denied"] * 2, analyst_runs
    assert all(r.exit_code == 0 for r in analyst_runs), analyst_runs
    assert all(r.reason == "permission denied" for r in analyst_runs), analyst_runs
    # and the item never left analysis with nothing written
    assert "architecture" not in harness.stages_of(ITEM)


def test_review_findings_reach_the_model_in_the_developers_next_prompt(
    harness_factory: Callable[..., Harness],
    agent_clis: dict[str, str],  # noqa: F811
    role_model: FakeModel,
) -> None:
    # Given Claude Code as the developer, and the demo reviewer requesting changes once
    script = role_model.script
    assert isinstance(script, RoleScript)
    agents = {"developer": cli_agent("claude", agent_clis["claude"], role_model.url)}
    harness = harness_factory(agents=agents, prices=PRICES)
    # When the item goes through the review loop
    harness.submit("Rework loop", description="demo: reviewer=request_changes")
    task = harness.wait_stage(ITEM, "done", "escalated", deadline_s=180)
    assert task["stage"] == "done", task.get("last_reason")
    # Then the developer ran twice
    developer = script.runs_of("developer")
    assert [r.visit for r in developer] == [1, 2]
    # and the second developer prompt, as the model received it, carried the findings
    finding = "P1: the scripted reviewer requests changes on this visit."
    assert finding not in developer[0].prompt
    second = developer[1].prompt
    assert "## Brief: what happened before this run" in second
    assert "Sent back by the review gate" in second
    assert finding in second
    # and both visits' changes are what got merged
    assert {"fake_demo_1_v1.py", "fake_demo_1_v2.py"} <= set(main_files(harness))
