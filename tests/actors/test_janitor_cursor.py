"""Janitor on a real nats-server: sweeps walk task writes from a cursor, a batch at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import janitor_sweep
from actors.janitor_sweep import CURSOR_KEY, SweepCursor
from actors.queue_policy import Job
from actors.task_policy import Task
from bus import subjects
from bus.kv import Store
from conveyor.config import Config
from tests.actors.conftest import StartActor
from tests.harness import make_config

pytestmark = pytest.mark.timeout(60)

DAY = 86400.0


@pytest.fixture
def batch_cfg(tmp_path: Path, nats_url: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        # A long interval: only a full batch brings the next sweep forward.
        retention={
            "interval_s": 1000.0,
            "worktrees_days": 1.0,
            "records_days": 2.0,
        },
        disk={"interval_s": 1000.0, "alert_percent": 0.0, "min_free_mb": 0.0},
    )


def _settled_task_with_a_job(bus: Any, number: int, updated_at: float) -> str:
    task_id = f"DEMO-{number}"
    task = Task(id=task_id, repo="demo", title="t", branch="b", stage="done", updated_at=updated_at)
    bus.store(subjects.BUCKET_TASKS, Task).create(task_id, task)
    job = Job(
        id=f"{task_id}.development.1.work",
        task_id=task_id,
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="b",
        title="t",
        status="done",
        attempts=1,
    )
    bus.store(subjects.BUCKET_JOBS, Job).create(job.id, job)
    return task_id


def test_a_backlog_goes_a_batch_per_tick_and_a_restart_resumes_at_the_cursor(
    start_actor: StartActor, stub: Any, batch_cfg: Config, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(janitor_sweep, "SWEEP_BATCH", 2)
    sweeper = start_actor("janitor", config=batch_cfg, queue_worker=stub())
    bus, now = sweeper.bus, sweeper.clock.now()
    for number in range(1, 6):
        _settled_task_with_a_job(bus, number, now - 10 * DAY)
    jobs: Store[Job] = bus.store(subjects.BUCKET_JOBS, Job)

    left = []
    for _ in range(4):
        status = sweeper.tick(5.0)
        left.append(len(jobs.load_all()))
    # Two tasks' records per sweep; a full batch brings the next sweep 5 s on.
    assert left == [3, 1, 0, 0]
    assert status["jobs_compacted"] == 5
    swept_at = status["last_sweep_at"]
    assert sweeper.tick(5.0)["last_sweep_at"] == swept_at  # no backlog: back to the interval
    sweeper.ref.stop(block=True, timeout=10)

    stored = bus.store(subjects.BUCKET_INDEX, SweepCursor).get(CURSOR_KEY)
    assert stored is not None
    assert stored.value.records > 0
    starts: list[int] = []
    walk = Store.walk

    def _recorded(self: Store[Any], seq: int, **kwargs: Any) -> Any:
        if self.bucket == subjects.BUCKET_TASKS:
            starts.append(seq)
        return walk(self, seq, **kwargs)

    monkeypatch.setattr(Store, "walk", _recorded)
    newest = _settled_task_with_a_job(bus, 6, sweeper.clock.now() - 10 * DAY)
    again = start_actor("janitor", config=batch_cfg, queue_worker=stub())
    status = again.tick(1.0)
    # The restarted Janitor walks on from the stored cursor, not from the first task.
    assert starts
    assert min(starts) >= stored.value.records
    assert status["jobs_compacted"] == 1
    assert jobs.get_many(jobs.keys_under(f"{newest}.")) == {}
