"""LeaseKeeper: sole writer of merge and transition leases (grant, renew, release, reclaim)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from actors import lease_policy as policy
from actors import merge_wait_policy
from actors.hosts import HostWatch
from actors.launcher_policy import FINISHED, Run, run_key
from actors.lease_policy import Lease
from actors.owner import Owner
from bus import subjects
from bus.bridge import Bus, Delivery, KeyExists, Store, Versioned
from bus.messages import (
    Alert,
    LeaseAcquire,
    LeaseFreed,
    LeaseHolder,
    LeaseRelease,
    LeaseRenew,
    LeaseReply,
    StageChanged,
    Tick,
)
from bus.messages_hosts import HostHeartbeat
from conveyor import procs
from conveyor.clock import Clock
from conveyor.config import LeaseConfig
from conveyor.errors import Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)

ENDED = frozenset({"done", "cancelled"})
FREED_KEPT = 4096
"""Delete markers of released leases remembered, so taking one again is a single write."""


def holder_alive(holder: LeaseHolder, host: str, boot: str) -> bool | None:
    """True/False when it can be proven on this host; None when it cannot be told.

    None (another host, permission denied, no start time) counts as alive.
    """
    if holder.host != host:
        return None
    if boot and holder.boot_id and holder.boot_id != boot:
        return False
    probed = procs.probe(holder.pid, holder.create_time)
    return None if probed == procs.UNCERTAIN else probed == procs.ALIVE


def run_finished(runs: Store[Run]) -> Callable[[LeaseHolder], bool]:
    """Whether a holder's run is stored as finished (its release, if any, was lost)."""

    def _finished(holder: LeaseHolder) -> bool:
        entry = runs.get(run_key(holder.job_id, holder.attempt))
        return entry is not None and entry.value.status == FINISHED

    return _finished


def run_in_progress(runs: Store[Run]) -> Callable[[LeaseHolder], bool]:
    """Whether a holder's run is stored and not finished (a merge going on now)."""

    def _in_progress(holder: LeaseHolder) -> bool:
        if holder.attempt <= 0:
            return False
        entry = runs.get(run_key(holder.job_id, holder.attempt))
        return entry is not None and entry.value.status != FINISHED

    return _in_progress


class LeaseStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> LeaseKeeper (ask)."""


class LeaseKeeper(Owner):
    """Grants each repository's merge lease to one task at a time; the revision fences."""

    name = "lease_keeper"
    failed_event = "failed"

    def __init__(
        self,
        bus: Bus,
        store: Store[Lease],
        clock: Clock,
        cfg: LeaseConfig,
        *,
        kept: frozenset[str] = frozenset(),
        finished: Callable[[LeaseHolder], bool] | None = None,
        in_progress: Callable[[LeaseHolder], bool] | None = None,
        current: Callable[[str, int], bool] | None = None,
        host: str = "",
        silence_s: float = 60.0,
    ) -> None:
        super().__init__()
        self._bus, self._store, self._clock, self._cfg = bus, store, clock, cfg
        self._kept = kept
        self._finished = finished
        self._in_progress = in_progress
        # Waiters retry when the keeper says it is back: once it answers requests,
        # which is after the process registered its service (the first tick).
        self._announced = False
        self._leases: dict[str, Versioned[Lease]] = {}
        self._freed: OrderedDict[str, int] = OrderedDict()
        # Whether a holder's attempt is still its job's: a superseded one gets no lease.
        self._current = current
        self._host = procs.host_id(host)
        self._boot = procs.boot_id()
        # Holders on other hosts are judged by their host's answers and silence.
        self._hosts = HostWatch(bus, clock, silence_s=silence_s)
        self._reclaimed_total = 0
        self._alerted: set[tuple[str, float]] = set()

    def on_start(self) -> None:
        self._hosts.listen(self.actor_ref.tell)
        self._leases = self._store.load_all()
        self._sweep()
        log.info("lease_keeper.started", leases=len(self._leases))

    def handle(self, message: Any) -> Any:
        match message:
            case LeaseAcquire():
                return self._acquire(message)
            case LeaseRenew():
                return self._renew(message)
            case LeaseRelease():
                return self._release(message)
            case Delivery(body=LeaseRelease() as late):
                # A release the holder could not deliver while this keeper was away.
                self._release(late)
                message.ack()
            case Delivery(body=StageChanged() as event):
                ended = event.new in ENDED
                which = policy.release_on_stage(event.new, ended=ended, kept=self._kept)
                if which:
                    self._release_task(
                        event.task_id, f"task {event.new}", merge_only=which == "merge"
                    )
                message.ack()
            case Delivery(body=Alert(kind="escalated", task_id=task_id) as alert):
                self._release_task(task_id, f"task escalated: {alert.text[:80]}")
                message.ack()
            case Delivery():
                message.ack()
            case Tick():
                self._sweep()
                if not self._announced:
                    self._announced = True
                    self._bus.publish_core(subjects.LEASE_FREED, LeaseFreed())
            case HostHeartbeat():
                self._hosts.heard(message)
            case LeaseStatus():
                return self._status()
        return None

    def on_fenced(self, err: Fenced) -> Any:
        # Someone else wrote the lease: re-read, and let the caller try again.
        log.warning("lease_keeper.conflict", error=str(err))
        self._leases = self._store.load_all()
        return LeaseReply(granted=False, reason="lease changed concurrently; retry")

    def on_failed(self, message: Any, err: Exception) -> Any:
        super().on_failed(message, err)
        return LeaseReply(granted=False, reason=f"lease keeper error: {err}")

    def _put(self, lease: Lease) -> int:
        current = self._leases.get(lease.name)
        if current is None:
            try:
                over = self._freed.pop(lease.name, 0)
                revision = self._store.create(lease.name, lease, over=over)
            except KeyExists as err:
                raise Fenced(f"lease {lease.name} appeared concurrently") from err
        else:
            revision = self._store.update(lease.name, lease, expect=current.revision)
        self._leases[lease.name] = Versioned(lease, revision)
        return revision

    def _drop(self, name: str) -> None:
        current = self._leases.pop(name, None)
        if current is not None:
            self._freed[name] = self._store.delete(name, expect=current.revision)
            if len(self._freed) > FREED_KEPT:
                self._freed.popitem(last=False)
            self._bus.publish_core(subjects.LEASE_FREED, LeaseFreed(name=name))

    def _acquire(self, req: LeaseAcquire) -> LeaseReply:
        if not self._cfg.enabled:
            return LeaseReply(granted=True, revision=0, reason="leases disabled")
        current = self._leases.get(req.name)
        if self._superseded(req.name, req.holder):
            reason = policy.superseded_reason(req.holder.job_id, req.holder.attempt)
            log.warning("lease_keeper.superseded_refused", lease=req.name, reason=reason)
            return LeaseReply(granted=False, reason=reason)
        alive, stale = None, False
        if current is not None and not policy.same_holder(current.value, req.holder):
            stale = self._superseded(req.name, current.value.holder)
            alive = None if stale else self._alive(current.value.holder, ask=True)
        grant = policy.on_acquire(
            current.value if current else None,
            req.name,
            req.holder,
            holder_alive=alive if self._cfg.reclaim_enabled else None,
            now=self._clock.now(),
            holder_finished=self._holder_finished(current, req.holder),
            holder_superseded=stale,
        )
        if not grant.granted or grant.lease is None:
            return LeaseReply(granted=False, reason=self._refusal(req.name, current, grant.reason))
        if grant.reclaimed is not None:
            self._reclaimed(grant.reclaimed, grant.reason)
        if grant.lost_release is not None:
            log.warning(
                "lease_keeper.lost_release_freed",
                lease=req.name,
                job_id=grant.lost_release.holder.job_id,
                attempt=grant.lost_release.holder.attempt,
            )
        revision = self._put(grant.lease)
        log.info(
            "lease_keeper.granted",
            lease=req.name,
            task_id=req.holder.task_id,
            revision=revision,
            reason=grant.reason,
        )
        return LeaseReply(granted=True, revision=revision, reason=grant.reason)

    def _refusal(self, name: str, current: Versioned[Lease] | None, reason: str) -> str:
        """A merge lease's refusal says whether its holder is merging now (wait for it)."""
        if current is None or self._in_progress is None or not name.startswith(policy.MERGE_PREFIX):
            return reason
        merging = self._in_progress(current.value.holder)
        return merge_wait_policy.refusal(reason, merging=merging)

    def _holder_finished(self, current: Versioned[Lease] | None, holder: LeaseHolder) -> bool:
        if current is None or self._finished is None:
            return False
        if not policy.may_hold_finished(current.value, holder):
            return False
        return self._finished(current.value.holder)

    def _renew(self, req: LeaseRenew) -> LeaseReply:
        if not self._cfg.enabled:
            return LeaseReply(granted=True, revision=0, reason="leases disabled")
        current = self._leases.get(req.name)
        if (
            current is None
            or current.revision != req.revision
            or not policy.may_release(current.value, req.task_id)
        ):
            log.warning(
                "lease_keeper.fenced_out",
                lease=req.name,
                task_id=req.task_id,
                revision=req.revision,
            )
            return LeaseReply(granted=False, reason="lease lost (revision moved)")
        holder = current.value.holder
        if self._superseded(req.name, holder):
            reason = policy.superseded_reason(holder.job_id, holder.attempt)
            log.warning("lease_keeper.superseded_refused", lease=req.name, reason=reason)
            return LeaseReply(granted=False, reason=reason)
        touched = msgspec.structs.replace(current.value, renewed_at=self._clock.now())
        return LeaseReply(granted=True, revision=self._put(touched), reason="renewed")

    def _release(self, req: LeaseRelease) -> LeaseReply:
        current = self._leases.get(req.name)
        if current is None:
            return LeaseReply(granted=True, reason="not held")
        if not req.force and not policy.may_release(
            current.value, req.task_id, revision=req.revision, held=current.revision
        ):
            return LeaseReply(granted=False, reason=f"held by {current.value.holder.task_id}")
        self._drop(req.name)
        log.info(
            "lease_keeper.released",
            lease=req.name,
            task_id=current.value.holder.task_id,
            forced=req.force,
        )
        return LeaseReply(granted=True, reason="released")

    def _release_task(self, task_id: str, why: str, *, merge_only: bool = False) -> None:
        for name, entry in list(self._leases.items()):
            if merge_only and not name.startswith(policy.MERGE_PREFIX):
                continue
            if entry.value.holder.task_id == task_id:
                self._drop(name)
                log.info("lease_keeper.released", lease=name, task_id=task_id, reason=why)

    def _sweep(self) -> None:
        now = self._clock.now()
        failed = False
        for name, entry in list(self._leases.items()):
            try:
                self._sweep_one(name, entry.value, now)
            except Exception:
                # One lease that cannot be judged or freed (a concurrent write, a
                # bus error) must not keep the others from their sweep.
                log.exception("lease_keeper.sweep_failed", lease=name)
                failed = True
        if failed:
            # A failed delete left memory unsure of the bucket; the next sweep retries.
            self._leases = self._store.load_all()

    def _sweep_one(self, name: str, stored: Lease, now: float) -> None:
        # Whether it was alerted is remembered here, not in KV: writing the lease
        # would move the holder's fencing token under it.
        seen = (name, stored.acquired_at) in self._alerted
        lease = msgspec.structs.replace(stored, alerted=seen)
        alive = self._alive(lease.holder, ask=False)
        host = lease.holder.host
        remote = host != self._host and self._hosts.silent(host)
        evidence = f"host {host} silent for {self._hosts.silence(host):.0f}s" if remote else ""
        action, reason = policy.on_tick(
            lease, holder_alive=alive, task_ended=False, now=now, cfg=self._cfg, evidence=evidence
        )
        if action == "reclaim":
            self._drop(name)
            self._reclaimed(lease, reason)
        elif action == "alert":
            self._alerted.add((name, lease.acquired_at))
            self._alert(lease, reason, "warning")

    def _alive(self, holder: LeaseHolder, *, ask: bool) -> bool | None:
        """Probed here for this host; for another, its answer (when `ask`) or its silence."""
        if holder.host == self._host:
            return holder_alive(holder, self._host, self._boot)
        return self._hosts.holder_alive(holder, ask=ask)

    def _superseded(self, name: str, holder: LeaseHolder) -> bool:
        """A transition lease for an attempt its job no longer runs (reaped, retried)."""
        if self._current is None or not name.startswith(policy.TASK_PREFIX):
            return False
        return not self._current(holder.job_id, holder.attempt)

    def _reclaimed(self, lease: Lease, reason: str) -> None:
        self._reclaimed_total += 1
        log.warning(
            "lease_keeper.reclaimed", lease=lease.name, task_id=lease.holder.task_id, reason=reason
        )
        self._alert(lease, f"lease {lease.name} reclaimed: {reason}", "warning")

    def _alert(self, lease: Lease, text: str, level: str) -> None:
        alert = Alert(
            level=level,
            text=text,
            task_id=lease.holder.task_id,
            source="lease_keeper",
            at=self._clock.now(),
        )
        self._bus.emit(alert, msg_id=f"lease:{lease.name}:{lease.acquired_at}:{text[:40]}")

    def _status(self) -> dict[str, Any]:
        return {
            "healthy": True,
            "enabled": self._cfg.enabled,
            "reclaimed_total": self._reclaimed_total,
            # The reference's name for the same figure.
            "lease_reclaimed_total": self._reclaimed_total,
            "leases": [
                {
                    "name": e.value.name,
                    "task_id": e.value.holder.task_id,
                    "job_id": e.value.holder.job_id,
                    "revision": e.revision,
                    "acquired_at": e.value.acquired_at,
                    "host": e.value.holder.host,
                    "pid": e.value.holder.pid,
                }
                for e in self._leases.values()
            ],
        }
