"""Reconciler alone on a real nats-server: quiet tasks get their gate read again."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.reconciler_policy import ReplayMove, ReplayMoves
from actors.stage_engine import StatusQuery
from actors.task_summary import AllTasks, TaskSummary
from bus import subjects
from bus.messages import Alert, Reevaluate
from conveyor.config import Config
from tests.actors.conftest import ActorUnderTest, Captured, StartActor, received


class Board:
    """The StageEngine's task rows as the Reconciler reads them; tests move tasks here."""

    def __init__(self, updated_at: float) -> None:
        self.row: dict[str, Any] = {
            "id": "DEMO-1",
            "repo": "demo",
            "title": "t",
            "stage": "development",
            "step": "work",
            "branch": "conveyor/DEMO-1",
            "job_id": "DEMO-1.development.1.work",
            "job_status": "done",
            "escalated": False,
            "updated_at": updated_at,
        }
        self.moves: list[ReplayMove] = []
        """What the engine reports its replayed gate reads moved."""

    def summary(self) -> TaskSummary:
        blank = {
            "approved": False,
            "developer_retries": 0,
            "reason": "",
            "head_sha": "",
            "hold": "",
            "tracker_state": "",
            "external_id": "",
            "cost_usd": 0.0,
        }
        return msgspec.convert({**blank, **self.row}, TaskSummary)

    def answer(self, message: Any) -> Any:
        if isinstance(message, AllTasks):
            return [self.summary()]
        if isinstance(message, ReplayMoves):
            moves, self.moves = self.moves, []
            return moves
        if isinstance(message, StatusQuery) and message.kind == "tasks":
            return [dict(self.row)]
        return None


@pytest.fixture
def board(clock: Any) -> Board:
    return Board(updated_at=clock.now())


def start(start_actor: StartActor, stub: Any, board: Board) -> tuple[ActorUnderTest, Any]:
    engine = stub(board.answer)
    return start_actor("reconciler", stage_engine=engine), engine


def test_a_quiet_task_with_a_finished_job_gets_one_gate_read_after_its_grace(
    start_actor: StartActor, stub: Any, board: Board, cfg: Config
):
    reconciler, engine = start(start_actor, stub, board)
    grace = cfg.reconciler.grace_s
    interval = cfg.reconciler.interval_s

    # Within the grace the lost event may still come
    reconciler.tick(0.0)
    reconciler.tick(grace - interval)
    assert received(engine, Reevaluate) == []

    status = reconciler.tick(interval)

    (replay,) = received(engine, Reevaluate)
    assert (replay.id, replay.only_pass) == ("DEMO-1", True)
    assert replay.cause.startswith("reconciler: quiet on development")
    assert status["replayed_total"] == 1
    # And not again before another grace has passed
    reconciler.tick(interval)
    assert len(received(engine, Reevaluate)) == 1
    reconciler.tick(grace)
    assert len(received(engine, Reevaluate)) == 2


def test_a_task_whose_job_still_runs_is_left_alone(
    start_actor: StartActor, stub: Any, board: Board, cfg: Config
):
    board.row["job_status"] = "running"
    reconciler, engine = start(start_actor, stub, board)

    status = reconciler.tick(cfg.reconciler.grace_s * 3)

    assert received(engine, Reevaluate) == []
    assert status["replayed_total"] == 0


def test_a_replayed_task_that_moves_on_is_reported_unblocked(
    start_actor: StartActor, stub: Any, board: Board, cfg: Config
):
    reconciler, _engine = start(start_actor, stub, board)
    alerts = Captured(reconciler.bus, subjects.ALERTS)
    reconciler.tick(cfg.reconciler.grace_s)

    board.row["stage"] = "review"
    board.moves.append(
        ReplayMove(
            task_id="DEMO-1", old_stage="development", new_stage="review", job_id="j", reason="ok"
        )
    )
    status = reconciler.tick(cfg.reconciler.interval_s)

    assert status["unblocked_total"] == 1
    (alert,) = alerts.wait_for(Alert, what="the unblocked alert")
    assert alert.task_id == "DEMO-1"
    assert alert.source == "reconciler"
    assert "development → review" in alert.text


def test_a_replayed_task_moved_by_something_else_is_not_claimed(
    start_actor: StartActor, stub: Any, board: Board, cfg: Config
):
    reconciler, engine = start(start_actor, stub, board)
    alerts = Captured(reconciler.bus, subjects.ALERTS)
    reconciler.tick(cfg.reconciler.grace_s)
    assert len(received(engine, Reevaluate)) == 1

    # The task moved on, but by an event: the replay's gate read changed nothing
    board.row["stage"] = "review"
    board.row["job_id"] = "DEMO-1.review.1.work"
    status = reconciler.tick(cfg.reconciler.interval_s)
    status = reconciler.tick(cfg.reconciler.interval_s)

    assert status["unblocked_total"] == 0
    assert alerts.of(Alert) == []
