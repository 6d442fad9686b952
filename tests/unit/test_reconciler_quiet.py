"""A job that waited long in the queue and just ended is not a lost event.

Under load a job can wait for a launch slot longer than the Reconciler's grace.
Its task was quiet all that time, yet nothing was lost: the quiet that counts is
the one since its job ended, so the Reconciler leaves the StageEngine's own gate
read alone (its replay moving the task would be announced as a lost event).
"""

from __future__ import annotations

import msgspec

from actors import reconciler_policy as rp
from actors import stage_policy as sp
from actors import task_policy as tp
from bus.messages import JobOutcome
from conveyor import pipeline as pl
from conveyor.config import load

CFG = load(env={})
NOW = 10_000.0


def row_of(task: sp.Task) -> rp.TaskRow:
    return msgspec.convert(task, rp.TaskRow, from_attributes=True)


def test_a_task_whose_job_just_ended_after_a_long_queue_is_not_replayed():
    grace = rp.grace_for("architecture", CFG)
    # Given a task whose job was requested long before the grace and ran only now
    task = sp.Task(
        id="DEMO-1",
        repo="demo",
        title="t",
        branch="conveyor/DEMO-1",
        stage="architecture",
        step=pl.STEP_WORK,
        visits={"created": 1, "analysis": 1, "architecture": 1},
        job_id=tp.job_id_for("DEMO-1", "architecture", 1, pl.STEP_WORK),
        job_status="queued",
        updated_at=NOW - 3 * grace,
    )
    outcome = JobOutcome(
        job_id=task.job_id,
        task_id=task.id,
        stage=task.stage,
        visit=1,
        role="architect",
        status="done",
        attempts=1,
        exit_code=0,
    )

    # When its outcome is recorded (the StageEngine reads its gate now)
    decision = sp.on_job_outcome(task, outcome, now=NOW, cfg=CFG)

    # Then the Reconciler does not take it for a task quiet past the grace
    assert decision.task is not None
    assert rp.due([row_of(decision.task)], now=NOW + 1, replayed_at={}, cfg=CFG) == []
    # and does once it is quiet past the grace since its job ended
    later = rp.due([row_of(decision.task)], now=NOW + grace + 1, replayed_at={}, cfg=CFG)
    assert [r.task_id for r in later] == ["DEMO-1"]
