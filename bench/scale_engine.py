"""The StageEngine's start-up and memory alone, at N stored finished tasks.

`scale.py` times control as a whole, and there the QueueWorker's load of every job
(9 per task) dominates. This bench isolates the task side. It writes N finished
tasks (each with 18 history entries, about 4 KB, like a real finished item) straight
into `conveyor_tasks` of an embedded nats-server, with no checkpoint, as an older
version leaves them. Then it starts a StageEngine in a fresh child process three
times:

1. **upgrade**: no checkpoint, so the engine reads every task once and writes one;
2. **restart**: from the checkpoint (the figure the restart target is about);
3. **restart after writes**: after another 1 % of tasks were written behind the
   engine's back, which it reads as writes since its checkpoint.

Each child prints the engine's start time (from `on_start` to the first answered
overview), its process RSS, the overview's latency and a page of 100 (p50/p99 over
100 requests), and the hot and settled counts.

    .venv/bin/python bench/scale_engine.py [--tasks 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors

from actors.task_policy import HistoryEntry, Task
from bus import subjects
from bus.bridge import Bus
from bus.server import EmbeddedNats
from conveyor.clock import SystemClock

CLOCK = SystemClock()
STAGES = ("created", "analysis", "architecture", "development", "review", "testing", "done")


def _finished(task_id: str, at: float) -> bytes:
    history = [
        HistoryEntry(
            at=at + n,
            old=STAGES[n % 6],
            new=STAGES[n % 6 + 1],
            cause=f"gate passed: {'all required documents present and CI green ' * 2}",
            cost_usd=0.01,
            input_tokens=1200,
            output_tokens=300,
        )
        for n in range(18)
    ]
    task = Task(
        id=task_id,
        repo="repo1",
        title=f"Scale copy {task_id}: add a feature with a reasonably long title",
        description="A description of the work item. " * 15,
        branch=f"feature/{task_id}-scale-copy",
        stage="done",
        step="done",
        visits={s: 1 for s in STAGES},
        job_id=f"{task_id}.deploy-production.1.work",
        job_status="done",
        last_reason="deployed",
        head_sha="a" * 40,
        merge_sha="b" * 40,
        created_at=at,
        updated_at=at + 18,
        history=history,
    )
    return msgspec.json.encode(task)


async def _write(url: str, first: int, count: int) -> None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(subjects.BUCKET_TASKS)
        semaphore = asyncio.Semaphore(256)

        async def one(n: int) -> None:
            async with semaphore:
                for attempt in range(5):
                    try:
                        await kv.put(f"R1-{n}", _finished(f"R1-{n}", 1_700_000_000.0 + n))
                    except nats.errors.TimeoutError:
                        # A loaded machine: the put may have landed; a put again is harmless.
                        if attempt == 4:
                            raise
                    else:
                        return

        await asyncio.gather(*(one(n) for n in range(first, first + count)))
    finally:
        await nc.close()


def _pcts(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1000:.1f}/{p99 * 1000:.1f}"


def child(url: str, data: str) -> None:
    """Start one StageEngine, measure, print one JSON line."""
    from actors.stage_engine import StatusQuery
    from actors.task_index import PageRequest
    from conveyor import config as config_mod
    from conveyor.app import wiring

    cfg = config_mod.load(env={}, overrides={"data_dir": data, "nats": {"url": url}})
    bus = Bus.connect(url, name="scale-engine")
    bus.setup()
    ctx = wiring.Context(cfg, bus, CLOCK, forge=object())  # type: ignore[arg-type]
    started = CLOCK.monotonic()
    ref = wiring.start_actor(wiring.SPECS["stage_engine"], ctx)
    overview = ref.ask(StatusQuery(kind="overview"), timeout=600)
    start_s = CLOCK.monotonic() - started
    times: dict[str, list[float]] = {"overview": [], "page": []}
    for what, query in (
        ("overview", StatusQuery(kind="overview")),
        ("page", StatusQuery(kind="tasks", page=PageRequest(state="all", limit=100))),
    ):
        for _ in range(100):
            t0 = CLOCK.monotonic()
            ref.ask(query, timeout=60)
            times[what].append(CLOCK.monotonic() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{os.getpid()}/status") as f:
        now_mb = next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024
    print(
        json.dumps(
            {
                "start_s": round(start_s, 2),
                "tasks": overview["tasks"],
                "finished": overview["by_state"]["finished"],
                "rss_mb": round(now_mb),
                "peak_rss_mb": round(rss_mb),
                "overview_ms": _pcts(times["overview"]),
                "page_ms": _pcts(times["page"]),
            }
        ),
        flush=True,
    )
    ref.stop(block=True, timeout=30)
    bus.close()


def _run_child(url: str, data: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", url, str(data)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the engine's child failed: {out.stderr[-3000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    found: dict[str, Any] = json.loads(line)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="10000,100000")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    header = f"{'tasks':>7} {'run':<22} {'start s':>8} {'RSS MB':>7} {'peak MB':>8} "
    print(header + f"{'overview p50/p99 ms':>20} {'page p50/p99 ms':>16}", flush=True)
    for size in sorted(int(s) for s in args.tasks.split(",")):
        root = Path(tempfile.mkdtemp(prefix="conveyor-bench-engine-"))
        server = EmbeddedNats(root / "nats")
        server.start()
        try:
            url = server.url
            bus = Bus.connect(url, name="scale-engine-setup")
            bus.setup()  # the buckets, as a node's start makes them
            bus.close()
            started = CLOCK.monotonic()
            asyncio.run(_write(url, 1, size))
            wrote = CLOCK.monotonic() - started
            print(f"{size:>7} wrote {size} finished tasks in {wrote:.1f} s", flush=True)
            runs = [("upgrade (reads all once)", 0), ("restart", 0), ("restart after 1 %", 1)]
            for name, extra in runs:
                if extra:
                    asyncio.run(_write(url, size + 1, max(1, size // 100)))
                r = _run_child(url, root / "data")
                print(
                    f"{r['tasks']:>7} {name:<22} {r['start_s']:>8.2f} {r['rss_mb']:>7} "
                    f"{r['peak_rss_mb']:>8} {r['overview_ms']:>20} {r['page_ms']:>16}",
                    flush=True,
                )
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
