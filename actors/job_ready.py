"""What a dispatch reads of the hot jobs, per repository, kept as jobs change.

`JobIndex` tells `JobReady` every change of a hot job (O(log n) each); a dispatch
then reads the repositories, not the jobs (`schedule_policy.pick` through the
`Queues` protocol, `schedule_policy.held_of`, `stale_holds`):

- per repository, its queued jobs whose back-off passed, ordered by `(enqueued_at, id)`;
- the queued jobs still backing off, by `available_at` (moved over when it comes);
- per repository, how many of its jobs run, and the latest `repo_paused_until`
  of its hot jobs (a finished job that paused it stays hot until the pause ends);
- per repository, its queued jobs by their `held` mark (a hold touches only jobs
  whose mark differs from their repository's reason).

Heaps are lazy: a removed or moved entry stays until it reaches the top (or the
heap is rebuilt once it is mostly such entries), so every change is O(log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Protocol, TypeVar

from actors.queue_policy import QUEUED, RUNNING, Job

G = TypeVar("G", bound="_Group")


class _Heap:
    """Items by a float key, smallest first (ties by item); removal is O(1), lazily."""

    __slots__ = ("_heap", "_live", "_serial")

    def __init__(self) -> None:
        self._heap: list[tuple[float, str, int]] = []
        # Each live item's key and the serial of its one valid entry in `_heap`.
        self._live: dict[str, tuple[float, int]] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._live)

    def put(self, item: str, key: float) -> None:
        live = self._live.get(item)
        if live is not None and live[0] == key:
            return
        self._serial += 1
        self._live[item] = (key, self._serial)
        heapq.heappush(self._heap, (key, item, self._serial))
        self._compact()

    def discard(self, item: str) -> None:
        if self._live.pop(item, None) is not None:
            self._compact()

    def first(self) -> tuple[float, str] | None:
        heap = self._heap
        while heap:
            key, item, serial = heap[0]
            if self._live.get(item) == (key, serial):
                return key, item
            heapq.heappop(heap)
        return None

    def pop(self) -> tuple[float, str] | None:
        top = self.first()
        if top is not None:
            heapq.heappop(self._heap)
            del self._live[top[1]]
        return top

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(key, item, serial) for item, (key, serial) in self._live.items()]
            heapq.heapify(self._heap)


class JobReady:
    """The hot jobs as dispatch reads them (a `schedule_policy.Queues`).

    `at(now)` moves the queued jobs whose back-off ended by `now` to their
    repository's ready queue; the reads after it answer as of `now`.
    """

    def __init__(self) -> None:
        self._queued: dict[str, Job] = {}
        self._by_held: dict[str, dict[str, set[str]]] = {}
        self._ready: dict[str, _Heap] = {}
        self._waiting = _Heap()
        self._running: dict[str, str] = {}
        self._running_in: dict[str, int] = {}
        self._pauses: dict[str, _Heap] = {}
        self._now = float("-inf")

    def set(self, job: Job, *, now: float) -> None:
        """`job` is hot in this state (it was in another one, or not at all)."""
        self._unqueue(job.id, keep=job if job.status == QUEUED else None)
        if job.status == QUEUED:
            self._queued[job.id] = job
            self._by_held.setdefault(job.repo, {}).setdefault(job.held, set()).add(job.id)
            if job.available_at <= now:
                self._waiting.discard(job.id)
                self._ready.setdefault(job.repo, _Heap()).put(job.id, job.enqueued_at)
            else:
                self._unready(job.id, job.repo)
                self._waiting.put(job.id, job.available_at)
        self._set_running(job.id, job.repo if job.status == RUNNING else "")
        pauses = self._pauses.get(job.repo)
        if job.repo_paused_until > 0:
            self._pauses.setdefault(job.repo, _Heap()).put(job.id, -job.repo_paused_until)
        elif pauses is not None:
            _discard(self._pauses, job.repo, pauses, job.id)

    def unset(self, job: Job) -> None:
        """`job` left the hot set."""
        self._unqueue(job.id, keep=None)
        self._set_running(job.id, "")
        pauses = self._pauses.get(job.repo)
        if pauses is not None:
            _discard(self._pauses, job.repo, pauses, job.id)

    def at(self, now: float) -> JobReady:
        """Ready as of `now`: the queued jobs whose back-off ended join their repository's queue."""
        self._now = now
        while (top := self._waiting.first()) is not None and top[0] <= now:
            self._waiting.pop()
            job = self._queued[top[1]]
            self._ready.setdefault(job.repo, _Heap()).put(job.id, job.enqueued_at)
        return self

    def queued_repos(self) -> list[str]:
        """The repositories with queued jobs (ready or backing off)."""
        return list(self._by_held)

    def stale_holds(self, held: Mapping[str, str]) -> list[Job]:
        """The queued jobs whose `held` mark is not their repository's reason in `held`.

        Oldest first; O(repositories) plus the jobs returned.
        """
        stale: list[Job] = []
        for repo, marks in self._by_held.items():
            why = held.get(repo, "")
            for mark, ids in marks.items():
                if mark != why:
                    stale.extend(self._queued[i] for i in ids)
        return sorted(stale, key=lambda j: (j.enqueued_at, j.id))

    def ready_repos(self) -> list[str]:
        return list(self._ready)

    def first_ready(self, repo: str, count: int) -> list[Job]:
        heap = self._ready.get(repo)
        taken: list[Job] = []
        while heap is not None and len(taken) < count and (top := heap.pop()) is not None:
            job = self._queued[top[1]]
            if job.available_at > self._now:
                # Ready as of a later time than asked (the clock went back): not yet.
                self._waiting.put(job.id, job.available_at)
            else:
                taken.append(job)
        for job in taken:
            self._ready[repo].put(job.id, job.enqueued_at)
        if heap is not None and not heap:
            del self._ready[repo]
        return taken

    def running_in(self, repo: str) -> int:
        return self._running_in.get(repo, 0)

    def running_total(self) -> int:
        return len(self._running)

    def paused_until(self, repo: str) -> float:
        pauses = self._pauses.get(repo)
        top = pauses.first() if pauses is not None else None
        return -top[0] if top is not None else 0.0

    def _unqueue(self, job_id: str, *, keep: Job | None) -> None:
        """Take the job out of the queued indexes (its heap entries too unless `keep`)."""
        old = self._queued.pop(job_id, None)
        if old is None:
            return
        marks = self._by_held[old.repo]
        _discard(marks, old.held, marks[old.held], job_id)
        if not marks:
            del self._by_held[old.repo]
        if keep is None or keep.repo != old.repo:
            self._waiting.discard(job_id)
            self._unready(job_id, old.repo)

    def _unready(self, job_id: str, repo: str) -> None:
        heap = self._ready.get(repo)
        if heap is not None:
            _discard(self._ready, repo, heap, job_id)

    def _set_running(self, job_id: str, repo: str) -> None:
        """Count the job running in `repo` ("": not running)."""
        old = self._running.pop(job_id, "")
        if old:
            left = self._running_in[old] - 1
            if left:
                self._running_in[old] = left
            else:
                del self._running_in[old]
        if repo:
            self._running[job_id] = repo
            self._running_in[repo] = self._running_in.get(repo, 0) + 1


class _Group(Protocol):
    def discard(self, item: str, /) -> None: ...

    def __len__(self) -> int: ...


def _discard(index: dict[str, G], key: str, group: G, item: str) -> None:
    """Take `item` out of `index[key]` (`group`), and the key out once its group is empty."""
    group.discard(item)
    if not group:
        del index[key]
