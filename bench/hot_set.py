"""The hot set: what finished jobs and runs cost the QueueWorker and Launcher at rest.

For each size N, N finished jobs and N finished, reported runs are written straight
into a fresh nats-server's buckets (as a long-running install leaves them). Then:

- restart to ready: `load_all` of each bucket alone, and each actor's start until
  its status answers (the start loads its bucket);
- per tick: CPU seconds the QueueWorker and the Launcher spend on one `Tick`
  (many ticks sent back to back, then one status ask);
- per message: CPU seconds per `JobRequested` the QueueWorker handles (stores it,
  dispatches; nothing launches, so the queue grows by one per message);
- idle CPU: the whole process's CPU over a few seconds with both actors ticked every
  `queue.tick_s` (1 s by default), as a node does.

    .venv/bin/python bench/hot_set.py [--sizes 1000,10000] [--messages 200] [--idle-s 10]

The per-tick and per-message figures should not grow with N. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script: the checkout's root, for the shared test helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.launcher_policy import FINISHED as RUN_FINISHED
from actors.launcher_policy import Run
from actors.queue_policy import DONE, Job
from bus import subjects
from bus.bridge import Bus
from bus.messages import JobRequested, Tick
from bus.server import EmbeddedNats
from conveyor import config as config_mod
from conveyor import logs
from conveyor.app import wiring
from conveyor.clock import SystemClock
from tests.kv_raw import put_many

LAUNCHER = "bench-hot-set"
ASK_S = 120.0
CLOCK = SystemClock()


def finished_job(n: int, at: float) -> Job:
    return Job(
        id=f"OLD-{n}.development.1.work",
        task_id=f"OLD-{n}",
        repo=f"repo{n % 4}",
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/OLD-{n}",
        title=f"old {n}",
        status=DONE,
        attempts=1,
        enqueued_at=at,
        claimed_at=at,
        finished_at=at,
        cost_usd=0.01,
    )


def finished_run(n: int, at: float) -> Run:
    return Run(
        id=f"OLD-{n}.development.1.work.1",
        job_id=f"OLD-{n}.development.1.work",
        attempt=1,
        task_id=f"OLD-{n}",
        repo=f"repo{n % 4}",
        role="developer",
        stage="development",
        visit=1,
        branch=f"conveyor/OLD-{n}",
        host="bench",
        launcher=LAUNCHER,
        status=RUN_FINISHED,
        exit_code=0,
        finished_at=at,
        reported=True,
    )


def cpu_per(count: int, send: Any, settle: Any) -> float:
    """CPU seconds of this process per item: `send` each of `count`, then `settle` once."""
    before = time.process_time()
    for i in range(count):
        send(i)
    settle()
    return (time.process_time() - before) / count


def measure(size: int, messages: int, idle_s: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hot-set-") as scratch:
        server = EmbeddedNats(Path(scratch) / "nats")
        server.start()
        bus = Bus.connect(server.url, name="bench-hot-set")
        handles: list[Any] = []
        try:
            bus.setup()
            now = CLOCK.now()
            put_many(
                bus,
                subjects.BUCKET_JOBS,
                {f"OLD-{n}.development.1.work": finished_job(n, now) for n in range(size)},
            )
            put_many(
                bus,
                subjects.BUCKET_RUNS,
                {f"OLD-{n}.development.1.work.1": finished_run(n, now) for n in range(size)},
            )
            for bucket, kind in ((subjects.BUCKET_JOBS, Job), (subjects.BUCKET_RUNS, Run)):
                start = time.perf_counter()
                loaded = bus.store(bucket, kind).load_all()
                out[f"load_all {bucket} s"] = time.perf_counter() - start
                if len(loaded) != size:
                    raise RuntimeError(f"{bucket}: loaded {len(loaded)} of {size}")
            cfg = config_mod.load(
                env={},
                overrides={
                    "data_dir": str(Path(scratch) / "data"),
                    "nats": {"url": server.url},
                    "launcher": {"name": LAUNCHER},
                },
            )
            # No run reaches the forge here: a placeholder stands in for it.
            ctx = wiring.Context(cfg, bus, CLOCK, forge=object())  # type: ignore[arg-type]
            started: dict[str, Any] = {}
            for name in ("queue_worker", "launcher"):
                spec = wiring.SPECS[name]
                start = time.perf_counter()
                # The launcher without its order feed: nothing the worker claims launches.
                ref = (
                    wiring.start_actor(spec, ctx)
                    if name == "queue_worker"
                    else wiring.incarnate(spec, ctx)
                )
                handles.append(ref)
                status = spec.status
                if status is None:
                    raise RuntimeError(f"{name} answers no status")
                ref.ask(status(), timeout=ASK_S)
                out[f"start {name} s"] = time.perf_counter() - start
                started[name] = (ref, status)
            for name, (ref, status) in started.items():
                out[f"cpu ms per tick {name}"] = 1000 * cpu_per(
                    messages,
                    lambda _i, r=ref: r.tell(Tick(now=CLOCK.now())),
                    lambda r=ref, s=status: r.ask(s(), timeout=ASK_S),
                )
            worker, worker_status = started["queue_worker"]

            def request(i: int) -> None:
                req = JobRequested(
                    job_id=f"NEW-{i}.development.1.work",
                    task_id=f"NEW-{i}",
                    repo=f"repo{i % 4}",
                    stage="development",
                    role="developer",
                    visit=1,
                    branch=f"conveyor/NEW-{i}",
                    title="new",
                )
                bus.publish(subjects.JOBS_REQUESTED, req, msg_id=f"bench:{i}")

            def handled() -> None:
                deadline = CLOCK.monotonic() + ASK_S
                while CLOCK.monotonic() < deadline:
                    counts = worker.ask(worker_status(), timeout=ASK_S)["counts"]
                    if counts.get("queued", 0) + counts.get("running", 0) >= messages:
                        return
                    CLOCK.sleep(0.02)
                raise TimeoutError("the requests were not all handled")

            out["cpu ms per JobRequested"] = 1000 * cpu_per(messages, request, handled)
            wall, before = time.perf_counter(), time.process_time()
            end = wall + idle_s
            while time.perf_counter() < end:
                for ref, _status in started.values():
                    ref.tell(Tick(now=CLOCK.now()))
                CLOCK.sleep(cfg.queue.tick_s)
            out["idle cpu %"] = 100 * (time.process_time() - before) / (time.perf_counter() - wall)
        finally:
            for ref in handles:
                ref.stop(block=True, timeout=30)
            bus.close()
            server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    logs.configure(level="warning")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {size: measure(size, args.messages, args.idle_s) for size in sizes}
    rows = list(next(iter(results.values())))
    print(f"{'finished jobs and runs':<32}" + "".join(f"{size:>12,}" for size in sizes))
    for row in rows:
        print(f"{row:<32}" + "".join(f"{results[size][row]:>12.3f}" for size in sizes))


if __name__ == "__main__":
    main()
