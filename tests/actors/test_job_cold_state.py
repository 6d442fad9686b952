"""QueueWorker on a real nats-server: start-up reads a checkpoint, not every job.

The first start over data of an older version (no `jobs.head`) reads every job once,
in batches, and writes the checkpoint; a restart reads only the head, the hot jobs and
the writes since, with the same counts and ledger as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import checkpoint_policy, job_state, task_settled
from actors.job_state import HEAD_KEY, JobsHead
from actors.queue_policy import Job
from actors.queue_worker import UsageQuery
from bus import subjects
from bus.bridge import Bus
from bus.kv import Store
from bus.messages import JobFinished
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest
from tests.harness import make_config, wait_until
from tests.kv_raw import put_raw

pytestmark = pytest.mark.timeout(60)


def _job(number: int, status: str, at: float, *, cost: float = 0.0) -> Job:
    task_id = f"DEMO-{number}"
    return Job(
        id=f"{task_id}.development.1.work",
        task_id=task_id,
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/{task_id}",
        title=f"work on {task_id}",
        status=status,
        attempts=1,
        enqueued_at=at,
        claimed_at=at,
        finished_at=at if status != "running" else None,
        run_id="run-1",
        cost_usd=cost,
        input_tokens=int(cost * 1000),
    )


def _start(tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock) -> ActorUnderTest:
    cfg = make_config(tmp_path / "data", nats_url)
    ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
    return ActorUnderTest(wiring.SPECS["queue_worker"], ctx, clock)


def _spent(worker: ActorUnderTest) -> tuple[float, float]:
    """USD the demo repository spent overall and today."""
    usage = worker.ref.ask(UsageQuery(), timeout=ASK_TIMEOUT_S)
    total = usage["by_repo"]["demo"]["cost_usd"]
    return round(total, 6), round(usage["today"]["by_repo"]["demo"]["cost_usd"], 6)


def _no_full_load(self: Store[Any], *_: Any, **__: Any) -> Any:
    raise AssertionError(f"start-up read all of {self.bucket}")


def test_old_jobs_migrate_once_and_a_restart_reads_only_the_checkpoint(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    now = clock.now()
    # As the previous version left them: finished jobs (one yesterday) and one running.
    jobs.create(_job(1, "done", now - 86400, cost=1.0).id, _job(1, "done", now - 86400, cost=1.0))
    for number, status in ((2, "done"), (3, "failed"), (4, "cancelled")):
        jobs.create(_job(number, status, now).id, _job(number, status, now, cost=0.5))
    jobs.create(_job(5, "running", now).id, _job(5, "running", now))
    heads: Store[JobsHead] = bus.store(subjects.BUCKET_INDEX, JobsHead)
    assert heads.get(HEAD_KEY) is None
    monkeypatch.setattr(job_state, "MIGRATION_BATCH", 2)  # the upgrade reads in batches

    worker = _start(tmp_path, nats_url, bus, clock)
    try:
        status = worker.status()
        assert status["counts"] == {"done": 2, "failed": 1, "cancelled": 1, "running": 1}
        assert status["hot"] == 1
        assert _spent(worker) == (2.5, 1.5)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.hot == [_job(5, "running", now).id]
        assert head.value.counts == {"done": 2, "failed": 1, "cancelled": 1}
        # The running job finishes: it settles, and the tick's checkpoint records it.
        running = _job(5, "running", now)
        usage = {"cost_usd": 0.25}
        done = JobFinished(job_id=running.id, attempt=1, run_id="run-1", exit_code=0, usage=usage)
        worker.bus.publish(subjects.JOBS_FINISHED, done, msg_id="test:finished:5")
        wait_until(lambda: worker.status()["hot"] == 0, what="the finished job settled")
        worker.tick(1.0)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert (head.value.hot, head.value.counts["done"]) == ([], 3)
        worker.tick(1.0)  # nothing new: nothing written
        again = heads.get(HEAD_KEY)
        assert again is not None
        assert again.revision == head.revision
        before = (worker.status()["counts"], _spent(worker))
    finally:
        worker.ref.stop(block=True, timeout=10)

    # Written while the worker was away: found among the writes after the checkpoint.
    jobs.create(_job(6, "done", now).id, _job(6, "done", now, cost=2.0))
    monkeypatch.setattr(Store, "load_all", _no_full_load)
    monkeypatch.setattr(job_state.JobState, "_migrate", _no_full_load)
    worker = _start(tmp_path, nats_url, bus, clock)
    try:
        counts, spent = before
        assert worker.status()["counts"] == {**counts, "done": counts["done"] + 1}
        assert _spent(worker) == (spent[0] + 2.0, spent[1] + 2.0)
        recent = [row["id"] for row in worker.status()["recent"]]
        assert _job(6, "done", now).id in recent
    finally:
        worker.ref.stop(block=True, timeout=10)


def test_foreign_writes_are_adopted_and_a_broken_checkpoint_is_rebuilt(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    now = clock.now()
    jobs.create(_job(1, "done", now).id, _job(1, "done", now, cost=1.0))
    worker = _start(tmp_path, nats_url, bus, clock)
    heads: Store[JobsHead] = bus.store(subjects.BUCKET_INDEX, JobsHead)
    try:
        assert worker.status()["counts"] == {"done": 1}
        # Written by hand while the worker runs: adopted before the head moves past it.
        foreign = jobs.create(_job(2, "failed", now).id, _job(2, "failed", now, cost=0.5))
        # A running job written by hand, then finished: counted once, as it settles.
        running = _job(3, "running", now)
        jobs.create(running.id, running)
        done = JobFinished(job_id=running.id, attempt=1, run_id="run-1", exit_code=0)
        worker.bus.publish(subjects.JOBS_FINISHED, done, msg_id="test:finished:3")
        wait_until(lambda: worker.status()["counts"].get("done") == 2, what="job 3 finished")
        worker.tick(1.0)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.seq > foreign
        assert head.value.counts == {"done": 2, "failed": 1}
        assert worker.status()["counts"] == {"done": 2, "failed": 1}
    finally:
        worker.ref.stop(block=True, timeout=10)

    put_raw(bus, subjects.BUCKET_INDEX, HEAD_KEY, b"broken")
    worker = _start(tmp_path, nats_url, bus, clock)
    try:
        # The checkpoint is derived state: unusable, it is rebuilt from every job.
        assert worker.status()["counts"] == {"done": 2, "failed": 1}
        assert _spent(worker) == (1.5, 1.5)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.counts == {"done": 2, "failed": 1}
    finally:
        worker.ref.stop(block=True, timeout=10)


def test_a_long_tail_since_the_checkpoint_is_read_in_batches_and_counted_once(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    now = clock.now()
    jobs.create(_job(1, "done", now).id, _job(1, "done", now, cost=1.0))
    jobs.create(_job(2, "running", now).id, _job(2, "running", now))
    worker = _start(tmp_path, nats_url, bus, clock)
    worker.ref.stop(block=True, timeout=10)
    # Behind its back: more jobs than one batch, and the hot one finished.
    jobs.put(_job(2, "done", now).id, _job(2, "done", now, cost=0.5))
    for number in range(3, 8):
        jobs.create(_job(number, "failed", now).id, _job(number, "failed", now, cost=0.25))
    monkeypatch.setattr(task_settled, "TAIL_BATCH", 2)
    monkeypatch.setattr(Store, "since", _no_full_load)  # never the whole tail at once
    monkeypatch.setattr(job_state.JobState, "_migrate", _no_full_load)
    worker = _start(tmp_path, nats_url, bus, clock)
    try:
        assert worker.status()["counts"] == {"done": 2, "failed": 5}
        assert worker.status()["hot"] == 0
        assert _spent(worker) == (2.75, 2.75)
    finally:
        worker.ref.stop(block=True, timeout=10)


def test_with_a_large_hot_set_the_head_waits_until_writes_pay_for_it(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    now = clock.now()
    hot = 2 * checkpoint_policy.IDS_PER_WRITE + 50
    for number in range(1, hot + 1):
        jobs.create(_job(number, "running", now).id, _job(number, "running", now))
    heads: Store[JobsHead] = bus.store(subjects.BUCKET_INDEX, JobsHead)

    def head_seq() -> int:
        head = heads.get(HEAD_KEY)
        assert head is not None
        return head.value.seq

    worker = _start(tmp_path, nats_url, bus, clock)
    try:
        assert worker.status()["counts"] == {"running": hot}
        started = head_seq()  # the end of a start always writes it
        done = JobFinished(
            job_id=_job(1, "running", now).id, attempt=1, run_id="run-1", exit_code=0
        )
        worker.bus.publish(subjects.JOBS_FINISHED, done, msg_id="test:finished:1")
        wait_until(lambda: worker.status()["counts"].get("done") == 1, what="job 1 finished")
        worker.tick(1.0)
        assert head_seq() == started  # a write or two do not pay for 250 ids
        worker.tick(checkpoint_policy.HEAD_MAX_AGE_S)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.seq > started  # nor does a head wait longer than its age limit
        assert head.value.counts == {"done": 1}
    finally:
        worker.ref.stop(block=True, timeout=10)
