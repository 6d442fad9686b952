"""The QueueWorker's jobs in memory, and the checkpoint that lets start-up skip settled ones.

A mixin of the QueueWorker (the sole writer of jobs). A job that finished and has
nothing left to publish leaves the hot set (`JobIndex`); it stays in `conveyor_jobs`.
What the worker derives from the settled jobs is small: their counts by status, their
usage (the ledger, each job on its finish's UTC day) and the few most recent. The
worker checkpoints those into `conveyor_index` (see docs/adr/0012-cold-state.md):

- `jobs.head`: the stream sequence it covers, the hot job ids (in `jobs.hot.*` parts
  when too many for one message), and the settled jobs' counts, ledger and recent jobs.

Start-up reads the head, the hot jobs by key and only the writes to `conveyor_jobs`
after the head's sequence (in batches, settled jobs leaving memory as they are read).
A job settled at the head is never counted twice: before a settled job is written
again (read back from KV), it leaves the settled aggregates and a head naming it hot
is written first.
"""

from __future__ import annotations

import msgspec

from actors import usage_policy
from actors.checkpoint_policy import head_due
from actors.job_index import JobIndex
from actors.queue_policy import Job, job_usage
from actors.task_settled import CheckpointUnusable, HotPart, hot_and_tail, read_hot, write_hot
from actors.usage_policy import Ledger, Usage
from bus import subjects
from bus.bridge import Bus
from bus.kv import Quarantined, Store, Versioned
from conveyor.clock import Clock
from conveyor.logs import get_logger

log = get_logger(__name__)

HEAD_KEY = "jobs.head"
PREFIX = "jobs"
MIGRATION_BATCH = 5000
"""Job records the one-time upgrade reads (and settles) at a time."""


class JobsHead(msgspec.Struct, frozen=True, kw_only=True):
    """The QueueWorker's checkpoint: every job write up to `seq` is reflected in it."""

    seq: int
    hot: list[str]
    counts: dict[str, int]
    """Settled jobs by status."""
    ledger: Ledger
    """Settled jobs' usage, each on its finish's UTC day."""
    recent: list[Job]
    """The most recently active settled jobs, without their long texts."""
    hot_parts: int = 0


def with_settled(ledger: Ledger, job: Job, *, now: float, sign: int = 1) -> Ledger:
    """`ledger` with a settled job's usage added (`sign` -1: taken out again)."""
    usage = job_usage(job)
    if sign < 0:
        usage = Usage(
            input_tokens=-usage.input_tokens,
            output_tokens=-usage.output_tokens,
            cached_tokens=-usage.cached_tokens,
            cost_usd=-usage.cost_usd,
        )
    day = usage_policy.day_of(job.finished_at or job.enqueued_at)
    return usage_policy.record(ledger, job.repo, job.role, usage, now=now, day=day)


def _brief(job: Job) -> Job:
    return msgspec.structs.replace(job, description="", brief="", retry_brief="")


