"""QueueWorker: the sole owner of jobs (status, attempts, back-off, concurrency slots)."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import msgspec
import pykka

from actors import ceiling_policy, merge_wait_policy, usage_policy
from actors import queue_policy as policy
from actors.hot_jobs import HotJobs
from actors.janitor_policy import LaunchPause
from actors.job_index import JobIndex
from actors.job_state import JobState
from actors.lease_policy import Lease, merge_lease
from actors.owner import Owner, flush_outbox
from actors.queue_policy import Job, RunningSnapshot
from bus import subjects
from bus.bridge import Bus, Delivery, KeyExists, Store, Versioned
from bus.messages import (
    JobFinished,
    JobRequested,
    JobsCancelled,
    JobStarted,
    LeaseFreed,
    ReapJob,
    RunHeartbeat,
    Tick,
)
from conveyor import faults
from conveyor.clock import Clock
from conveyor.config import QueueConfig
from conveyor.logs import get_logger
from conveyor.pipeline import ROLE_MERGE

log = get_logger(__name__)


class QueueStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> QueueWorker (ask)."""

    kind: str = "queue"


class UsageQuery(msgspec.Struct, frozen=True):
    """Status endpoint -> QueueWorker (ask): the cost ledger per repository and role."""


def job_key(job_id: str) -> str:
    """KV key of a job (job ids are already KV-safe: id.stage.visit.step)."""
    return job_id


