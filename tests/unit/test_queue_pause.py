"""A model API that turns a job away holds its repository's queue, not only the job."""

from __future__ import annotations

import msgspec

from actors import queue_policy as qp
from bus.messages import JobFinished
from conveyor.config import QueueConfig

CFG = QueueConfig(max_concurrency=4, per_repo_concurrency=1, max_attempts=2)


def job(job_id: str, repo: str, *, enqueued_at: float = 0.0) -> qp.Job:
    return qp.Job(
        id=job_id,
        task_id=f"T-{job_id}",
        repo=repo,
        stage="development",
        role="developer",
        visit=1,
        branch=f"feature/T-{job_id}",
        title="x",
        enqueued_at=enqueued_at,
    )


def finished(job_id: str, *, outcome: str, defer_s: float) -> JobFinished:
    return JobFinished(
        job_id=job_id,
        attempt=1,
        run_id=f"{job_id}.1",
        exit_code=1,
        error="rate limited (429)" if defer_s else "exit code 1",
        outcome=outcome,
        reason="rate limited (429)",
        defer_s=defer_s,
    )


def test_a_rate_limited_finish_pauses_the_repository_without_spending_an_attempt() -> None:
    # Given two jobs of repo a (one running) and one of repo b, all queued before t=10
    first = qp.claim(job("a1", "a"), now=1.0).jobs[0]
    jobs = {"a1": first, "a2": job("a2", "a", enqueued_at=2.0), "b1": job("b1", "b")}
    # When a1's agent is rate limited at t=10 with a 30 s wait
    decision = qp.on_finished(
        first, finished("a1", outcome="rate_limited", defer_s=30.0), now=10.0, cfg=CFG
    )
    (a1,) = decision.jobs
    jobs["a1"] = a1
    # Then a1 waits without spending its attempt, and the pause holds repo a until t=40
    assert a1.status == qp.QUEUED
    assert a1.available_at == 40.0
    assert a1.max_attempts - a1.attempts == first.max_attempts - 0
    assert a1.repo_paused_until == 40.0
    assert qp.repo_pauses(jobs.values()) == {"a": 40.0}
    # a2 was ready, but repo a is paused: only repo b's job goes at t=11
    assert qp.schedule(jobs, now=11.0, cfg=CFG) == ["b1"]
    assert qp.next_wakeup(jobs, now=11.0) == 40.0
    # And once the pause is over, repo a's oldest job (the one turned away) goes first
    assert qp.schedule(jobs, now=40.0, cfg=CFG) == ["a1", "b1"]


def test_overloaded_pauses_too_but_a_busy_lease_deferral_does_not() -> None:
    claimed = qp.claim(job("a1", "a"), now=1.0).jobs[0]
    overloaded = qp.on_finished(
        claimed, finished("a1", outcome="overloaded", defer_s=4.0), now=10.0, cfg=CFG
    ).jobs[0]
    assert overloaded.repo_paused_until == 14.0
    lease = qp.on_finished(
        claimed, finished("a1", outcome="", defer_s=4.0), now=10.0, cfg=CFG
    ).jobs[0]
    assert lease.repo_paused_until == 0.0
    others = {"a1": lease, "a2": job("a2", "a")}
    assert qp.schedule(others, now=11.0, cfg=CFG) == ["a2"]


def test_a_failed_attempt_without_a_wait_outcome_spends_it_and_pauses_nothing() -> None:
    claimed = qp.claim(job("a1", "a"), now=1.0).jobs[0]
    (failed,) = qp.on_finished(
        claimed, finished("a1", outcome="error", defer_s=0.0), now=10.0, cfg=CFG
    ).jobs
    assert failed.max_attempts - failed.attempts == claimed.max_attempts - 1
    assert failed.repo_paused_until == 0.0


def test_a_job_record_without_the_pause_field_still_decodes() -> None:
    old = msgspec.json.encode(job("a1", "a")).replace(b',"repo_paused_until":0.0', b"")
    assert b"repo_paused_until" not in old
    assert msgspec.json.decode(old, type=qp.Job).repo_paused_until == 0.0


def refused(current: qp.Job) -> JobFinished:
    """The model API turned the current attempt away."""
    return msgspec.structs.replace(
        finished(current.id, outcome="rate_limited", defer_s=5.0), attempt=current.attempts
    )


def test_a_model_that_stays_rate_limited_spends_attempts_after_its_waits() -> None:
    # Given a queue that lets a job wait twice for the model API
    cfg = msgspec.structs.replace(CFG, max_model_waits=2)
    current = qp.claim(job("a1", "a"), now=0.0).jobs[0]
    now = 0.0
    # When the model turns the job away twice, each wait spends no attempt
    for waits in (1, 2):
        now += 10.0
        (current,) = qp.on_finished(current, refused(current), now=now, cfg=cfg).jobs
        assert (current.status, current.model_waits) == (qp.QUEUED, waits)
        current = qp.claim(current, now=now + 5.0).jobs[0]
    # Then the third refusal is a failed attempt with its reason, requeued with back-off
    now += 10.0
    decision = qp.on_finished(current, refused(current), now=now, cfg=cfg)
    (third,) = decision.jobs
    assert third.status == qp.QUEUED
    assert third.model_waits == 2
    assert "rate limited (429)" in decision.reason
    assert third.max_attempts - third.attempts == 1


def test_no_model_waits_means_a_rate_limited_finish_is_an_ordinary_failure() -> None:
    cfg = msgspec.structs.replace(CFG, max_model_waits=0, max_attempts=1)
    first = qp.claim(msgspec.structs.replace(job("a1", "a"), max_attempts=1), now=0.0).jobs[0]
    decision = qp.on_finished(
        first, finished("a1", outcome="rate_limited", defer_s=5.0), now=1.0, cfg=cfg
    )
    (failed,) = decision.jobs
    assert failed.status == qp.FAILED
    assert failed.repo_paused_until == 0.0
