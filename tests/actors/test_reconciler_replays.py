"""The Reconciler and a real StageEngine on a real nats-server, with a fake clock.

The forge is a stand-in whose CI state the test sets: a red status whose webhook
was lost must not strand a quiet development task, and the Reconciler speaks only
of moves its own replay made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.notice_policy import KIND_GATE_FAILED
from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.messages import Alert, JobRequested
from conveyor.app import wiring
from conveyor.clock import FakeClock
from conveyor.config import Config
from gateways.forge import CommitStatus
from tests.actors.conftest import ActorUnderTest, Captured
from tests.harness import make_config, wait_until

BASE = "1" * 40
HEAD = "2" * 40
JOB = "DEMO-1.development.1.work"


class Forge:
    """What a CI gate reads: the branch head and its combined status, set by the test."""

    def __init__(self) -> None:
        self.ci_state = "pending"

    def branch_head(self, repo: str, branch: str) -> str | None:
        return HEAD

    def read_file(self, repo: str, ref: str, path: str) -> bytes | None:
        return None

    def list_dir(self, repo: str, ref: str, path: str) -> list[str]:
        return []

    def commit_status(self, repo: str, sha: str) -> CommitStatus | None:
        return CommitStatus(
            sha=sha, state=self.ci_state, context="ci", description="unit tests", updated_at=0.0
        )

    def check_log(self, repo: str, sha: str) -> str:
        return "FAILED test_widget"


def quiet_development_task(now: float) -> Task:
    """A development task whose job is done and whose CI has not reported yet."""
    return Task(
        id="DEMO-1",
        repo="demo",
        title="t",
        branch="conveyor/DEMO-1",
        stage="development",
        step="work",
        visits={"development": 1},
        job_id=JOB,
        job_status="done",
        head_sha=HEAD,
        visit_base_sha=BASE,
        created_at=now,
        updated_at=now,
    )


class Node:
    """StageEngine and Reconciler of one control process, over the stand-in forge."""

    def __init__(self, bus: Bus, cfg: Config, clock: FakeClock) -> None:
        self.forge = Forge()
        bus.store(subjects.BUCKET_TASKS, Task).create("DEMO-1", quiet_development_task(clock.now()))
        ctx = wiring.Context(cfg, bus, clock, forge=self.forge)  # type: ignore[arg-type]
        self.engine = ActorUnderTest(wiring.SPECS["stage_engine"], ctx, clock)
        self.reconciler = ActorUnderTest(wiring.SPECS["reconciler"], ctx, clock)
        self.alerts = Captured(bus, subjects.ALERTS, Alert)
        self.requests = Captured(bus, subjects.JOBS_REQUESTED, JobRequested)

    def task(self) -> dict[str, Any]:
        found: dict[str, Any] = self.engine.ref.ask(
            wiring.StatusQuery("task", "DEMO-1"), timeout=10
        )
        return found

    def stop(self) -> None:
        for actor in (self.reconciler, self.engine):
            actor.ref.stop(block=True, timeout=10)


@pytest.fixture
def node(tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock) -> Iterator[Node]:
    cfg = make_config(tmp_path / "data", nats_url)
    started = Node(bus, cfg, clock)
    yield started
    started.stop()


def test_a_lost_red_ci_retries_a_quiet_development_task_after_the_grace(node: Node):
    grace = node.engine.ctx.cfg.reconciler.grace_s
    interval = node.engine.ctx.cfg.reconciler.interval_s
    # The engine read the gate at start: CI pending, so the task waits
    wait_until(lambda: "CI pending" in node.task()["last_reason"], what="the task waiting on CI")

    # CI goes red, and its webhook is lost
    node.forge.ci_state = "failure"
    node.reconciler.tick(grace - interval)
    assert node.task()["developer_retries"] == 0

    # After the grace, the Reconciler's replay takes the ordinary failed-gate path
    node.reconciler.tick(interval)
    retried = wait_until(
        lambda: (lambda t: t if t["developer_retries"] == 1 else None)(node.task()),
        what="the development stage retried",
    )
    assert retried["stage"] == "development"
    assert retried["job_id"] != JOB
    assert [r.job_id for r in node.requests.wait_for(JobRequested)] == [retried["job_id"]]
    (failed,) = node.alerts.wait_for(Alert, what="the failed-gate alert")
    assert failed.kind == KIND_GATE_FAILED
    assert "CI failure" in failed.text
    assert "attempt 1 of 3" in failed.text

    # And on its next round it says that its own replay moved the task, once
    status = node.reconciler.tick(interval)
    assert status["unblocked_total"] == 1
    alerts = node.alerts.wait_for(Alert, 2, what="the unblocked alert")
    unblocked = [a for a in alerts if a.source == "reconciler"]
    assert len(unblocked) == 1
    assert "development → development (a lost event" in unblocked[0].text
    assert node.reconciler.tick(interval)["unblocked_total"] == 1


def test_a_pending_ci_stays_silent_and_nothing_is_claimed(node: Node):
    grace = node.engine.ctx.cfg.reconciler.grace_s
    wait_until(lambda: "CI pending" in node.task()["last_reason"], what="the task waiting on CI")

    status = node.reconciler.tick(grace)
    assert status["replayed_total"] == 1
    status = node.reconciler.tick(node.engine.ctx.cfg.reconciler.interval_s)

    assert status["unblocked_total"] == 0
    assert node.task()["job_id"] == JOB
    assert node.alerts.of(Alert) == []


def test_with_retry_red_ci_off_a_red_replay_stays_silent(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    cfg = make_config(tmp_path / "data", nats_url, reconciler={"retry_red_ci": False})
    node = Node(bus, cfg, clock)
    try:
        wait_until(lambda: "CI pending" in node.task()["last_reason"], what="waiting on CI")
        node.forge.ci_state = "failure"
        node.reconciler.tick(cfg.reconciler.grace_s)
        status = node.reconciler.tick(cfg.reconciler.interval_s)
        assert status["unblocked_total"] == 0
        assert node.task()["developer_retries"] == 0
    finally:
        node.stop()