class QueueWorker(Owner, JobState):
    """Stores jobs, claims them fairly within limits, turns finishes into outcomes."""

    name = "queue_worker"

    def __init__(
        self,
        bus: Bus,
        store: Store[Job],
        clock: Clock,
        cfg: QueueConfig,
        ceilings: usage_policy.Ceilings | None = None,
        *,
        lease_retry_s: float = 5.0,
        protected: frozenset[str] = frozenset(),
        hot: HotJobs | None = None,
    ) -> None:
        super().__init__()
        # Other actors of this process read the hot set through it (the LeaseKeeper).
        self._hot = hot
        self._bus, self._store, self._clock, self._cfg = bus, store, clock, cfg
        # How long a merge job parked for its repository's merge lease sleeps at most.
        self._lease_retry_s = lease_retry_s
        # Repositories whose tasks keep the merge lease through their deploy.
        self._protected = protected
        self._leases: Store[Lease] | None = None
        self._ceilings = ceilings or usage_policy.Ceilings(
            repo_usd_per_day=cfg.max_repo_usd_per_day,
            repo_tokens_per_day=cfg.max_repo_tokens_per_day,
        )
        # The hot set (jobs that can still change) with revisions; `_index` mirrors it.
        self._jobs: dict[str, Versioned[Job]] = {}
        self._index = JobIndex()
        self._started_at = 0.0
        self._ledger = usage_policy.Ledger()
        self._held: dict[str, str] = {}
        # Why no job may start now (the Janitor's disk floor); "" when they may.
        self._paused = ""
        self._init_state()

    def on_stop(self) -> None:
        if self._hot is not None:
            self._hot.detach()

    def on_failure(self, *_: object) -> None:
        self.on_stop()

    def on_start(self) -> None:
        self._started_at = self._clock.now()
        read = self._load()
        # Settled jobs are in the settled ledger; the hot ones are counted on top of it.
        hot = (e.value for e in self._jobs.values())
        self._ledger = policy.rebuilt_ledger(hot, now=self._started_at, base=self._settled_ledger)
        for job_id in list(self._index.outboxed):
            self._flush(job_id)
        self._checkpoint(force=True)
        if self._hot is not None:
            self._hot.attach(self._jobs)
        log.info("queue_worker.started", read=read, hot=len(self._jobs))
        freed = msgspec.json.Decoder(LeaseFreed)
        self._bus.subscribe_core(subjects.LEASE_FREED, freed, self._tell_freed)
        self._dispatch()

    def _tell_freed(self, freed: LeaseFreed) -> None:
        with suppress(pykka.ActorDeadError):
            self.actor_ref.tell(freed)

    def handle(self, message: Any) -> Any:
        match message:
            case Delivery(
                body=JobRequested() | JobsCancelled() | JobStarted() | JobFinished() | ReapJob()
            ):
                self._handle(message)
            case RunHeartbeat():
                self._on_heartbeat(message)
            case Tick():
                for job_id in self._index.expire(self._clock.now()):
                    gone = self._jobs.pop(job_id, None)
                    if gone is not None:
                        self._settle(gone.value)
                self._heal()
                self._dispatch()
                self._checkpoint()
            case QueueStatus():
                return self._status()
            case UsageQuery():
                self._ledger = usage_policy.rolled(self._ledger, self._clock.now())
                return usage_policy.summary(self._ledger)
            case RunningSnapshot():
                return list(self._index.running.values())
            case LaunchPause():
                self._on_pause(message)
            case LeaseFreed():
                self._on_freed(message)
            case _:
                log.warning("queue_worker.unknown_message", kind=type(message).__name__)
        return None

    def _handle(self, delivery: Delivery[Any]) -> None:
        now = self._clock.now()
        body = delivery.body
        decision: policy.Decision
        match body:
            case JobRequested():
                current = self._lookup(body.job_id)
                decision = policy.on_request(
                    current.value if current else None, body, now=now, cfg=self._cfg
                )
            case JobsCancelled():
                decision = policy.on_cancel(
                    self._index.of_task(body.task_id), now=now, reason=body.reason or "cancelled"
                )
            case ReapJob():
                current = self._lookup(body.job_id)
                if current is None:
                    delivery.ack()
                    return
                decision = policy.on_reaped(current.value, body, now=now, cfg=self._cfg)
                log.warning(
                    "queue_worker.reap_requested",
                    job_id=body.job_id,
                    attempt=body.attempt,
                    tier=body.tier,
                    reason=body.reason,
                    outcome=decision.reason,
                )
            case JobStarted() | JobFinished():
                current = self._lookup(body.job_id)
                if current is None:
                    log.warning("queue_worker.report_unknown_job", job_id=body.job_id)
                    delivery.ack()
                    return
                if isinstance(body, JobStarted):
                    decision = policy.on_started(current.value, body)
                else:
                    decision = policy.on_finished(current.value, body, now=now, cfg=self._cfg)
                    requeued = (merge_wait_policy.requeued(j, now=now) for j in decision.jobs)
                    decision = msgspec.structs.replace(decision, jobs=tuple(requeued))
                    job = current.value
                    self._ledger = usage_policy.record(
                        self._ledger, job.repo, job.role, decision.usage, now=now
                    )
        self._apply(decision)
        delivery.ack()
        self._dispatch()

    def _on_heartbeat(self, beat: RunHeartbeat) -> None:
        """Kill a running job whose running totals crossed a spending ceiling (O(1))."""
        entry = self._jobs.get(beat.job_id)
        if self.fenced or entry is None or not self._ceilings.any:
            return
        now = self._clock.now()
        self._ledger = usage_policy.rolled(self._ledger, now)
        decision = ceiling_policy.on_heartbeat(
            entry.value, beat, self._ledger, self._ceilings, now=now
        )
        if decision.jobs:
            log.warning("queue_worker.ceiling_crossed", job_id=beat.job_id, reason=decision.reason)
            self._apply(decision)

    def _on_pause(self, pause: LaunchPause) -> None:
        if pause.reason != self._paused:
            if pause.reason:
                log.warning("queue_worker.launching_paused", reason=pause.reason)
            else:
                log.info("queue_worker.launching_resumed", reason=self._paused)
        self._paused = pause.reason
        self._dispatch()

    def _on_freed(self, freed: LeaseFreed) -> None:
        """Wake one merge job parked for the freed lease (each lease: the keeper is back)."""
        if self.fenced:
            return
        now = self._clock.now()
        # Most frees are transition leases nobody parks for: those cost a lookup only.
        names = [freed.name] if freed.name else list(self._index.awaiting)
        woke = False
        for name in names:
            woken = merge_wait_policy.wake(self._index.waiting_for(name), now=now)
            if woken is not None:
                self._apply(policy.Decision(jobs=(woken,), reason=f"woken: {name} freed"))
                woke = True
        if woke:
            self._dispatch()

    def _apply(self, decision: policy.Decision) -> None:
        emits = list(decision.emit)
        for index, job in enumerate(decision.jobs):
            # The outbox rides on the first changed job; every emit is tied to one write.
            outbox = emits if index == 0 else []
            self._save(msgspec.structs.replace(job, outbox=outbox))
        if decision.jobs:
            faults.point("queue_worker.persisted")
            log.info(
                "queue_worker.decided",
                job_id=decision.jobs[0].id,
                reason=decision.reason,
                status=decision.jobs[0].status,
            )
            self._flush(decision.jobs[0].id)

    def _lookup(self, job_id: str) -> Versioned[Job] | None:
        """A hot job, or a finished one read from KV (only replays ask for those)."""
        entry = self._jobs.get(job_id)
        return entry if entry is not None else self._store.get(job_key(job_id))

    def _save(self, job: Job) -> None:
        current = self._jobs.get(job.id)
        previous = current.value if current else None
        if current is None:
            try:
                revision = self._store.create(job_key(job.id), job)
            except KeyExists:
                # A finished job that left memory, changed again (read back from KV).
                current = self._store.get(job_key(job.id))
                if current is None:
                    raise
                self._reopen(current)
                try:
                    revision = self._store.update(job_key(job.id), job, expect=current.revision)
                except Exception:
                    self._unreopen(current)
                    raise
        else:
            revision = self._store.update(job_key(job.id), job, expect=current.revision)
        self._track(Versioned(job, revision), previous)

    def _flush(self, job_id: str) -> None:
        entry = self._jobs.get(job_id)
        if entry is None:
            return  # finished with nothing left to send
        flushed = flush_outbox(
            self._bus,
            self._store,
            job_key(job_id),
            entry,
            entry.value.outbox,
            fault="queue_worker.published",
        )
        self._track(flushed, entry.value)

    def _heal(self) -> None:
        """Publish outboxes a failure left stored but unsent (a bus outage, a crash)."""
        for job_id in list(self._index.outboxed):
            self._flush(job_id)

    def _dispatch(self) -> None:
        if self.fenced:
            return
        now = self._clock.now()
        # Read per repository, kept as jobs change: a backlog of queued jobs costs nothing here.
        queues = self._index.ready
        self._ledger = usage_policy.rolled(self._ledger, now)
        self._held = policy.held_of(queues.queued_repos(), self._ledger, self._cfg)
        held = policy.hold(queues.stale_holds(self._held), self._held, self._ledger, now=now)
        if held.jobs:
            self._apply(held)
            alerted = {job.repo for job in held.jobs if job.held}
            self._ledger = msgspec.structs.replace(
                self._ledger, alerted=self._ledger.alerted | alerted
            )
        if self._paused:
            return
        parked = True
        while parked:
            # A merge job parked frees its pick: schedule again until none is parked.
            parked = False
            for job_id in policy.pick(queues.at(now), now=now, cfg=self._cfg, held=self._held):
                job = self._jobs[job_id].value
                lease = self._merge_lease(job)
                running = lease is not None and lease.holder.job_id in self._index.running
                kept = job.repo in self._protected
                if lease is not None and merge_wait_policy.parks(job, lease, running, kept=kept):
                    park = merge_wait_policy.park(job, lease, now=now, retry_s=self._lease_retry_s)
                    self._apply(policy.Decision(jobs=(park,), reason=f"parked for {lease.name}"))
                    parked = True
                else:
                    self._apply(policy.claim(job, now=now))

    def _merge_lease(self, job: Job) -> Lease | None:
        """A merge job's repository's merge lease as stored (None: free, or not a merge job).

        Unreadable, it counts as free: the run asks the LeaseKeeper, as it always did.
        """
        if job.role != ROLE_MERGE:
            return None
        try:
            if self._leases is None:
                self._leases = self._bus.store(subjects.BUCKET_LEASES, Lease)
            entry = self._leases.get(merge_lease(job.repo))
        except Exception as err:  # noqa: BLE001 - a lease unread must not stop every launch
            log.warning("queue_worker.lease_unread", job_id=job.id, error=str(err))
            return None
        return entry.value if entry is not None else None

    def _status(self) -> dict[str, Any]:
        running = [
            {
                "id": job.id,
                "task_id": job.task_id,
                "repo": job.repo,
                "role": job.role,
                "attempt": job.attempts,
                "pid": job.pid,
                "host": job.host,
                "claimed_at": job.claimed_at,
                "started_at": job.started_at,
                "log_path": job.log_path,
            }
            for job in self._index.running.values()
        ]
        recent = self._index.recent()
        return {
            "healthy": not self.fenced,
            "counts": dict(self._index.counts),
            "max_concurrency": self._cfg.max_concurrency,
            "per_repo_concurrency": self._cfg.per_repo_concurrency,
            "running": running,
            "held": dict(self._held),
            "paused": self._paused,
            "recent": [
                {
                    "id": j.id,
                    "status": j.status,
                    "attempts": j.attempts,
                    "exit_code": j.exit_code,
                    "error": j.error,
                    "held": j.held,
                }
                for j in recent
            ],
            "started_at": self._started_at,
            # Jobs kept in memory: those that can still change (finished ones are in KV).
            "hot": len(self._jobs),
        }
