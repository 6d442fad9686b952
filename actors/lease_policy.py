"""Pure decisions of the LeaseKeeper: grant, release and reclaim of merge leases.

A lease is never taken from a live holder (SPEC §9): it is reclaimed only when
its holder is provably dead (same host, pid gone or reused, or another boot),
when the task that holds it has ended, or by an operator. Past its age ceiling a
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
    reason: str


def merge_lease(repo: str) -> str:
    """KV key of a repository's merge lease."""
    return f"merge.{repo}"


def on_acquire(
    current: Lease | None, name: str, holder: Holder, *, holder_alive: bool | None, now: float
) -> Grant:
    """Grant a free lease, re-grant it to the task that holds it, reclaim it from the dead.

    `holder_alive` is the current holder's liveness: True, False (provably dead) or
    None (cannot tell, e.g. another host) — unknown counts as alive.
    """
    fresh = Lease(name=name, holder=holder, acquired_at=now, renewed_at=now)
    if current is None:
        return Grant(granted=True, lease=fresh, reason="free")
    if current.holder.task_id == holder.task_id:
        kept = msgspec.structs.replace(current, holder=holder, renewed_at=now)
        return Grant(granted=True, lease=kept, reason="already held by this task")
    if holder_alive is False:
        return Grant(
            granted=True,
            lease=fresh,
            reclaimed=current,
            reason=f"reclaimed from dead holder {current.holder.task_id}",
        )
    return Grant(
        granted=False,
        reason=f"held by {current.holder.task_id} since {now - current.acquired_at:.0f}s",
    )


def may_release(current: Lease | None, task_id: str) -> bool:
    """Holder-aware release: only the task that holds a lease frees it."""
    return current is not None and current.holder.task_id == task_id


def on_tick(
    current: Lease, *, holder_alive: bool | None, task_ended: bool, now: float, cfg: LeaseConfig
) -> tuple[str, str]:
    """What to do with one lease on a tick: ("keep"|"reclaim"|"alert", reason)."""
    if task_ended:
        return "reclaim", f"task {current.holder.task_id} has ended"
    if holder_alive is False and cfg.reclaim_enabled:
        return "reclaim", f"holder pid {current.holder.pid} on {current.holder.host} is dead"
    age = now - current.acquired_at
    if age >= cfg.max_age_s and not current.alerted:
        return "alert", (
            f"merge lease {current.name} held by {current.holder.task_id} for "
            f"{age:.0f}s (ceiling {cfg.max_age_s:.0f}s); release it with "
            f"`conveyor release-lease {current.name}` if its holder is stuck"
        )
    return "keep", "holder alive or unknown, within its ceiling"