class JobState:
    """Jobs as the QueueWorker holds them; `_store` is the jobs bucket."""

    _store: Store[Job]
    _bus: Bus
    _clock: Clock
    _jobs: dict[str, Versioned[Job]]
    _index: JobIndex

    def _init_state(self) -> None:
        self._settled_ledger = Ledger()
        # Every job write up to `_covered` is in the last head; ours since are `_written`.
        self._seq = 0
        self._head_seq = -1
        self._head_at = float("-inf")
        self._covered = 0
        self._writes = 0
        self._written: dict[str, int] = {}
        self._heads: Store[JobsHead] | None = None
        self._parts: Store[HotPart] | None = None

    def _load(self) -> int:
        """The hot jobs and the settled aggregates, from the checkpoint when there is one.

        Returns how many job records were read.
        """
        self._heads = self._bus.store(subjects.BUCKET_INDEX, JobsHead)
        self._parts = self._bus.store(subjects.BUCKET_INDEX, HotPart)
        try:
            read = self._read_checkpoint(self._heads, self._parts)
        except CheckpointUnusable as err:
            log.warning("queue_worker.checkpoint_unusable", error=str(err))
            self._jobs, self._index, self._settled_ledger = {}, JobIndex(), Ledger()
            read = None
        if read is None:
            read = self._migrate()
        self._covered, self._writes, self._written = self._seq, 0, {}
        return read

    def _read_checkpoint(self, heads: Store[JobsHead], parts: Store[HotPart]) -> int | None:
        try:
            entry = heads.get(HEAD_KEY)
        except Quarantined as err:
            raise CheckpointUnusable(str(err)) from err
        if entry is None:
            return None
        head = entry.value
        hot_ids = read_hot(parts, PREFIX, head.hot, head.hot_parts)
        self._index.restore(head.counts, head.recent)
        self._settled_ledger = head.ledger
        # Writes up to the stream's end are the head's or foreign: none counts as ours.
        self._seq = max(head.seq, self._store.last_seq())

        def tail(key: str, job: Versioned[Job] | None) -> None:
            if job is not None:
                before = self._jobs.get(key)
                self._track(job, before.value if before is not None else None)

        hot, read, last = hot_and_tail(self._store, hot_ids, head.seq, tail)
        self._seq = max(self._seq, last)
        for job in hot.values():
            self._track(job, None)
        return len(hot) + read

    def _migrate(self) -> int:
        """No checkpoint yet (data of an older version): read every job once, in batches.

        Settled jobs leave memory as they are read, so the upgrade's peak is one batch.
        """
        seq, read = 0, 0
        while True:
            writes, _ = self._store.walk(seq, limit=MIGRATION_BATCH)
            for _, at, entry in writes:
                if entry is not None:
                    self._track(entry, None)
                seq = at
            read += len(writes)
            if len(writes) < MIGRATION_BATCH:
                return read

    def _track(self, entry: Versioned[Job], previous: Job | None) -> None:
        """Index the job's new state; it stays in memory only while it can change."""
        job = entry.value
        if entry.revision > self._seq:
            self._writes += 1
            self._written[job.id] = entry.revision
        self._seq = max(self._seq, entry.revision)
        if self._index.put(job, previous=previous, now=self._clock.now()):
            self._jobs[job.id] = entry
        else:
            self._jobs.pop(job.id, None)
            self._settle(job)

    def _settle(self, job: Job) -> None:
        self._settled_ledger = with_settled(self._settled_ledger, job, now=self._clock.now())
        self._head_seq = -1  # the hot set changed: the next tick writes a head

    def _reopen(self, entry: Versioned[Job]) -> None:
        """A settled job read back from KV is about to be written: it leaves the aggregates.

        The head written here names it hot, so a restart before its next checkpoint
        counts it once, from what is stored.
        """
        job = entry.value
        if entry.revision > self._covered and self._written.get(job.id) != entry.revision:
            return  # written behind our back and not adopted yet: never counted
        self._index.uncount(job)
        now = self._clock.now()
        self._settled_ledger = with_settled(self._settled_ledger, job, now=now, sign=-1)
        self._checkpoint(extra=job.id)

    def _unreopen(self, entry: Versioned[Job]) -> None:
        """The write after `_reopen` failed: the job is settled as stored."""
        self._track(entry, None)

    def _checkpoint(self, *, extra: str = "", force: bool = False) -> None:
        """Write the head when anything changed since the last one and the writes pay for it.

        `extra`: an id also hot; `force`: whatever the writes since (the end of a start).
        """
        heads, parts = self._heads, self._parts
        if heads is None or parts is None or (self._seq == self._head_seq and not extra):
            return
        now = self._clock.now()
        due = head_due(hot=len(self._jobs), writes=self._writes, age_s=now - self._head_at)
        if not (force or extra or due):
            return
        if self._store.last_seq() - self._covered > self._writes:
            self._adopt()
        counts, recent = self._index.settled()
        head = JobsHead(
            seq=self._seq,
            hot=sorted({*self._jobs, *([extra] if extra else [])}),
            counts=counts,
            ledger=self._settled_ledger,
            recent=[_brief(job) for job in recent],
        )
        max_bytes = int(self._bus.nc.max_payload)
        n = write_hot(parts, PREFIX, head.hot, len(msgspec.json.encode(head)), max_bytes)
        heads.put(HEAD_KEY, msgspec.structs.replace(head, hot=[], hot_parts=n) if n else head)
        self._head_seq = self._covered = self._seq
        self._writes, self._written, self._head_at = 0, {}, now

    def _adopt(self) -> None:
        """Read the job writes since the last head that were not ours (by hand, a restore).

        Deletions (the Janitor's) change nothing: a live worker keeps counting what it saw.
        """
        tail, last = self._store.since(self._covered)
        adopted = 0
        for key, entry in tail.items():
            mine = self._jobs.get(key)
            if entry is None or entry.revision <= self._written.get(key, 0):
                continue
            if mine is None or mine.revision < entry.revision:
                self._track(entry, mine.value if mine else None)
                adopted += 1
        self._seq = max(self._seq, last)
        log.info("queue_worker.writes_adopted", read=len(tail), adopted=adopted)
