"""Intake alone on a real nats-server: Gitea events become the StageEngine's inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.stage_engine import StatusQuery
from actors.task_summary import FindTasks, TaskSummary
from bus import subjects
from bus.messages import CommitStatusEvent, PullRequestEvent, PushEvent, Reevaluate, Reply
from conveyor.config import Config
from tests.actors.conftest import ActorUnderTest, StartActor, received
from tests.harness import make_config, wait_until

GITEA_REPO = "conveyor/demo"
HEAD = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
ROW = {
    "id": "DEMO-1",
    "repo": "demo",
    "title": "t",
    "stage": "testing",
    "step": "work",
    "branch": "conveyor/DEMO-1",
    "head_sha": HEAD,
}
SUMMARY = TaskSummary(
    id="DEMO-1",
    repo="demo",
    title="t",
    stage="testing",
    step="work",
    job_id="",
    job_status="",
    escalated=False,
    approved=False,
    developer_retries=0,
    branch="conveyor/DEMO-1",
    reason="",
    updated_at=0.0,
    head_sha=HEAD,
    hold="",
    tracker_state="",
    external_id="",
    cost_usd=0.0,
)


def matches(query: FindTasks, task: TaskSummary) -> bool:
    """The engine's rule: same repository, and on the branch, at the commit or on a stage."""
    return query.repo == task.repo and (
        (bool(query.branch) and query.branch == task.branch)
        or (bool(query.commit) and query.commit == task.head_sha)
        or task.stage in query.stages
    )


@pytest.fixture
def gitea_cfg(tmp_path: Path, nats_url: str) -> Config:
    return make_config(tmp_path / "data", nats_url, gitea={"owner": "conveyor"})


class Engine:
    """The StageEngine as Intake sees it: task rows, and a reply to every input."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first

    def answer(self, message: Any) -> Any:
        if isinstance(message, FindTasks):
            return [SUMMARY] if matches(message, SUMMARY) else []
        if isinstance(message, StatusQuery):
            return [dict(ROW)] if message.kind == "tasks" else dict(ROW)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise RuntimeError("engine busy")
        return Reply(ok=True)


def start(start_actor: StartActor, stub: Any, cfg: Config, engine: Engine) -> tuple[Any, Any]:
    ref = stub(engine.answer)
    intake: ActorUnderTest = start_actor("intake", config=cfg, stage_engine=ref)
    return intake, ref


def routed(intake: ActorUnderTest, count: int) -> dict[str, Any]:
    status: dict[str, Any] = wait_until(
        lambda: (lambda s: s if s["routed"] + s["ignored"] >= count else None)(intake.status()),
        what=f"{count} event(s) handled",
    )
    return status


def test_a_final_ci_status_of_a_task_head_asks_the_engine_to_read_its_gate(
    start_actor: StartActor, stub: Any, gitea_cfg: Config
):
    intake, engine = start(start_actor, stub, gitea_cfg, Engine())
    event = CommitStatusEvent(delivery_id="d1", repo=GITEA_REPO, sha=HEAD, state="success")

    intake.bus.publish(subjects.EVENTS_GITEA_STATUS, event, msg_id="gitea:d1")

    assert routed(intake, 1)["routed"] == 1
    (reevaluate,) = received(engine, Reevaluate)
    assert reevaluate.id == "DEMO-1"
    assert reevaluate.cause == f"CI success for {HEAD[:12]}"
    assert not reevaluate.only_pass


def test_a_merged_pull_request_asks_the_engine_about_the_task_on_its_branch(
    start_actor: StartActor, stub: Any, gitea_cfg: Config
):
    intake, engine = start(start_actor, stub, gitea_cfg, Engine())
    event = PullRequestEvent(
        delivery_id="d2",
        repo=GITEA_REPO,
        number=7,
        action="closed",
        merged=True,
        head_branch="conveyor/DEMO-1",
    )

    intake.bus.publish(subjects.EVENTS_GITEA_PULL_REQUEST, event, msg_id="gitea:d2")

    assert routed(intake, 1)["routed"] == 1
    (reevaluate,) = received(engine, Reevaluate)
    assert (reevaluate.id, reevaluate.cause) == ("DEMO-1", "pull request #7 merged")


def test_a_push_a_pending_status_and_another_repository_move_nothing(
    start_actor: StartActor, stub: Any, gitea_cfg: Config
):
    intake, engine = start(start_actor, stub, gitea_cfg, Engine())
    bus = intake.bus

    bus.publish(
        subjects.EVENTS_GITEA_PUSH,
        PushEvent(delivery_id="d3", repo=GITEA_REPO, branch="conveyor/DEMO-1", after=HEAD),
        msg_id="gitea:d3",
    )
    bus.publish(
        subjects.EVENTS_GITEA_STATUS,
        CommitStatusEvent(delivery_id="d4", repo=GITEA_REPO, sha=HEAD, state="pending"),
        msg_id="gitea:d4",
    )
    bus.publish(
        subjects.EVENTS_GITEA_STATUS,
        CommitStatusEvent(delivery_id="d5", repo="someone/else", sha=HEAD, state="success"),
        msg_id="gitea:d5",
    )

    status = routed(intake, 3)
    assert (status["routed"], status["ignored"]) == (0, 3)
    assert received(engine, Reevaluate) == []


def test_an_event_the_engine_failed_to_take_is_delivered_again(
    start_actor: StartActor, stub: Any, gitea_cfg: Config
):
    intake, engine = start(start_actor, stub, gitea_cfg, Engine(fail_first=1))
    event = CommitStatusEvent(delivery_id="d6", repo=GITEA_REPO, sha=HEAD, state="failure")

    intake.bus.publish(subjects.EVENTS_GITEA_STATUS, event, msg_id="gitea:d6")

    status = routed(intake, 1)
    assert (status["failed"], status["routed"]) == (1, 1)
    assert [r.id for r in received(engine, Reevaluate)] == ["DEMO-1", "DEMO-1"]
