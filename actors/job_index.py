"""The QueueWorker's hot set: the jobs that can still change, indexed as they change.

A finished job whose outcome is published leaves the hot set (it stays in KV); what
status needs of the finished ones (counts by status, the most recent few) is kept
here as jobs change, so no message costs a pass over every job ever stored.

A finished job still holding its repository back (`repo_paused_until` in the future)
stays until the pause ends: the scheduler reads pauses from the hot jobs (`JobReady`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from actors.job_ready import JobReady
from actors.merge_wait_policy import awaited
from actors.queue_policy import FINISHED, RUNNING, Job

RECENT = 10
"""How many of the most recently active jobs status shows."""


def _recency(job: Job) -> float:
    return job.claimed_at or job.enqueued_at


class JobIndex:
    """Hot jobs by id, running jobs, jobs by task, unsent outboxes, counts by status.

    `awaiting`: per merge lease, the queued merge jobs that wait for its release.
    `ready`: per repository, what a dispatch reads (queued in order, running, paused).
    """

    def __init__(self) -> None:
        self.hot: dict[str, Job] = {}
        self.running: dict[str, Job] = {}
        self.outboxed: set[str] = set()
        self.counts: dict[str, int] = {}
        self.awaiting: dict[str, set[str]] = {}
        self.ready = JobReady()
        self._by_task: dict[str, set[str]] = {}
        self._pinned: set[str] = set()
        # Finished jobs that left, most recent last (the checkpoint keeps them).
        self._recent = Newest()
        # Every job's latest state, most recent last: what status shows, without a pass
        # over the hot set (a backlog of queued jobs is hot).
        self._latest = Newest()

    def load(self, jobs: Iterable[Job], *, now: float) -> None:
        """Index every stored job once (at start); the finished ones only count."""
        for job in jobs:
            self.put(job, previous=None, now=now)

    def put(self, job: Job, *, previous: Job | None, now: float) -> bool:
        """Record the job's new state (`previous`: its state before, None if new to us).

        True when it stays in the hot set, False when it left it.
        """
        if previous is not None:
            self.uncount(previous)
        self.counts[job.status] = self.counts.get(job.status, 0) + 1
        self._latest.note(job)
        old = self._drop(job.id)
        if job.status in FINISHED and not job.outbox and job.repo_paused_until <= now:
            if old is not None:
                self.ready.unset(old)
            self._recent.note(job)
            return False
        self.hot[job.id] = job
        self.ready.set(job, now=now)
        self._by_task.setdefault(job.task_id, set()).add(job.id)
        if job.status == RUNNING:
            self.running[job.id] = job
        if job.outbox:
            self.outboxed.add(job.id)
        if job.status in FINISHED:
            self._pinned.add(job.id)
        lease = awaited(job)
        if lease:
            self.awaiting.setdefault(lease, set()).add(job.id)
        return True

    def uncount(self, job: Job) -> None:
        """Take `job`'s state out of the counts (it is counted again when put back)."""
        left = self.counts.get(job.status, 0) - 1
        if left > 0:
            self.counts[job.status] = left
        else:
            self.counts.pop(job.status, None)

    def restore(self, counts: dict[str, int], recent: Iterable[Job]) -> None:
        """Start from a checkpoint's settled jobs: their counts and the most recent few."""
        for status, count in counts.items():
            self.counts[status] = self.counts.get(status, 0) + count
        for job in recent:
            self._recent.note(job)
            self._latest.note(job)

    def settled(self) -> tuple[dict[str, int], list[Job]]:
        """The counts of the jobs that left the hot set, and the most recent of them."""
        counts = dict(self.counts)
        for job in self.hot.values():
            counts[job.status] -= 1
        return {k: v for k, v in counts.items() if v > 0}, self._recent.jobs()

    def expire(self, now: float) -> list[str]:
        """Let finished jobs whose repository pause ended leave; their ids."""
        gone = [i for i in self._pinned if self.hot[i].repo_paused_until <= now]
        for job_id in gone:
            job = self.hot[job_id]
            if not job.outbox:
                self._drop(job_id)
                self.ready.unset(job)
                self._recent.note(job)
        return [i for i in gone if i not in self.hot]

    def waiting_for(self, lease: str) -> list[Job]:
        """The queued merge jobs that wait for `lease` to be freed."""
        return [self.hot[i] for i in self.awaiting.get(lease, ())]

    def of_task(self, task_id: str) -> list[Job]:
        """The task's hot jobs (its finished ones cannot change any more)."""
        return [self.hot[i] for i in self._by_task.get(task_id, ())]

    def recent(self) -> list[Job]:
        """The RECENT most recently claimed (or queued) jobs, newest first."""
        return self._latest.jobs()[::-1]

    def _drop(self, job_id: str) -> Job | None:
        """Unlink the job from all but `ready` (the caller moves it there); its old state."""
        old = self.hot.pop(job_id, None)
        if old is None:
            return None
        self.running.pop(job_id, None)
        self.outboxed.discard(job_id)
        self._pinned.discard(job_id)
        _unlink(self._by_task, old.task_id, job_id)
        _unlink(self.awaiting, awaited(old), job_id)
        return old


def _unlink(index: dict[str, set[str]], key: str, job_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(job_id)
        if not ids:
            del index[key]


class Newest:
    """The RECENT jobs with the highest recency, each in its latest state, oldest first."""

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._keys: list[float] = []

    def note(self, job: Job) -> None:
        """Keep `job`'s latest state if it is among the newest; O(RECENT)."""
        for index, seen in enumerate(self._jobs):
            if seen.id == job.id:
                del self._jobs[index], self._keys[index]
                break
        key = _recency(job)
        if len(self._jobs) >= RECENT and key <= self._keys[0]:
            return
        at = bisect.bisect_right(self._keys, key)
        self._jobs.insert(at, job)
        self._keys.insert(at, key)
        if len(self._jobs) > RECENT:
            del self._jobs[0], self._keys[0]

    def jobs(self) -> list[Job]:
        return list(self._jobs)
