"""The QueueWorker's hot jobs, read from the other actors' threads of its process.

The LeaseKeeper refuses a transition lease to an attempt its job no longer runs,
and asks on every grant and renewal: 20 to 30 job reads an item, each a
`STREAM.MSG.GET` round trip through nats-server. The QueueWorker is the sole writer
of jobs and lives in the same process, and a job whose attempt can be running is in
its hot set, written to memory only after its KV write landed: reading it there
gives the same answer as reading KV at that moment.

Until the worker's start-up load is done, after it stops, and for a job not in the
hot set (settled, deleted by retention, or unknown), readers still ask KV; and a
reader that would refuse an attempt on the hot set's word asks KV first
(`actors.hosts.attempt_owner`).
"""

from __future__ import annotations

from collections.abc import Mapping

from actors.queue_policy import Job
from bus.kv import Versioned


class HotJobs:
    """A window on the running QueueWorker's hot set (single dict reads, no copying)."""

    def __init__(self) -> None:
        self._jobs: Mapping[str, Versioned[Job]] | None = None

    def attach(self, jobs: Mapping[str, Versioned[Job]]) -> None:
        """The worker's loaded hot set: it keeps changing it in place."""
        self._jobs = jobs

    def detach(self) -> None:
        self._jobs = None

    def get(self, job_id: str) -> Job | None:
        """The job as its worker last wrote it, or None: not known here, ask KV."""
        jobs = self._jobs
        if jobs is None:
            return None
        entry = jobs.get(job_id)
        return entry.value if entry is not None else None
