"""A merge step refused its lease waits in the run only for a merge going on now."""

from __future__ import annotations

import msgspec

from actors import merge_wait_policy as policy
from actors.lease_policy import Lease
from actors.queue_policy import QUEUED, Job
from bus.messages import LeaseHolder


def test_a_refusal_for_a_holder_merging_now_is_waited_for_in_the_run():
    reason = policy.refusal("held by DEMO-1 since 3s", merging=True)
    assert reason.startswith("held by DEMO-1 since 3s")
    assert policy.waits_in_run(reason)


def test_a_lease_kept_past_its_run_is_not_waited_for_in_the_run():
    # A protected repository's task keeps it through its deploy, whose jobs need the slots.
    reason = policy.refusal("held by DEMO-1 since 300s", merging=False)
    assert reason == "held by DEMO-1 since 300s"
    assert not policy.waits_in_run(reason)


def test_other_refusals_are_not_waited_for_in_the_run():
    assert not policy.waits_in_run("lease changed concurrently; retry")
    assert not policy.waits_in_run("lease keeper error: boom")


# --- merge jobs parked for a merge lease kept past its run (a protected repository) ---

NOW = 1_000.0
RETRY_S = 5.0


def merge_job(task_id: str, **fields: object) -> Job:
    base = Job(
        id=f"{task_id}.merge.1.merge",
        task_id=task_id,
        repo="demo",
        stage="merge",
        role="merge",
        visit=1,
        branch=f"conveyor/{task_id}",
        title=task_id,
        enqueued_at=NOW - 10,
        available_at=NOW - 10,
    )
    return msgspec.structs.replace(base, **fields)


def kept_by(task_id: str) -> Lease:
    holder = LeaseHolder(
        task_id=task_id,
        job_id=f"{task_id}.merge.1.merge",
        launcher="l1",
        host="h",
        pid=1,
        create_time=0.0,
        boot_id="b",
        attempt=1,
    )
    return Lease(name="merge.demo", holder=holder, acquired_at=NOW - 60, renewed_at=NOW - 60)


def test_a_merge_job_is_parked_only_while_its_lease_is_kept_past_another_tasks_run():
    job = merge_job("DEMO-2")
    assert policy.parks(job, kept_by("DEMO-1"), holder_running=False)
    # a merge going on now is waited for in the run; a free or own lease is taken
    assert not policy.parks(job, kept_by("DEMO-1"), holder_running=True)
    assert not policy.parks(job, None, holder_running=False)
    assert not policy.parks(job, kept_by("DEMO-2"), holder_running=False)
    developer = msgspec.structs.replace(job, role="developer")
    assert not policy.parks(developer, kept_by("DEMO-1"), holder_running=False)


def test_a_parked_job_spends_no_attempt_and_waits_for_its_lease_at_most_the_retry():
    job = merge_job("DEMO-2", attempts=0)
    parked = policy.park(job, kept_by("DEMO-1"), now=NOW, retry_s=RETRY_S)
    assert (parked.status, parked.attempts, parked.available_at) == (QUEUED, 0, NOW + RETRY_S)
    assert policy.awaited(parked) == "merge.demo"
    assert policy.awaited(job) == ""
    assert policy.awaited(msgspec.structs.replace(parked, status="running")) == ""


def test_a_release_wakes_only_the_job_queued_longest():
    lease = kept_by("DEMO-1")
    first = policy.park(merge_job("DEMO-2", enqueued_at=NOW - 30), lease, now=NOW - 1, retry_s=9)
    second = policy.park(merge_job("DEMO-3", enqueued_at=NOW - 20), lease, now=NOW - 2, retry_s=9)
    third = policy.park(merge_job("DEMO-4", enqueued_at=NOW - 10), lease, now=NOW - 3, retry_s=9)

    woken = policy.wake([third, first, second], now=NOW)

    assert woken is not None
    assert (woken.id, woken.available_at) == (first.id, NOW)
    # While the woken job has not started, another release wakes no one more
    assert policy.wake([third, woken, second], now=NOW + 0.5) is None
    assert policy.wake([], now=NOW) is None


def test_a_run_deferred_for_a_kept_lease_is_looked_at_again_at_once():
    # The lease may have been freed between the refusal and the deferral reaching the queue
    deferred = merge_job("DEMO-2", error="merge lease: held by DEMO-1 since 9s")
    deferred = msgspec.structs.replace(deferred, available_at=NOW + RETRY_S)
    assert policy.requeued(deferred, now=NOW).available_at == NOW
    # a run that gave up waiting for a merge going on now keeps its deferral
    gave_up = msgspec.structs.replace(deferred, error=f"{deferred.error} (merging now)")
    assert policy.requeued(gave_up, now=NOW).available_at == NOW + RETRY_S
    other = merge_job("DEMO-3", error="rebase onto main failed", available_at=NOW + RETRY_S)
    assert policy.requeued(other, now=NOW).available_at == NOW + RETRY_S


def test_on_a_protected_repository_a_merge_going_on_now_is_not_waited_for_in_the_run():
    # Its holder keeps the lease through its deploy: no release would end the wait
    job = merge_job("DEMO-2")
    assert policy.parks(job, kept_by("DEMO-1"), holder_running=True, kept=True)
    assert not policy.parks(job, None, holder_running=False, kept=True)
    merging = policy.refusal("held by DEMO-1 since 3s", merging=True)
    assert policy.waits_in_run_on(False)(merging)
    assert not policy.waits_in_run_on(True)(merging)
