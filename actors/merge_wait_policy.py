"""Pure decisions of merge steps and their repository's merge lease: wait in the run, or park.

A merge lease held by a run that is merging now is freed when that run ends, in
seconds to minutes, and the LeaseKeeper says so (`LeaseFreed`): the refused run
waits for that wake-up, holding its launch slot, up to `leases.merge_wait_s`.
A merge lease kept past its run (a protected repository's task keeps it until its
production deploy ends) may be held for hours, and that task's deploy jobs need
the repository's launch slots: a run waiting for it would starve the very holder
it waits for. The keeper tells them apart (it can read the holder's run record)
and says so in its refusal's reason.

A merge job whose lease is kept past its run is not launched at all: the
QueueWorker parks it (queued, no attempt spent, no slot held) and wakes one
parked job per release, the one queued longest; only one can take the lease, so
the others stay parked (no thundering herd). `leases.busy_retry_s` is the longest
a parked job sleeps before the lease is looked at again, in case a wake-up is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from actors.lease_policy import Lease, merge_lease
from actors.queue_policy import QUEUED, Job
from conveyor.pipeline import ROLE_MERGE

MERGING = "merging now"
"""Marks the keeper's refusal of a merge lease whose holder's run is in progress."""

DEFERRED = "merge lease: "
"""Starts the error of a merge job that did not get its lease: it waits for its release."""


def refusal(reason: str, *, merging: bool) -> str:
    """The reason the keeper answers when it refuses a merge lease."""
    return f"{reason} ({MERGING})" if merging else reason


def waits_in_run(reason: str) -> bool:
    """Whether a run refused a merge lease for `reason` waits for its release in the run."""
    return reason.endswith(f"({MERGING})")


def awaited(job: Job) -> str:
    """The merge lease a queued merge job waits for ("" when it waits for none)."""
    if job.role != ROLE_MERGE or job.status != QUEUED or not job.error.startswith(DEFERRED):
        return ""
    return merge_lease(job.repo)


def parks(job: Job, lease: Lease | None, holder_running: bool, *, kept: bool = False) -> bool:
    """Whether a merge job picked to start is parked instead of launched.

    Launched when the lease is free, is its own task's (re-entrant), or is held by
    a run going on now (it waits in the run for that merge to end); parked when the
    lease is kept past its holder's run, or will be (`kept`: a protected repository,
    whose merging holder keeps it through its deploy).
    """
    if job.role != ROLE_MERGE or lease is None or lease.holder.task_id == job.task_id:
        return False
    return kept or not holder_running


def waits_in_run_on(repo_protected: bool) -> Callable[[str], bool]:
    """Which refusals a merge run waits out in the run.

    None on a protected repository: its holder keeps the lease past its merge, so no
    release would end the wait; the job defers and parks in the queue instead.
    """
    return (lambda _reason: False) if repo_protected else waits_in_run


def park(job: Job, lease: Lease, *, now: float, retry_s: float) -> Job:
    """The job parked until the lease is freed, or `retry_s` passes (a lost wake-up)."""
    holder = lease.holder.task_id
    return msgspec.structs.replace(
        job, error=f"{DEFERRED}kept by {holder}", available_at=now + retry_s
    )


def requeued(job: Job, *, now: float) -> Job:
    """A merge job its run deferred for a lease kept past its run: looked at again now.

    The lease may have been freed between the refusal and this deferral (its
    wake-up then woke nobody); if not, the QueueWorker parks the job when it picks it.
    A run that gave up waiting for a merge going on now keeps its deferral.
    """
    if not awaited(job) or waits_in_run(job.error):
        return job
    return msgspec.structs.replace(job, available_at=min(job.available_at, now))


def wake(waiters: Iterable[Job], *, now: float) -> Job | None:
    """The one parked job a release wakes (None: one is awake already, or none waits).

    Only one job can take the lease: the one queued longest goes (its request's time,
    which a re-park after the fallback poll does not move), the others stay.
    """
    parked: list[Job] = []
    for job in waiters:
        if job.available_at <= now:
            return None
        parked.append(job)
    if not parked:
        return None
    first = min(parked, key=lambda j: (j.enqueued_at, j.id))
    return msgspec.structs.replace(first, available_at=now)
