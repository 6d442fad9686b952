"""Pure scheduling decisions of the QueueWorker: which queued jobs start now, which wait.

Two forms of each decision give the same answer:

- over a plain mapping of jobs (`schedule`, `held_repos`, `repo_pauses`,
  `next_wakeup`): a full pass, the reference the tests compare against;
- over per-repository queues kept as jobs change (`pick`, `held_of`, a `Queues`
  such as `actors.job_ready.JobReady`): what the QueueWorker runs after every
  message, so a backlog of queued jobs costs a dispatch nothing while no slot is free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from actors import usage_policy
from actors.usage_policy import Ledger
from conveyor.config import QueueConfig
from conveyor.pipeline import JOB_QUEUED, JOB_RUNNING

if TYPE_CHECKING:
    from actors.queue_policy import Job


class Queues(Protocol):
    """The queued and running jobs per repository, as `pick` reads them."""

    def ready_repos(self) -> Iterable[str]:
        """Repositories with at least one queued job whose back-off passed (maybe more)."""
        ...

    def first_ready(self, repo: str, count: int) -> Sequence[Job]:
        """Up to `count` of the repository's ready queued jobs, oldest `(enqueued_at, id)` first."""
        ...

    def running_in(self, repo: str) -> int:
        """How many of the repository's jobs run."""
        ...

    def running_total(self) -> int:
        """How many jobs run in all."""
        ...

    def paused_until(self, repo: str) -> float:
        """Until when the model API's refusal holds the repository's queued jobs back."""
        ...


def pick(
    queues: Queues, *, now: float, cfg: QueueConfig, held: Mapping[str, str] | None = None
) -> list[str]:
    """`schedule`'s choice, read from per-repository queues.

    A repository can get at most as many jobs as it has room for (its own limit,
    and the free slots), so only that many of its first ready jobs are looked at;
    each round compares the repositories' first jobs only. With no slot free it
    looks at nothing.
    """
    free = cfg.max_concurrency - queues.running_total()
    if free <= 0:
        return []
    running: dict[str, int] = {}
    ready: dict[str, deque[Job]] = {}
    for repo in queues.ready_repos():
        if repo in (held or {}) or queues.paused_until(repo) > now:
            continue
        busy = queues.running_in(repo)
        room = min(free, cfg.per_repo_concurrency - busy)
        first = queues.first_ready(repo, room) if room > 0 else ()
        if first:
            ready[repo], running[repo] = deque(first), busy
    picked: list[str] = []
    while free > 0 and ready:
        repo = min(ready, key=lambda r: (running[r], ready[r][0].enqueued_at, r))
        picked.append(ready[repo].popleft().id)
        running[repo] += 1
        free -= 1
        if not ready[repo] or running[repo] >= cfg.per_repo_concurrency:
            del ready[repo]
    return picked


def schedule(
    jobs: Mapping[str, Job],
    *,
    now: float,
    cfg: QueueConfig,
    held: Mapping[str, str] | None = None,
) -> list[str]:
    """Pick queued jobs to claim now: global and per-repo limits, fair across repositories.

    Repositories in `held` (over their daily ceiling) start nothing.

    Round-robin by repository: the repository with the fewest running jobs goes
    first (ties: whose oldest ready job waited longest), so a busy or stuck
    repository never starves another.
    """
    running: dict[str, int] = {}
    ready: dict[str, list[Job]] = {}
    paused = repo_pauses(jobs.values())
    for job in jobs.values():
        if job.status == JOB_RUNNING:
            running[job.repo] = running.get(job.repo, 0) + 1
        elif (
            job.status == JOB_QUEUED
            and job.available_at <= now
            and paused.get(job.repo, 0) <= now
            and job.repo not in (held or {})
        ):
            ready.setdefault(job.repo, []).append(job)
    free = cfg.max_concurrency - sum(running.values())
    for queue in ready.values():
        queue.sort(key=lambda j: (j.enqueued_at, j.id))
    picked: list[str] = []
    while free > 0:
        candidates = [
            repo
            for repo, queue in ready.items()
            if queue and running.get(repo, 0) < cfg.per_repo_concurrency
        ]
        if not candidates:
            break
        repo = min(candidates, key=lambda r: (running.get(r, 0), ready[r][0].enqueued_at, r))
        job = ready[repo].pop(0)
        picked.append(job.id)
        running[repo] = running.get(repo, 0) + 1
        free -= 1
    return picked


def next_wakeup(jobs: Mapping[str, Job], *, now: float) -> float | None:
    """Earliest `available_at` in the future among queued jobs (to schedule a retry)."""
    paused = repo_pauses(jobs.values())
    times = [
        max(j.available_at, paused.get(j.repo, 0.0))
        for j in jobs.values()
        if j.status == JOB_QUEUED
    ]
    return min((t for t in times if t > now), default=None)


def repo_pauses(jobs: Iterable[Job]) -> dict[str, float]:
    """Per repository, until when the model API's refusal holds its queued jobs back."""
    paused: dict[str, float] = {}
    for job in jobs:
        if job.repo_paused_until > paused.get(job.repo, 0.0):
            paused[job.repo] = job.repo_paused_until
    return paused


def held_repos(jobs: Iterable[Job], ledger: Ledger, cfg: QueueConfig) -> dict[str, str]:
    """Repositories with queued jobs that are over their daily ceiling, and why."""
    if cfg.max_repo_usd_per_day <= 0 and cfg.max_repo_tokens_per_day <= 0:
        return {}
    return held_of({job.repo for job in jobs if job.status == JOB_QUEUED}, ledger, cfg)


def held_of(repos: Iterable[str], ledger: Ledger, cfg: QueueConfig) -> dict[str, str]:
    """`held_repos`, given the repositories with queued jobs rather than the jobs."""
    if cfg.max_repo_usd_per_day <= 0 and cfg.max_repo_tokens_per_day <= 0:
        return {}
    held: dict[str, str] = {}
    for repo in repos:
        why = usage_policy.over_daily(ledger, repo, cfg)
        if why:
            held[repo] = why
    return held
