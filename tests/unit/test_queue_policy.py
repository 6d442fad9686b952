"""QueueWorker decisions: job lifecycle, back-off, fair scheduling under limits."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import queue_policy as qp
from bus.messages import (
    Alert,
    JobFinished,
    JobOutcome,
    JobRequested,
    JobStarted,
    KillJob,
    LaunchOrder,
    ReapJob,
)
from conveyor.config import QueueConfig

CFG = QueueConfig(
    max_concurrency=4,
    per_repo_concurrency=1,
    max_attempts=2,
    backoff_base_s=2.0,
    backoff_max_s=60.0,
)
NOW = 5_000.0


def request(job_id: str = "DEMO-1.development.1.work", repo: str = "demo") -> JobRequested:
    return JobRequested(
        job_id=job_id,
        task_id="DEMO-1",
        repo=repo,
        stage="development",
        role="developer",
        visit=1,
        branch="feature/DEMO-1-add-login",
        title="Add login",
        description="Users log in",
        requested_at=NOW - 1,
    )


def job(
    job_id: str = "j1",
    *,
    repo: str = "a",
    status: str = qp.QUEUED,
    attempts: int = 0,
    max_attempts: int = 2,
    available_at: float = 0.0,
    enqueued_at: float = 0.0,
    pid: int | None = None,
) -> qp.Job:
    return qp.Job(
        id=job_id,
        task_id="T-1",
        repo=repo,
        stage="development",
        role="developer",
        visit=1,
        branch="feature/T-1-x",
        title="x",
        status=status,
        attempts=attempts,
        max_attempts=max_attempts,
        available_at=available_at,
        enqueued_at=enqueued_at,
        pid=pid,
    )


def running(attempts: int = 1, max_attempts: int = 2) -> qp.Job:
    return job(status=qp.RUNNING, attempts=attempts, max_attempts=max_attempts, pid=4242)


def finished(
    attempt: int = 1,
    exit_code: int | None = 0,
    error: str = "",
    usage: dict[str, object] | None = None,
) -> JobFinished:
    return JobFinished(
        job_id="j1",
        attempt=attempt,
        run_id=f"run-{attempt}",
        exit_code=exit_code,
        head_sha="abc123",
        error=error,
        finished_at=NOW,
        usage=usage or {},
    )


def started(attempt: int = 1, pid: int = 4242) -> JobStarted:
    return JobStarted(
        job_id="j1",
        attempt=attempt,
        run_id=f"run-{attempt}",
        host="h1",
        pid=pid,
        create_time=NOW - 2,
        log_path="/logs/j1.log",
        started_at=NOW - 1,
    )


def table(*jobs: qp.Job) -> dict[str, qp.Job]:
    return {j.id: j for j in jobs}


# --- back-off --------------------------------------------------------------------------------


def test_backoff_doubles_with_each_attempt():
    assert [qp.backoff_s(n, CFG) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]


def test_backoff_is_capped():
    assert qp.backoff_s(6, CFG) == 60.0
    assert qp.backoff_s(100, CFG) == 60.0


def test_backoff_before_the_first_attempt_is_the_base():
    assert qp.backoff_s(0, CFG) == 2.0


@settings(max_examples=100, deadline=None)
@given(attempt=st.integers(min_value=0, max_value=500))
def test_backoff_never_decreases_and_never_exceeds_the_cap(attempt: int):
    assert qp.backoff_s(attempt, CFG) <= qp.backoff_s(attempt + 1, CFG) <= CFG.backoff_max_s


# --- request and claim -----------------------------------------------------------------------


def test_a_requested_job_is_queued_and_available_now():
    d = qp.on_request(None, request(), now=NOW, cfg=CFG)
    (queued,) = d.jobs
    assert (queued.id, queued.status, queued.attempts) == ("DEMO-1.development.1.work", "queued", 0)
    assert (queued.available_at, queued.enqueued_at) == (NOW, NOW)
    assert queued.max_attempts == CFG.max_attempts
    assert (queued.role, queued.branch, queued.description) == (
        "developer",
        "feature/DEMO-1-add-login",
        "Users log in",
    )
    assert d.emit == ()


def test_a_replayed_request_changes_nothing():
    # Given a job that was requested and already claimed
    (first,) = qp.on_request(None, request(), now=NOW, cfg=CFG).jobs
    (claimed,) = qp.claim(first, now=NOW + 1).jobs
    # When the same request is delivered again
    d = qp.on_request(claimed, request(), now=NOW + 2, cfg=CFG)
    # Then the stored job is untouched
    assert d.jobs == ()
    assert d.emit == ()


def test_claim_starts_the_next_attempt_and_orders_the_launch():
    d = qp.claim(job(attempts=1, available_at=NOW - 1), now=NOW)
    (claimed,) = d.jobs
    assert (claimed.status, claimed.attempts, claimed.claimed_at) == ("running", 2, NOW)
    (order,) = d.emit
    assert isinstance(order, LaunchOrder)
    assert (order.job_id, order.attempt, order.repo, order.role) == ("j1", 2, "a", "developer")


@pytest.mark.parametrize("status", [qp.RUNNING, qp.DONE, qp.FAILED, qp.CANCELLED])
def test_only_a_queued_job_can_be_claimed(status: str):
    d = qp.claim(job(status=status, attempts=1), now=NOW)
    assert d.jobs == ()
    assert d.emit == ()


# --- started and finished --------------------------------------------------------------------


def test_start_of_the_current_attempt_records_the_process():
    d = qp.on_started(running(), started())
    (updated,) = d.jobs
    assert (updated.pid, updated.host, updated.run_id, updated.log_path) == (
        4242,
        "h1",
        "run-1",
        "/logs/j1.log",
    )
    assert updated.create_time == NOW - 2


def test_a_replayed_start_changes_nothing():
    (updated,) = qp.on_started(running(), started()).jobs
    assert qp.on_started(updated, started()).jobs == ()


def test_start_of_an_older_attempt_is_ignored():
    assert qp.on_started(running(attempts=2), started(attempt=1)).jobs == ()


def test_start_reported_for_a_job_that_is_no_longer_running_is_ignored():
    assert qp.on_started(job(status=qp.CANCELLED, attempts=1), started()).jobs == ()


def test_finish_of_an_older_attempt_is_ignored():
    d = qp.on_finished(running(attempts=2), finished(attempt=1, exit_code=1), now=NOW, cfg=CFG)
    assert d.jobs == ()
    assert d.emit == ()


@pytest.mark.parametrize("status", [qp.QUEUED, qp.DONE, qp.FAILED, qp.CANCELLED])
def test_finish_of_a_job_that_is_not_running_is_ignored(status: str):
    d = qp.on_finished(job(status=status, attempts=1), finished(), now=NOW, cfg=CFG)
    assert d.jobs == ()
    assert d.emit == ()


def test_exit_code_zero_finishes_the_job_and_reports_the_outcome():
    d = qp.on_finished(running(), finished(exit_code=0), now=NOW, cfg=CFG)
    (done,) = d.jobs
    assert (done.status, done.exit_code, done.finished_at, done.head_sha) == (
        "done",
        0,
        NOW,
        "abc123",
    )
    assert d.emit == (
        JobOutcome(
            job_id="j1",
            task_id="T-1",
            stage="development",
            visit=1,
            role="developer",
            status="done",
            attempts=1,
            exit_code=0,
            head_sha="abc123",
        ),
    )


def test_the_reported_agent_cost_adds_up_over_attempts_and_reaches_the_outcome():
    first = qp.on_finished(
        running(), finished(exit_code=1, usage={"cost_usd": 0.25}), now=NOW, cfg=CFG
    )
    (requeued,) = first.jobs
    again = msgspec.structs.replace(requeued, status=qp.RUNNING, attempts=2)
    second = qp.on_finished(
        again, finished(attempt=2, exit_code=0, usage={"cost_usd": 0.5}), now=NOW, cfg=CFG
    )
    (outcome,) = second.emit
    assert isinstance(outcome, JobOutcome)
    assert outcome.cost_usd == pytest.approx(0.75)


@pytest.mark.parametrize("junk", [True, "1.0", -3.0, float("nan"), float("inf"), None, [1]])
def test_a_junk_cost_in_an_agent_report_counts_as_nothing(junk: object):
    assert qp.reported_cost({"cost_usd": junk}) == 0.0
    assert qp.reported_cost({}) == 0.0


def test_a_failure_within_the_budget_requeues_after_the_backoff():
    # Given the first of two attempts running
    job_ = running(attempts=1, max_attempts=2)
    # When it exits non-zero
    d = qp.on_finished(job_, finished(exit_code=3), now=NOW, cfg=CFG)
    # Then it waits in the queue for the back-off, with its process facts cleared
    (requeued,) = d.jobs
    assert requeued.status == "queued"
    assert requeued.available_at == NOW + qp.backoff_s(1, CFG)
    assert (requeued.pid, requeued.claimed_at, requeued.started_at) == (None, None, None)
    assert requeued.attempts == 1
    assert d.emit == ()
    assert "exit code 3" in d.reason
    assert qp.next_wakeup(table(requeued), now=NOW) == NOW + 2.0


def test_exhausted_attempts_fail_the_job_with_an_outcome_and_an_alert():
    d = qp.on_finished(
        running(attempts=2, max_attempts=2), finished(attempt=2, exit_code=1), now=NOW, cfg=CFG
    )
    (failed,) = d.jobs
    assert failed.status == "failed"
    outcome, alert = d.emit
    assert isinstance(outcome, JobOutcome)
    assert (outcome.status, outcome.attempts, outcome.exit_code) == ("failed", 2, 1)
    assert isinstance(alert, Alert)
    assert alert.level == "error"
    assert alert.task_id == "T-1"
    assert "j1" in alert.text
    assert "exit code 1" in alert.text


def test_an_error_without_an_exit_code_counts_as_a_failure():
    d = qp.on_finished(
        running(attempts=2),
        finished(attempt=2, exit_code=None, error="spawn failed: no such file"),
        now=NOW,
        cfg=CFG,
    )
    (failed,) = d.jobs
    assert failed.status == "failed"
    assert failed.error == "spawn failed: no such file"
    assert "spawn failed" in d.reason


def test_an_error_after_a_clean_exit_still_counts_as_a_failure():
    d = qp.on_finished(running(), finished(exit_code=0, error="push rejected"), now=NOW, cfg=CFG)
    (requeued,) = d.jobs
    assert requeued.status == "queued"


def test_a_requeued_job_is_claimed_again_and_can_then_succeed():
    # Given a first attempt that failed and was requeued
    (requeued,) = qp.on_finished(running(), finished(exit_code=1), now=NOW, cfg=CFG).jobs
    # When the back-off passed and the job is claimed again
    assert qp.schedule(table(requeued), now=NOW + 1.0, cfg=CFG) == []
    assert qp.schedule(table(requeued), now=NOW + 2.0, cfg=CFG) == ["j1"]
    (second,) = qp.claim(requeued, now=NOW + 2.0).jobs
    # Then the second attempt runs and its success finishes the job
    assert (second.attempts, second.exit_code, second.error) == (2, None, "")
    (done,) = qp.on_finished(second, finished(attempt=2), now=NOW + 9, cfg=CFG).jobs
    assert done.status == "done"


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_cancels_unfinished_jobs_and_kills_only_running_ones():
    # Given a running, a queued and a finished job of one task
    jobs = [
        job("run", status=qp.RUNNING, attempts=1),
        job("wait"),
        job("old", status=qp.DONE, attempts=1),
    ]
    # When the task is cancelled
    d = qp.on_cancel(jobs, now=NOW, reason="cancelled by owner")
    # Then both unfinished jobs are cancelled, only the running one is killed,
    # and each gets an outcome
    assert [(j.id, j.status, j.finished_at) for j in d.jobs] == [
        ("run", "cancelled", NOW),
        ("wait", "cancelled", NOW),
    ]
    kills = [m for m in d.emit if isinstance(m, KillJob)]
    assert kills == [KillJob(job_id="run", reason="cancelled by owner")]
    outcomes = [m for m in d.emit if isinstance(m, JobOutcome)]
    assert [(o.job_id, o.status) for o in outcomes] == [("run", "cancelled"), ("wait", "cancelled")]


def test_cancelling_finished_jobs_changes_nothing():
    jobs = [job("a", status=s, attempts=1) for s in (qp.DONE, qp.FAILED, qp.CANCELLED)]
    d = qp.on_cancel(jobs, now=NOW, reason="again")
    assert d.jobs == ()
    assert d.emit == ()


# --- scheduling ------------------------------------------------------------------------------


def test_schedule_respects_the_global_limit():
    cfg = QueueConfig(max_concurrency=2, per_repo_concurrency=5)
    jobs = table(*(job(f"j{i}", repo=f"r{i}", enqueued_at=i) for i in range(5)))
    assert qp.schedule(jobs, now=NOW, cfg=cfg) == ["j0", "j1"]


def test_schedule_counts_running_jobs_against_the_global_limit():
    cfg = QueueConfig(max_concurrency=2, per_repo_concurrency=5)
    jobs = table(
        job("busy", repo="x", status=qp.RUNNING, attempts=1),
        job("j1", repo="y"),
        job("j2", repo="z", enqueued_at=1),
    )
    assert qp.schedule(jobs, now=NOW, cfg=cfg) == ["j1"]


def test_schedule_respects_the_per_repository_limit():
    cfg = QueueConfig(max_concurrency=10, per_repo_concurrency=2)
    jobs = table(
        job("r", repo="a", status=qp.RUNNING, attempts=1),
        *(job(f"q{i}", repo="a", enqueued_at=i) for i in range(4)),
    )
    assert qp.schedule(jobs, now=NOW, cfg=cfg) == ["q0"]


def test_schedule_takes_a_repository_jobs_oldest_first():
    cfg = QueueConfig(max_concurrency=10, per_repo_concurrency=2)
    jobs = table(
        job("late", enqueued_at=30), job("early", enqueued_at=10), job("mid", enqueued_at=20)
    )
    assert qp.schedule(jobs, now=NOW, cfg=cfg) == ["early", "mid"]


def test_a_repository_with_one_job_gets_a_slot_beside_a_repository_with_ten():
    # Given repository A with ten old queued jobs and repository B with one newer job
    cfg = QueueConfig(max_concurrency=2, per_repo_concurrency=2)
    jobs = table(
        *(job(f"a{i}", repo="A", enqueued_at=i) for i in range(10)),
        job("b0", repo="B", enqueued_at=100),
    )
    # When the queue schedules two slots
    picked = qp.schedule(jobs, now=NOW, cfg=cfg)
    # Then B gets one of them
    assert sorted(picked) == ["a0", "b0"]


def test_schedule_skips_jobs_whose_backoff_has_not_passed():
    jobs = table(
        job("later", repo="a", available_at=NOW + 5), job("now", repo="b", available_at=NOW)
    )
    assert qp.schedule(jobs, now=NOW, cfg=CFG) == ["now"]
    assert qp.next_wakeup(jobs, now=NOW) == NOW + 5


def test_next_wakeup_is_none_without_delayed_jobs():
    jobs = table(
        job("now", available_at=NOW), job("r", status=qp.RUNNING, attempts=1, available_at=NOW + 9)
    )
    assert qp.next_wakeup(jobs, now=NOW) is None


def test_a_job_stuck_running_blocks_only_its_own_repository():
    # Given the reference system's incident: repository A has a zombie job stuck in
    # `running` and more work queued, repository B has one queued job
    cfg = QueueConfig()
    jobs = table(
        job("zombie", repo="A", status=qp.RUNNING, attempts=1, enqueued_at=0),
        job("a-next", repo="A", enqueued_at=1),
        job("b-first", repo="B", enqueued_at=2),
    )
    # When the queue schedules
    picked = qp.schedule(jobs, now=NOW, cfg=cfg)
    # Then B's job runs while A waits for its slot
    assert picked == ["b-first"]


def test_nothing_is_scheduled_when_no_job_is_queued():
    jobs = table(
        job("d", status=qp.DONE), job("f", status=qp.FAILED), job("c", status=qp.CANCELLED)
    )
    assert qp.schedule(jobs, now=NOW, cfg=CFG) == []


STATUSES = [qp.QUEUED, qp.QUEUED, qp.RUNNING, qp.DONE, qp.FAILED, qp.CANCELLED]
job_specs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(STATUSES),
        st.integers(min_value=0, max_value=20),
        st.integers(min_value=0, max_value=20),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    specs=job_specs,
    now=st.integers(min_value=0, max_value=20),
    max_concurrency=st.integers(min_value=1, max_value=6),
    per_repo=st.integers(min_value=1, max_value=3),
)
def test_schedule_invariants_hold_for_any_job_set(
    specs: list[tuple[str, str, int, int]], now: int, max_concurrency: int, per_repo: int
):
    cfg = QueueConfig(max_concurrency=max_concurrency, per_repo_concurrency=per_repo)
    jobs = table(
        *(
            job(
                f"j{i}",
                repo=repo,
                status=status,
                available_at=float(avail),
                enqueued_at=float(enq),
                attempts=int(status != qp.QUEUED),
            )
            for i, (repo, status, avail, enq) in enumerate(specs)
        )
    )
    picked = qp.schedule(jobs, now=float(now), cfg=cfg)

    # Only queued jobs whose back-off passed, each once
    assert len(picked) == len(set(picked))
    for job_id in picked:
        assert jobs[job_id].status == qp.QUEUED
        assert jobs[job_id].available_at <= now
    # Never over the global limit or a repository's limit
    running_by_repo: dict[str, int] = {}
    for j in jobs.values():
        if j.status == qp.RUNNING:
            running_by_repo[j.repo] = running_by_repo.get(j.repo, 0) + 1
    total_running = sum(running_by_repo.values())
    assert total_running + len(picked) <= max(max_concurrency, total_running)
    picks_by_repo: dict[str, int] = {}
    for job_id in picked:
        repo = jobs[job_id].repo
        picks_by_repo[repo] = picks_by_repo.get(repo, 0) + 1
    for repo, n in picks_by_repo.items():
        assert running_by_repo.get(repo, 0) + n <= per_repo
    # As many as allowed: a repository left with ready jobs is at its limit, or all slots are used
    load = {
        r: running_by_repo.get(r, 0) + picks_by_repo.get(r, 0)
        for r in {j.repo for j in jobs.values()}
    }
    left = {
        r: [
            j
            for j in jobs.values()
            if j.repo == r
            and j.status == qp.QUEUED
            and j.available_at <= now
            and j.id not in picked
        ]
        for r in load
    }
    starved = [r for r in load if left[r] and load[r] < per_repo]
    if starved:
        assert total_running + len(picked) >= max_concurrency
    # Fair: no repository got a slot while more loaded than one that was starved of it
    for winner in picks_by_repo:
        for loser in starved:
            assert load[winner] - 1 <= load[loser]


def test_scheduling_is_deterministic():
    jobs = table(*(job(f"j{i}", repo="ab"[i % 2], enqueued_at=i % 3) for i in range(8)))
    cfg = QueueConfig(max_concurrency=3, per_repo_concurrency=2)
    assert qp.schedule(jobs, now=NOW, cfg=cfg) == qp.schedule(
        dict(reversed(jobs.items())), now=NOW, cfg=cfg
    )


def test_a_job_round_trips_through_its_wire_form():
    (claimed,) = qp.claim(job(), now=NOW).jobs
    data = msgspec.json.encode(claimed)
    assert msgspec.json.decode(data, type=qp.Job) == claimed


def test_a_job_with_a_pending_outbox_survives_a_store_round_trip():
    job = qp.Job(
        id="DEMO-1.analysis.1.work",
        task_id="DEMO-1",
        repo="demo",
        stage="analysis",
        role="analyst",
        visit=1,
        branch="feature/DEMO-1-x",
        title="x",
    )
    claimed = qp.claim(job, now=1.0)
    stored = msgspec.structs.replace(claimed.jobs[0], outbox=list(claimed.emit))
    loaded = msgspec.json.decode(msgspec.json.encode(stored), type=qp.Job)
    assert loaded.outbox == list(claimed.emit)


def test_a_deferred_attempt_is_requeued_without_spending_an_attempt():
    job = qp.Job(
        id="DEMO-1.deploy-staging.1.merge",
        task_id="DEMO-1",
        repo="demo",
        stage="deploy-staging",
        role="merge",
        visit=1,
        branch="feature/DEMO-1-x",
        title="x",
    )
    claimed = qp.claim(job, now=1.0).jobs[0]
    finished = JobFinished(
        job_id=job.id,
        attempt=1,
        run_id="r",
        exit_code=None,
        error="merge lease: held by DEMO-2",
        defer_s=5.0,
    )
    d = qp.on_finished(claimed, finished, now=10.0, cfg=CFG)
    (requeued,) = d.jobs
    assert requeued.status == "queued"
    assert requeued.available_at == 15.0
    assert d.emit == ()
    # The budget grows by one, and the next claim gets a fresh attempt number, so the
    # Launcher's run fence (one run per job and attempt) lets it run.
    assert requeued.max_attempts - requeued.attempts == claimed.max_attempts - 0
    again = qp.claim(requeued, now=16.0)
    (order,) = again.emit
    assert order.attempt == 2


def test_a_backstop_reap_kills_the_executor_before_the_next_attempt():
    job = qp.Job(
        id="DEMO-1.development.1.work",
        task_id="DEMO-1",
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="feature/DEMO-1-x",
        title="x",
    )
    running = qp.claim(job, now=1.0).jobs[0]
    reap = ReapJob(job_id=job.id, attempt=1, tier=3, reason="backstop")
    d = qp.on_reaped(running, reap, now=9000.0, cfg=CFG)
    assert isinstance(d.emit[0], KillJob)
    assert d.jobs[0].status == "queued"
