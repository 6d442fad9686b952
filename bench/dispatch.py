"""Dispatch against a backlog: what the QueueWorker's dispatch costs per message.

A backlog of queued jobs is normal (thousands of items submitted at once, or no
launcher up). For each size N, N queued jobs on 4 repositories and
`queue.max_concurrency` running ones (no slot free, the realistic backlog case):

- before: the full pass the QueueWorker ran after every message (`held_repos`,
  `hold` and `schedule` over every hot job), CPU µs per dispatch;
- now: the same decisions from the per-repository index (`held_of`,
  `stale_holds` + `hold`, `pick`), CPU µs per dispatch, and per index change
  (one more queued job put, which every `JobRequested` costs on top);
- floor: one dict lookup on the hot set, in a loop, µs per lookup.

With `--actor`, also the real QueueWorker on a fresh nats-server with the same
jobs in KV: CPU ms of this process per `JobRequested` (stored, dispatched, nothing
launches). Run it from another checkout to measure that checkout's worker:
`CONVEYOR_ROOT=/path/to/checkout .venv/bin/python bench/dispatch.py --actor`.

    .venv/bin/python bench/dispatch.py [--sizes 100,1000,10000,50000] [--actor]

Printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script: the checkout's root (or CONVEYOR_ROOT's), for the project and test helpers.
sys.path.insert(0, os.environ.get("CONVEYOR_ROOT") or str(Path(__file__).resolve().parent.parent))

from actors.queue_policy import QUEUED, RUNNING, Job
from conveyor.config import QueueConfig

# What a `JobRequested` carries of the job it asks for, besides its id.
REQUESTED = ("task_id", "repo", "stage", "role", "visit", "branch", "title")
REPOS = 4
ASK_S = 300.0


def make_job(n: int, status: str, at: float) -> Job:
    return Job(
        id=f"Q-{n}.development.1.work",
        task_id=f"Q-{n}",
        repo=f"repo{n % REPOS}",
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/Q-{n}",
        title=f"queued {n}",
        status=status,
        attempts=int(status == RUNNING),
        enqueued_at=at + n * 1e-3,
        available_at=at,
        claimed_at=at if status == RUNNING else None,
    )


def backlog(size: int, cfg: QueueConfig, at: float) -> list[Job]:
    """`size` queued jobs, and running ones filling every slot."""
    running = [make_job(size + n, RUNNING, at) for n in range(cfg.max_concurrency)]
    return [make_job(n, QUEUED, at) for n in range(size)] + running


def per_call_us(call: Callable[[], object], *, budget_s: float = 0.5) -> float:
    """CPU µs per call of `call`, repeated for about `budget_s` of CPU (at least 3 times)."""
    count, spent = 0, 0.0
    start = time.process_time()
    while count < 3 or spent < budget_s:
        call()
        count += 1
        spent = time.process_time() - start
    return 1e6 * spent / count


def measure_policy(size: int, cfg: QueueConfig) -> dict[str, float]:
    from actors import queue_policy as policy
    from actors.job_index import JobIndex
    from actors.usage_policy import Ledger
    from conveyor.clock import SystemClock

    now = SystemClock().now()
    index = JobIndex()
    index.load(backlog(size, cfg, now), now=now)
    hot, ready, ledger = index.hot, index.ready, Ledger()

    def before() -> None:
        held = policy.held_repos(hot.values(), ledger, cfg)
        policy.hold(hot.values(), held, ledger, now=now)
        if policy.schedule(hot, now=now, cfg=cfg, held=held):
            raise RuntimeError("a slot was free")

    def after() -> None:
        held = policy.held_of(ready.queued_repos(), ledger, cfg)
        policy.hold(ready.stale_holds(held), held, ledger, now=now)
        if policy.pick(ready.at(now), now=now, cfg=cfg, held=held):
            raise RuntimeError("a slot was free")

    added = iter(range(size + cfg.max_concurrency, 10**9))

    def put() -> None:
        index.put(make_job(next(added), QUEUED, now), previous=None, now=now)

    some = next(iter(hot))

    def floor() -> None:
        for _ in range(1000):
            hot.get(some)

    return {
        "before: full pass µs": per_call_us(before),
        "now: index µs": per_call_us(after),
        "now: index put µs": per_call_us(put, budget_s=0.1),
        "floor: dict lookup µs": per_call_us(floor) / 1000,
    }


def measure_actor(size: int, messages: int) -> dict[str, float]:
    """CPU ms per `JobRequested` of the real QueueWorker over the backlog in KV."""
    from bus import subjects
    from bus.bridge import Bus
    from bus.messages import JobRequested
    from bus.server import EmbeddedNats
    from conveyor import config as config_mod
    from conveyor.app import wiring
    from conveyor.clock import SystemClock
    from tests.kv_raw import put_many

    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="dispatch-") as scratch:
        server = EmbeddedNats(Path(scratch) / "nats")
        server.start()
        bus = Bus.connect(server.url, name="bench-dispatch")
        worker: Any = None
        try:
            bus.setup()
            cfg = config_mod.load(
                env={},
                overrides={"data_dir": str(Path(scratch) / "data"), "nats": {"url": server.url}},
            )
            jobs = backlog(size, cfg.queue, clock.now())
            put_many(bus, subjects.BUCKET_JOBS, {job.id: job for job in jobs})
            ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
            spec = wiring.SPECS["queue_worker"]
            status = spec.status
            if status is None:
                raise RuntimeError("the queue worker answers no status")
            worker = wiring.start_actor(spec, ctx)
            worker.ask(status(), timeout=ASK_S)

            def queued() -> int:
                return int(worker.ask(status(), timeout=ASK_S)["counts"].get("queued", 0))

            start = time.process_time()
            for i in range(messages):
                new = make_job(len(jobs) + i, QUEUED, clock.now())
                req = JobRequested(job_id=new.id, **{f: getattr(new, f) for f in REQUESTED})
                bus.publish(subjects.JOBS_REQUESTED, req, msg_id=f"bench:{new.id}")
            deadline = clock.monotonic() + ASK_S
            while queued() < size + messages:
                if clock.monotonic() > deadline:
                    raise TimeoutError("the requests were not all handled")
                clock.sleep(0.02)
            return {
                "actor: cpu ms per JobRequested": 1000 * (time.process_time() - start) / messages
            }
        finally:
            if worker is not None:
                worker.stop(block=True, timeout=30)
            bus.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,50000")
    parser.add_argument("--actor", action="store_true", help="also the real QueueWorker on NATS")
    parser.add_argument("--actor-sizes", default="100,1000,10000")
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    from conveyor import logs

    logs.configure(level="warning")
    cfg = QueueConfig()
    rows: dict[str, dict[int, float]] = {}
    sizes = [int(s) for s in args.sizes.split(",")]
    if not os.environ.get("CONVEYOR_ROOT"):
        for size in sizes:
            for row, value in measure_policy(size, cfg).items():
                rows.setdefault(row, {})[size] = value
    if args.actor:
        for size in (int(s) for s in args.actor_sizes.split(",")):
            for row, value in measure_actor(size, args.messages).items():
                rows.setdefault(row, {})[size] = value
    columns = sorted({size for values in rows.values() for size in values})
    print(f"{'queued jobs (all slots busy)':<34}" + "".join(f"{n:>12,}" for n in columns))
    for row, values in rows.items():
        cells = "".join(f"{values[n]:>12.3f}" if n in values else f"{'':>12}" for n in columns)
        print(f"{row:<34}{cells}")


if __name__ == "__main__":
    main()
