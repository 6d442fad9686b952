"""Pure decisions of the LeaseKeeper: grant, release and reclaim of leases.

Two kinds share one bucket and one set of rules. A merge lease `merge.<repo>` lets
one task at a time merge into a repository; it is re-entrant per task. A
transition lease `task.<id>` lets one executor at a time do a task's side
effects (push, pull request, merge); it is re-entrant per job and launcher, so a
restarted launcher adopting its run keeps it while another attempt elsewhere waits.
A lease is never taken from a live holder (SPEC §9): it is reclaimed only when
its holder is provably dead (same host, pid gone or reused, or another boot),
when the task that holds it has ended, or by an operator; a probe that cannot
tell (another host, permission denied, no start time) counts as alive. Past its age ceiling a
lease raises an alert, once.
"""

from __future__ import annotations

import msgspec

from bus.messages import LeaseHolder as Holder
from conveyor.config import LeaseConfig


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A lease record in KV; its revision is the fencing token."""

    name: str
    holder: Holder
    acquired_at: float
    renewed_at: float
    alerted: bool = False


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to an acquire: the lease to store (if granted) and why."""

    granted: bool
    lease: Lease | None = None
    reclaimed: Lease | None = None
    lost_release: Lease | None = None
    """A lease freed because its holder's run finished without its release arriving."""
    reason: str


MERGE_PREFIX = "merge."
TASK_PREFIX = "task."


def merge_lease(repo: str) -> str:
    """KV key of a repository's merge lease."""
    return f"{MERGE_PREFIX}{repo}"


def task_lease(task_id: str) -> str:
    """KV key of a task's transition lease."""
    return f"{TASK_PREFIX}{task_id}"


def same_holder(current: Lease, holder: Holder) -> bool:
    """Whether `holder` already holds `current` (re-entrance)."""
    if current.name.startswith(TASK_PREFIX):
        return (current.holder.job_id, current.holder.launcher) == (holder.job_id, holder.launcher)
    return current.holder.task_id == holder.task_id


def on_acquire(
    current: Lease | None,
    name: str,
    holder: Holder,
    *,
    holder_alive: bool | None,
    now: float,
    holder_finished: bool = False,
    holder_superseded: bool = False,
) -> Grant:
    """Grant a free lease, re-grant it to its holder (`same_holder`), reclaim it from the dead.

    `holder_alive` is the current holder's liveness: True, False (provably dead) or
    None (cannot tell: another host, permission denied, no recorded start time) —
    unknown counts as alive.
    `holder_finished`: the run that holds it has finished, so its release was lost
    (sent while the keeper was away); the lease is free whatever its process does.
    `holder_superseded`: the holder's job no longer runs its attempt (reaped, retried),
    so it may do nothing more under the lease: free too, and its next check fails.
    """
    fresh = Lease(name=name, holder=holder, acquired_at=now, renewed_at=now)
    if current is None:
        return Grant(granted=True, lease=fresh, reason="free")
    if same_holder(current, holder):
        kept = msgspec.structs.replace(current, holder=holder, renewed_at=now)
        return Grant(granted=True, lease=kept, reason="already held by this holder")
    if holder_finished:
        return Grant(
            granted=True,
            lease=fresh,
            lost_release=current,
            reason=f"freed from finished holder {current.holder.job_id}",
        )
    if holder_superseded:
        return Grant(
            granted=True,
            lease=fresh,
            lost_release=current,
            reason=f"freed from superseded attempt {current.holder.attempt} of "
            f"{current.holder.job_id}",
        )
    if holder_alive is False:
        return Grant(
            granted=True,
            lease=fresh,
            reclaimed=current,
            reason=f"reclaimed from dead holder {current.holder.task_id}",
        )
    by = current.holder.task_id
    if current.name.startswith(TASK_PREFIX):
        by = f"{current.holder.job_id} on {current.holder.launcher}"
    return Grant(granted=False, reason=f"held by {by} since {now - current.acquired_at:.0f}s")


def may_hold_finished(current: Lease, holder: Holder) -> bool:
    """Whether an acquire by `holder` should ask if `current`'s run has finished.

    Only a transition lease held by another run that names its attempt: a merge
    lease is kept past its run on purpose (a protected repository's deploy).
    """
    return (
        current.name.startswith(TASK_PREFIX)
        and current.holder.attempt > 0
        and not same_holder(current, holder)
    )


def may_release(current: Lease | None, task_id: str, *, revision: int = 0, held: int = 0) -> bool:
    """Holder-aware release: only the task that holds a lease frees it.

    With `revision` (the holder's fencing token) only that very grant (`held` is the
    stored revision) is freed, so a stale executor cannot release the lease a later
    attempt of its task holds now.
    """
    if current is None or current.holder.task_id != task_id:
        return False
    return revision in (0, held)


def on_tick(
    current: Lease,
    *,
    holder_alive: bool | None,
    task_ended: bool,
    now: float,
    cfg: LeaseConfig,
    evidence: str = "",
) -> tuple[str, str]:
    """What to do with one lease on a tick: ("keep"|"reclaim"|"alert", reason).

    `evidence`: how a holder on another host was judged ("host h silent for 60s").
    """
    if task_ended:
        return "reclaim", f"task {current.holder.task_id} has ended"
    if holder_alive is False and cfg.reclaim_enabled:
        dead = f"holder pid {current.holder.pid} on {current.holder.host} is dead"
        return "reclaim", f"{dead} ({evidence})" if evidence else dead
    age = now - current.acquired_at
    if age >= cfg.max_age_s and not current.alerted:
        return "alert", (
            f"lease {current.name} held by {current.holder.task_id} for "
            f"{age:.0f}s (ceiling {cfg.max_age_s:.0f}s); release it with "
            f"`conveyor release-lease {current.name}` if its holder is stuck"
        )
    return "keep", "holder alive or unknown, within its ceiling"


SUPERSEDED = "superseded:"
"""How a refusal for an attempt that is no longer the job's current one begins: final."""


def attempt_current(status: str | None, attempts: int, attempt: int, *, running: str) -> bool:
    """Whether `attempt` is still the job's attempt: the job runs it (`running`) now.

    A reap or a retry moves the job on, so an executor of the old attempt (back from
    a pause or a partition) is refused. An unknown job (`status` None) or attempt
    (0, an older holder) proves nothing and is current.
    """
    if status is None or attempt <= 0:
        return True
    return status == running and attempts == attempt


def superseded_reason(job_id: str, attempt: int) -> str:
    """The refusal of a lease to a superseded attempt (see `SUPERSEDED`)."""
    return f"{SUPERSEDED} job {job_id} no longer runs attempt {attempt}"


def merged_stages(stages: list[tuple[str, bool]]) -> frozenset[str]:
    """Stages after the last merging stage: where a protected task keeps its merge lease.

    `stages` are the pipeline's (name, merge) pairs in order.
    """
    last = max((i for i, (_, merge) in enumerate(stages) if merge), default=len(stages))
    return frozenset(name for name, _ in stages[last + 1 :])


def release_on_stage(new: str, *, ended: bool, kept: frozenset[str]) -> str:
    """Which of a task's leases a stage change frees: "all", "merge" or "" (none).

    An ended task frees everything. A task that moves to a stage where a merge
    lease is not kept (a rework back to development) frees its merge lease: the
    merged change it guarded is being replaced.
    """
    if ended:
        return "all"
    return "" if new in kept else "merge"
