"""The QueueWorker's hot set: finished jobs leave it, indexes follow every change."""

from __future__ import annotations

import msgspec

from actors import queue_policy as qp
from actors.job_index import RECENT, JobIndex
from bus.messages import JobOutcome

NOW = 1_000.0


def job(job_id: str, status: str = qp.QUEUED, **fields: object) -> qp.Job:
    base = qp.Job(
        id=job_id,
        task_id=job_id.split(".")[0],
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/{job_id}",
        title=job_id,
        status=status,
        enqueued_at=NOW,
    )
    return msgspec.structs.replace(base, **fields)


def changed(index: JobIndex, before: qp.Job, **fields: object) -> qp.Job:
    after = msgspec.structs.replace(before, **fields)
    index.put(after, previous=before, now=NOW)
    return after


def test_a_finished_job_leaves_the_hot_set_but_still_counts():
    index = JobIndex()
    queued = job("T-1.dev.1.w")
    assert index.put(queued, previous=None, now=NOW)
    running = changed(index, queued, status=qp.RUNNING)
    assert set(index.running) == {queued.id}

    done = msgspec.structs.replace(running, status=qp.DONE)
    assert not index.put(done, previous=running, now=NOW)

    assert index.hot == {}
    assert index.running == {}
    assert index.of_task("T-1") == []
    assert index.counts == {"done": 1}


def test_a_finished_job_with_an_unsent_outbox_stays_until_it_is_flushed():
    index = JobIndex()
    outcome = JobOutcome(
        job_id="T-1.dev.1.w",
        task_id="T-1",
        stage="development",
        visit=1,
        role="developer",
        status=qp.DONE,
        attempts=1,
    )
    unsent = job("T-1.dev.1.w", qp.DONE, outbox=[outcome])
    assert index.put(unsent, previous=None, now=NOW)
    assert index.outboxed == {unsent.id}

    changed(index, unsent, outbox=[])

    assert index.outboxed == set()
    assert index.hot == {}
    assert index.counts == {"done": 1}


def test_jobs_are_found_by_task_and_running_ones_by_id():
    index = JobIndex()
    a1, a2, b1 = job("A.dev.1.w"), job("A.rev.1.w"), job("B.dev.1.w")
    for each in (a1, a2, b1):
        index.put(each, previous=None, now=NOW)
    changed(index, a2, status=qp.RUNNING)

    assert sorted(j.id for j in index.of_task("A")) == [a1.id, a2.id]
    assert [j.id for j in index.of_task("B")] == [b1.id]
    assert list(index.running) == [a2.id]
    assert index.counts == {"queued": 2, "running": 1}


def test_a_finished_job_pausing_its_repository_stays_until_the_pause_ends():
    index = JobIndex()
    paused = job("T-1.dev.1.w", qp.CANCELLED, repo_paused_until=NOW + 30)
    assert index.put(paused, previous=None, now=NOW)

    assert index.expire(NOW + 10) == []
    assert set(index.hot) == {paused.id}
    assert index.expire(NOW + 30) == [paused.id]
    assert index.hot == {}
    assert qp.repo_pauses(index.hot.values()) == {}


def test_load_counts_every_stored_job_and_keeps_only_the_open_ones():
    index = JobIndex()
    stored = [job(f"D{i}.dev.1.w", qp.DONE) for i in range(500)]
    stored += [job("Q.dev.1.w"), job("R.dev.1.w", qp.RUNNING)]

    index.load(stored, now=NOW)

    assert set(index.hot) == {"Q.dev.1.w", "R.dev.1.w"}
    assert index.counts == {"done": 500, "queued": 1, "running": 1}


def test_recent_shows_the_newest_jobs_hot_or_gone_each_once():
    index = JobIndex()
    for i in range(3 * RECENT):
        index.put(job(f"D{i}.dev.1.w", qp.DONE, claimed_at=NOW + i), previous=None, now=NOW)
    live = job("Q.dev.1.w", enqueued_at=NOW + 100)
    index.put(live, previous=None, now=NOW)
    # The same job finishing again (a replay read from KV) is listed once.
    again = job("D29.dev.1.w", qp.DONE, claimed_at=NOW + 29)
    index.put(again, previous=again, now=NOW)

    recent = [j.id for j in index.recent()]

    newest = [f"D{i}.dev.1.w" for i in range(3 * RECENT - 1, 2 * RECENT, -1)]
    assert recent == ["Q.dev.1.w", *newest]
    assert len(recent) == RECENT


class _NoPass(dict[str, qp.Job]):
    """A hot set that fails any pass over it (a status must not read every hot job)."""

    def values(self):  # type: ignore[override]
        raise AssertionError("a pass over every hot job")

    def __iter__(self):  # type: ignore[override]
        raise AssertionError("a pass over every hot job")


def test_recent_follows_each_jobs_latest_state_without_a_pass_over_the_backlog():
    index = JobIndex()
    index.hot = _NoPass()
    for i in range(5 * RECENT):
        index.put(job(f"Q{i}.dev.1.w", enqueued_at=NOW + i), previous=None, now=NOW)
    newest = job(f"Q{5 * RECENT - 1}.dev.1.w", enqueued_at=NOW + 5 * RECENT - 1)
    claimed = changed(index, job("Q0.dev.1.w"), status=qp.RUNNING, claimed_at=NOW + 1000)

    recent = index.recent()

    assert [j.id for j in recent[:2]] == [claimed.id, newest.id]
    assert recent[0].status == qp.RUNNING  # its latest state, listed once
    assert len(recent) == RECENT
    assert len({j.id for j in recent}) == RECENT


def test_merge_jobs_parked_for_a_lease_are_indexed_by_it_until_they_start():
    index = JobIndex()
    merge = job("T-2.merge.1.merge", role="merge")
    index.put(merge, previous=None, now=NOW)
    assert index.waiting_for("merge.demo") == []
    parked = changed(index, merge, error="merge lease: kept by T-1", available_at=NOW + 5)
    assert index.waiting_for("merge.demo") == [parked]
    changed(index, parked, status=qp.RUNNING, error="")
    assert index.waiting_for("merge.demo") == []
    assert index.awaiting == {}
