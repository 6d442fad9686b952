"""LeaseKeeper: a release survives the keeper's absence, and waiters hear when to retry."""

from __future__ import annotations

import msgspec

from actors.launcher_policy import FINISHED, RUNNING, Run, run_key
from actors.lease_policy import task_lease
from bus import subjects
from bus.messages import LeaseAcquire, LeaseFreed, LeaseHolder, LeaseRelease, LeaseReply
from tests.actors.conftest import ActorUnderTest, Captured, StartActor
from tests.actors.test_lease_keeper import holder
from tests.harness import wait_until

TASK = "DEMO-1"
LEASE = task_lease(TASK)


def run_holder(job: str, attempt: int = 1) -> LeaseHolder:
    """A run of this (live) test process holding the task's transition lease."""
    return msgspec.structs.replace(holder(TASK), job_id=f"{TASK}.{job}", attempt=attempt)


def acquire(leases: ActorUnderTest, who: LeaseHolder) -> LeaseReply:
    reply: LeaseReply = leases.ref.ask(LeaseAcquire(name=LEASE, holder=who), timeout=10)
    return reply


def held_by(leases: ActorUnderTest) -> str:
    entry = leases.store().get(LEASE)
    return entry.value.holder.job_id if entry is not None else ""


def _waiting_releases(leases: ActorUnderTest) -> int:
    info = leases.bus.call(leases.bus.js.stream_info(subjects.STREAM_LEASES))
    return int(info.state.messages)


def store_run(leases: ActorUnderTest, who: LeaseHolder, status: str) -> None:
    runs = leases.bus.store(subjects.BUCKET_RUNS, Run)
    run = Run(
        id=run_key(who.job_id, who.attempt),
        job_id=who.job_id,
        attempt=who.attempt,
        task_id=TASK,
        repo="demo",
        role="analyst",
        stage="analysis",
        visit=1,
        branch="feature/DEMO-1-x",
        host=who.host,
        launcher=who.launcher,
        status=status,
    )
    runs.create(run.id, run)


def test_a_release_left_in_the_stream_frees_the_lease_when_the_keeper_reads_it(
    start_actor: StartActor,
):
    # Given a run's lease, and a release it could not hand over (the keeper was away)
    leases = start_actor("lease_keeper")
    freed = Captured(leases.bus, subjects.LEASE_FREED, LeaseFreed)
    grant = acquire(leases, run_holder("analysis.1.work"))
    late = LeaseRelease(name=LEASE, task_id=TASK, revision=grant.revision)

    # When the release waits in the stream the keeper consumes
    leases.bus.publish(subjects.LEASE_RELEASES, late, msg_id=f"release:{LEASE}:{grant.revision}")

    # Then the lease is freed, and whoever waits for it is told
    wait_until(lambda: held_by(leases) == "", what="the lease freed by the late release")
    (event,) = freed.wait_for(LeaseFreed, what="LeaseFreed for the lease")
    assert event.name == LEASE


def test_a_late_release_of_an_earlier_grant_never_frees_a_later_one(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    first = acquire(leases, run_holder("analysis.1.work"))
    assert leases.ref.ask(LeaseRelease(name=LEASE, task_id=TASK, revision=first.revision)).granted
    second = acquire(leases, run_holder("architecture.1.work"))
    assert second.granted

    stale = LeaseRelease(name=LEASE, task_id=TASK, revision=first.revision)
    leases.bus.publish(subjects.LEASE_RELEASES, stale, msg_id=f"release:{LEASE}:{first.revision}")
    # A work queue: the release is gone from the stream once handled and acked.
    wait_until(lambda: _waiting_releases(leases) == 0, what="the stale release consumed")

    assert held_by(leases) == "DEMO-1.architecture.1.work"


def test_a_lease_whose_run_finished_is_freed_for_the_next_run_though_its_process_lives(
    start_actor: StartActor,
):
    # Given a lease still held by a run of a live launcher, its release lost
    leases = start_actor("lease_keeper")
    done = run_holder("analysis.1.work")
    assert acquire(leases, done).granted
    nxt = run_holder("architecture.1.work")
    store_run(leases, nxt, RUNNING)  # the asker's own run: not what is asked about

    refused = acquire(leases, nxt)
    assert not refused.granted  # the holder's run is not known finished yet

    # When that run is stored finished, the next run asks again
    store_run(leases, done, FINISHED)
    granted = acquire(leases, nxt)

    # Then the lease is the next run's; a lost release is not a reclaim
    assert granted.granted
    assert held_by(leases) == "DEMO-1.architecture.1.work"
    assert leases.status()["reclaimed_total"] == 0


def test_a_running_holder_keeps_its_lease(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    running = run_holder("analysis.1.work")
    store_run(leases, running, RUNNING)
    assert acquire(leases, running).granted

    assert not acquire(leases, run_holder("architecture.1.work")).granted
    assert held_by(leases) == "DEMO-1.analysis.1.work"


def test_the_keeper_announces_its_return_once_it_answers(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    freed = Captured(leases.bus, subjects.LEASE_FREED, LeaseFreed)

    leases.tick(1.0)
    leases.tick(1.0)

    (back,) = freed.wait_for(LeaseFreed, what="the keeper's return")
    assert back.name == ""
    leases.status()
    assert len(freed.of(LeaseFreed)) == 1
