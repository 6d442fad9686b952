"""Dispatch from per-repository queues kept as jobs change picks what a full pass picks.

The reference is the full pass (`schedule`, `held_repos`, `repo_pauses`, `hold`)
over the hot jobs, as the QueueWorker ran it; the index form is what it runs now
(`JobIndex` with its `JobReady`, `pick`, `held_of`, `stale_holds`). A seeded
random walk of job changes, with a fake clock, compares them at every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from actors import queue_policy as qp
from actors import schedule_policy as sp
from actors import usage_policy as up
from actors.job_index import JobIndex
from actors.job_ready import JobReady
from conveyor.config import QueueConfig

pytestmark = pytest.mark.timeout(60)

REPOS = ("a", "b", "c", "d", "e")
REASONS = ("", "", "over today's ceiling", "over today's tokens")


def job(job_id: str, repo: str = "a", *, at: float = 0.0, **fields: Any) -> qp.Job:
    base = qp.Job(
        id=job_id,
        task_id=f"T-{job_id}",
        repo=repo,
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/T-{job_id}",
        title=job_id,
        enqueued_at=at,
        available_at=at,
    )
    return msgspec.structs.replace(base, **fields)


class Both:
    """Every job ever changed (the reference reads them all) and the index of the hot ones."""

    def __init__(self) -> None:
        self.jobs: dict[str, qp.Job] = {}
        self.index = JobIndex()
        self.now = 0.0

    def put(self, new: qp.Job) -> qp.Job:
        self.index.put(new, previous=self.jobs.get(new.id), now=self.now)
        self.jobs[new.id] = new
        return new

    def change(self, old: qp.Job, **fields: Any) -> qp.Job:
        return self.put(msgspec.structs.replace(old, **fields))

    def of(self, status: str) -> list[qp.Job]:
        return sorted((j for j in self.jobs.values() if j.status == status), key=lambda j: j.id)


def compare(both: Both, cfg: QueueConfig, held: dict[str, str], now: float) -> list[str]:
    """Assert the index answers what the full pass answers as of `now`; the picks."""
    hot = both.index.hot
    assert {i for i, j in both.jobs.items() if j.status not in qp.FINISHED} <= set(hot)
    ready = both.index.ready.at(now)
    expected = sp.schedule(hot, now=now, cfg=cfg, held=held)
    assert sp.pick(ready, now=now, cfg=cfg, held=held) == expected
    queued = {j.repo for j in both.jobs.values() if j.status == qp.QUEUED}
    assert sorted(ready.queued_repos()) == sorted(queued)
    running = [j for j in both.jobs.values() if j.status == qp.RUNNING]
    assert ready.running_total() == len(running)
    for repo in REPOS:
        assert ready.running_in(repo) == sum(j.repo == repo for j in running)
        assert ready.paused_until(repo) == sp.repo_pauses(hot.values()).get(repo, 0.0)
    # A hold re-marks exactly the jobs the full pass would.
    stale = {j.id for j in ready.stale_holds(held)}
    full = qp.hold(list(hot.values()), held, up.Ledger(day="d"), now=now)
    assert stale == {j.id for j in full.jobs}
    for marked in full.jobs:
        both.put(marked)
    assert ready.stale_holds(held) == []
    return expected


def step(both: Both, rng: random.Random, serial: int) -> None:
    """One random change of a job, as the QueueWorker's decisions make them."""
    now = both.now
    queued, running = both.of(qp.QUEUED), both.of(qp.RUNNING)
    moves: list[Callable[[], object]] = [
        lambda: both.put(job(f"j{serial}", rng.choice(REPOS), at=now)),
        lambda: both.put(job(f"j{serial}", rng.choice(REPOS), at=now - rng.uniform(0, 50))),
    ]
    if queued:
        q = rng.choice(queued)
        moves += [
            lambda: both.put(qp.claim(q, now=now).jobs[0]),
            lambda: both.change(q, status=qp.CANCELLED, finished_at=now),
            # Parked for a lease, woken again.
            lambda: both.change(q, available_at=now + rng.uniform(0.1, 20)),
            lambda: both.change(q, available_at=now),
        ]
    if running:
        r = rng.choice(running)
        back = {"claimed_at": None, "status": qp.QUEUED}
        pause = now + rng.uniform(0.1, 30)
        moves += [
            lambda: both.change(r, status=qp.DONE, finished_at=now),
            lambda: both.change(r, status=qp.FAILED, finished_at=now),
            lambda: both.change(r, **back, available_at=now + rng.uniform(0.1, 10)),
            # Turned away by the model API: the repository waits.
            lambda: both.change(r, **back, available_at=pause, repo_paused_until=pause),
            lambda: both.change(r, status=qp.DONE, finished_at=now, repo_paused_until=pause),
        ]
    rng.choice(moves)()


@pytest.mark.parametrize("seed", range(12))
def test_a_random_walk_of_job_changes_picks_as_the_full_pass_does(seed: int):
    rng = random.Random(seed)
    cfg = QueueConfig(max_concurrency=rng.randint(1, 6), per_repo_concurrency=rng.randint(1, 3))
    both = Both()
    held: dict[str, str] = {}
    for serial in range(400):
        step(both, rng, serial)
        if rng.random() < 0.1:
            held = {r: rng.choice(REASONS[1:]) for r in REPOS if rng.random() < 0.3}
        # The clock mostly moves on, sometimes stands still, now and then goes back a little.
        both.now += rng.choice((0.0, 0.5, 1.0, 3.0, 10.0, -0.5))
        if rng.random() < 0.2:
            both.index.expire(both.now)
        picked = compare(both, cfg, held, both.now)
        if rng.random() < 0.7:
            for job_id in picked:
                both.put(qp.claim(both.jobs[job_id], now=both.now).jobs[0])


def test_each_repository_is_read_by_its_first_jobs_only():
    """With no slot free nothing is read; with some, at most a repository's room."""
    asked: list[tuple[str, int]] = []

    class Spy(JobReady):
        def first_ready(self, repo: str, count: int) -> list[qp.Job]:
            asked.append((repo, count))
            return super().first_ready(repo, count)

    index = JobIndex()
    index.ready = Spy()
    for n in range(200):
        index.put(job(f"q{n}", "ab"[n % 2], at=float(n)), previous=None, now=300.0)
    full = QueueConfig(max_concurrency=2, per_repo_concurrency=2)
    busy = job("r0", "c", status=qp.RUNNING)
    index.put(busy, previous=None, now=300.0)
    index.put(job("r1", "c", status=qp.RUNNING), previous=None, now=300.0)

    assert sp.pick(index.ready.at(300.0), now=300.0, cfg=full) == []
    assert asked == []

    index.put(msgspec.structs.replace(busy, status=qp.DONE), previous=busy, now=300.0)
    assert sp.pick(index.ready.at(300.0), now=300.0, cfg=full) == ["q0"]
    assert sorted(asked) == [("a", 1), ("b", 1)]


def test_fewest_running_first_then_oldest_ready_job_then_repository_name():
    index = JobIndex()
    jobs = [
        job("a1", "a", at=1.0),
        job("a2", "a", at=2.0),
        job("b1", "b", at=5.0),
        job("c1", "c", at=5.0),
        job("d-run", "d", status=qp.RUNNING),
        job("d1", "d", at=0.0),
    ]
    for j in jobs:
        index.put(j, previous=None, now=10.0)
    cfg = QueueConfig(max_concurrency=10, per_repo_concurrency=2)
    # Idle repositories first, the oldest ready job first; b and c tie on age: by name.
    # Then a and d run one each: d's job waited longer.
    picked = sp.pick(index.ready.at(10.0), now=10.0, cfg=cfg)
    assert picked == ["a1", "b1", "c1", "d1", "a2"]
    assert picked == sp.schedule({j.id: j for j in jobs}, now=10.0, cfg=cfg)


def test_held_and_paused_repositories_start_nothing_and_back_off_ends_on_time():
    index = JobIndex()
    index.put(job("a1", "a", at=0.0), previous=None, now=0.0)
    index.put(job("b1", "b", at=0.0), previous=None, now=0.0)
    index.put(job("c1", "c", at=0.0, available_at=20.0), previous=None, now=0.0)
    pausing = job("p", "b", status=qp.DONE, repo_paused_until=15.0)
    index.put(pausing, previous=None, now=0.0)
    cfg = QueueConfig(max_concurrency=5, per_repo_concurrency=1)
    held = {"a": "over today's ceiling"}

    assert sp.pick(index.ready.at(10.0), now=10.0, cfg=cfg, held=held) == []
    assert sp.pick(index.ready.at(15.0), now=15.0, cfg=cfg, held=held) == ["b1"]
    assert sp.pick(index.ready.at(20.0), now=20.0, cfg=cfg, held=held) == ["b1", "c1"]
    # The pausing job leaves the hot set once its pause ended, and its pause with it.
    assert index.expire(20.0) == ["p"]
    assert index.ready.paused_until("b") == 0.0
    # A clock that went back sees the job backing off again.
    assert sp.pick(index.ready.at(19.0), now=19.0, cfg=cfg) == ["a1", "b1"]


def test_a_hold_touches_only_the_jobs_whose_mark_is_stale():
    index = JobIndex()
    for n in range(50):
        index.put(job(f"a{n}", "a", at=float(n)), previous=None, now=100.0)
    index.put(job("b0", "b", at=0.0), previous=None, now=100.0)
    ready = index.ready
    assert ready.stale_holds({}) == []

    held = {"a": "over today's ceiling"}
    stale = ready.stale_holds(held)
    assert [j.id for j in stale] == [f"a{n}" for n in range(50)]
    for j in stale:
        index.put(msgspec.structs.replace(j, held=held["a"]), previous=j, now=100.0)
    assert ready.stale_holds(held) == []
    # A job newly queued in a held repository is the only one marked.
    index.put(job("a50", "a", at=100.0), previous=None, now=100.0)
    assert [j.id for j in ready.stale_holds(held)] == ["a50"]


def test_held_of_the_repositories_answers_as_held_repos_of_the_jobs():
    ledger = up.record(up.Ledger(), "demo", "developer", up.Usage(cost_usd=5.0), now=0.0)
    cap = QueueConfig(max_repo_usd_per_day=1.0)
    jobs = [job("d1", "demo"), job("s1", "shop"), job("x", "other", status=qp.RUNNING)]
    assert sp.held_of(["demo", "shop"], ledger, cap) == sp.held_repos(jobs, ledger, cap)
    assert list(sp.held_of(["demo", "shop"], ledger, cap)) == ["demo"]
    assert sp.held_of(["demo"], ledger, QueueConfig()) == {}


def test_many_changes_keep_the_lazy_heaps_small():
    index = JobIndex()
    first = job("j0", "a", at=0.0)
    index.put(first, previous=None, now=0.0)
    current = first
    for n in range(5_001):
        # Parked and woken over and over: each move leaves an entry behind.
        moved = msgspec.structs.replace(current, available_at=float(n % 2) * 1e9)
        index.put(moved, previous=current, now=0.0)
        current = moved
    ready = index.ready
    heaps = [ready._waiting, *ready._ready.values()]
    assert all(len(h._heap) <= 2 * len(h) + 65 for h in heaps)
    assert sp.pick(ready.at(1.0), now=1.0, cfg=QueueConfig()) == ["j0"]
