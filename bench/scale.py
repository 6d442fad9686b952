"""SPEC §8 "Scale": Conveyor's costs against the number of stored tasks (1k, 10k, 100k).

Conveyor runs as nats-server plus the Procfile parts `control` and `launcher`
(each `conveyor up --parts ...` in its own process) with the demo agent. One demo
item is driven to `done`; its task, job, run and effect records are then copied
straight into the KV buckets (`scale_records.py`) until the store holds each size
of `--tasks` (all copies finished, each with its jobs, runs and effects). At each
size the launcher is restarted (untimed) so both parts load the copies, then:

- **restart to ready**: control gets SIGKILL and is started again; seconds until
  `conveyor.status` answers healthy;
- **latency** p50/p99 of `conveyor.status` (the overview), one task
  (`conveyor.status.task.<ID>`) and a page of 100 tasks (`conveyor.status.tasks`,
  body `{"state": "all", "limit": 100}`; a reply that is a list is the unpaged API,
  which answers every task at once, and may fail past the max payload);
- **RSS** of control, launcher and nats-server;
- **idle CPU %** of control and launcher over `--idle-s` seconds with nothing to do;
- **submit rate**: `submit_rate.py`'s one-after-another shape, the launcher held
  (killed, started again after): `--submits` submits against as many bare KV creates
  of the record a submit stores, into a bucket configured like the tasks one, from
  the same client. The submitted items are then cancelled.

One table row per size, with the SPEC §8 targets (for 100,000 stored tasks) and
PASS/MISS. Figures are printed, never asserted; every wait is bounded.

    .venv/bin/python bench/scale.py [--tasks 1000,10000] [--samples 200] [--idle-s 10]
                                    [--submits 100] [--keep]

100,000 is opt-in: `--tasks 1000,10000,100000`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bus import subjects
from conveyor.app.client import Client
from conveyor.config import load as config_load

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import submit_rate
from fleet import CLOCK, Fleet, drive, percentile, render_config, wait_ready
from scale_records import Template, read_template, write_copies

PARTS = ("control", "launcher")
T = TypeVar("T")
ITEM = "R1-1"
TARGETS = {
    "status p99 ms": 5.0,
    "page p99 ms": 10.0,
    "submit ratio": 0.8,
    "control RSS MB": 250.0,
    "restart s": 5.0,
    "idle CPU %": 1.0,
}

_OPS = {"submit ratio": "≥", "idle CPU %": "<"}


@dataclass
class Row:
    tasks: int
    restart_s: float = 0.0
    status: tuple[float, float] | None = None
    task: tuple[float, float] | None = None
    page: tuple[float, float] | None = None
    page_shape: str = ""
    rss: dict[str, float] | None = None
    idle_cpu: float = 0.0
    submit_rate: float = 0.0
    floor_rate: float = 0.0
    measured: bool = True
    failures: list[str] = field(default_factory=list)

    def verdicts(self) -> dict[str, bool]:
        rss = (self.rss or {}).get("control", float("inf"))
        page = self.page[1] if self.page else float("inf")
        ratio = self.submit_rate / self.floor_rate if self.floor_rate else 0.0
        return {
            "status p99 ms": self.status is not None and self.status[1] <= TARGETS["status p99 ms"],
            "page p99 ms": page <= TARGETS["page p99 ms"],
            "submit ratio": ratio >= TARGETS["submit ratio"],
            "control RSS MB": rss <= TARGETS["control RSS MB"],
            "restart s": self.restart_s <= TARGETS["restart s"],
            "idle CPU %": self.idle_cpu < TARGETS["idle CPU %"],
        }


def _timed(call: Callable[[], Any], samples: int) -> tuple[float, float]:
    """p50 and p99 in ms of `samples` calls, one after another."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 99)


def _page_call(client: Client, row: Row) -> Callable[[], Any]:
    def call() -> Any:
        reply = client.request(subjects.STATUS_TASKS, {"state": "all", "limit": 100})
        row.page_shape = "list (unpaged)" if isinstance(reply, list) else "page"
        return reply

    return call


def measure(
    fleet: Fleet, template: Template, ids: list[str], args: argparse.Namespace, size: int
) -> Row:
    row = Row(size)
    cluster = fleet.cluster
    client = fleet.live_client()
    # The launcher loads the copies at start (untimed). Control too: the copies were
    # written behind its back, so its first start reads them as writes since its
    # checkpoint (an upgrade's migration reads every task once, likewise untimed).
    # Then control's restart from its checkpoint is timed.
    cluster.sigkill("launcher")
    cluster.spawn("launcher")
    cluster.sigkill("control")
    cluster.spawn("control")
    started = CLOCK.monotonic()
    wait_ready(client, cluster, deadline_s=args.ready_deadline_s)
    print(f"  untimed first start of control: {CLOCK.monotonic() - started:.1f} s", flush=True)
    cluster.sigkill("control")
    cluster.spawn("control")
    try:
        row.restart_s = wait_ready(client, cluster, deadline_s=args.ready_deadline_s)
    except RuntimeError:
        # Not healthy by the deadline is a finding: keep the row, skip what needs a ready node.
        row.restart_s = float("inf")
        row.page_shape = f"not measured: not healthy within {args.ready_deadline_s:g} s"
        row.rss = fleet.rss_mb()
        row.measured = False
        print(f"  control not healthy within {args.ready_deadline_s:g} s", flush=True)
        return row
    CLOCK.sleep(1.0)  # let the parts finish what start-up left them
    copy = client.request(subjects.status_task(ids[-1]))
    if not isinstance(copy, dict) or copy.get("id") != ids[-1]:
        print(f"  warning: status of the copy {ids[-1]} answered {str(copy)[:200]}")
    else:
        print(f"  check: the copy {ids[-1]} answers, stage {copy.get('stage')!r}", flush=True)
    row.status = _attempt(
        row, "status", lambda: _timed(lambda: client.request(subjects.STATUS), args.samples)
    )
    sample = random.Random(size).choices(ids, k=args.samples)
    picks = iter(sample)
    row.task = _attempt(
        row,
        "task",
        lambda: _timed(lambda: client.request(subjects.status_task(next(picks))), args.samples),
    )
    row.page = _attempt(
        row, "page", lambda: _timed(_page_call(client, row), max(10, args.samples // 4))
    )
    row.rss = fleet.rss_mb()
    parts = {k: v for k, v in fleet.processes().items() if k in PARTS}
    before = {k: _cpu(p) for k, p in parts.items()}
    started = CLOCK.monotonic()
    CLOCK.sleep(args.idle_s)
    elapsed = CLOCK.monotonic() - started
    row.idle_cpu = sum(_cpu(p) - before[k] for k, p in parts.items()) / elapsed * 100
    rates = _attempt(row, "submit", lambda: _submit_rates(fleet, template, args, size))
    row.submit_rate, row.floor_rate = rates or (0.0, 0.0)
    return row


def _attempt(row: Row, what: str, call: Callable[[], T]) -> T | None:
    """A measurement that failed (e.g. a request timed out) is a finding: note it, go on."""
    try:
        return call()
    except Exception as exc:
        row.failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:120]}")
        print(f"  {what} failed: {exc!s:.160}", flush=True)
        return None


def _cpu(proc: Any) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _submit_rates(
    fleet: Fleet, template: Template, args: argparse.Namespace, size: int
) -> tuple[float, float]:
    """`submit_rate.py`'s one-after-another shape (the target's), launcher held meanwhile."""
    del template, size  # the floor is the record a submit stores, not a finished one
    client = fleet.live_client()
    # Without a launcher the submitted items launch no agent while the rate is measured.
    fleet.cluster.sigkill("launcher")
    try:
        pids = {"control": fleet.cluster.procs["control"].pid}
        cfg = config_load(fleet.cluster.config)
        shapes, ids = submit_rate.measure(
            fleet.url, cfg, "repo2", submits=args.submits, in_flight=1, pids=pids
        )
        for item in ids:
            client.command("cancel", {"id": item, "reason": "scale bench"})
    finally:
        fleet.cluster.spawn("launcher")
    (shape,) = shapes
    return statistics.median(shape.submit), statistics.median(shape.create)


def _print(rows: list[Row]) -> None:
    print()
    head = (
        f"{'tasks':>7} {'restart s':>9} {'status p50/p99 ms':>18} {'task p50/p99 ms':>16} "
        f"{'page p50/p99 ms':>16} {'submit/s':>9} {'bare KV/s':>9} {'ratio':>6} "
        f"{'RSS ctl/lau/nats MB':>20} {'idle CPU %':>10}"
    )
    print(head)
    for r in rows:
        rss = r.rss or {}
        page = f"{r.page[0]:.1f}/{r.page[1]:.1f}" if r.page else "fails"
        status = f"{r.status[0]:.1f}/{r.status[1]:.1f}" if r.status else "fails"
        task = f"{r.task[0]:.1f}/{r.task[1]:.1f}" if r.task else "fails"
        ratio = r.submit_rate / r.floor_rate if r.floor_rate else 0.0
        mem = "/".join(f"{rss.get(k, 0):.0f}" for k in ("control", "launcher", "nats-server"))
        print(
            f"{r.tasks:>7} {r.restart_s:>9.2f} {status:>18} "
            f"{task:>16} {page:>16} {r.submit_rate:>9.1f} "
            f"{r.floor_rate:>9.1f} {ratio:>6.2f} {mem:>20} {r.idle_cpu:>10.1f}"
        )
    print()
    for r in rows:
        for failure in r.failures:
            print(f"{r.tasks}: {failure}")
    print("page reply: " + ", ".join(f"{r.tasks}: {r.page_shape or 'failed'}" for r in rows))
    print(
        "targets (SPEC §8, at 100,000 stored tasks): "
        + ", ".join(f"{k} {_OPS.get(k, '≤')} {v:g}" for k, v in TARGETS.items())
    )
    for r in rows:
        if not r.measured:
            print(f"  {r.tasks:>7}: restart s MISS, the rest not measured (never healthy)")
            continue
        marks = ", ".join(f"{k} {'PASS' if ok else 'MISS'}" for k, ok in r.verdicts().items())
        print(f"  {r.tasks:>7}: {marks}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1000,10000", help="comma list of stored-task counts")
    parser.add_argument("--samples", type=int, default=200, help="requests per latency")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--submits", type=int, default=100)
    parser.add_argument("--ready-deadline-s", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.tasks.split(",") if s.strip())
    if not sizes or sizes[0] < 1:
        parser.error("--tasks needs counts >= 1")
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-scale-"))
    print(f"scale: stored tasks {', '.join(map(str, sizes))}")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; scratch {root}")
    fleet = Fleet(root)
    rows: list[Row] = []

    def config(data: Path, url: str) -> str:
        return render_config(data, url, 2)

    try:
        fleet.start(PARTS, config)
        seen = drive(fleet, [(ITEM, "repo1")], in_flight=1, deadline_s=300.0)
        if ITEM not in seen.settled_at or seen.escalated:
            raise RuntimeError(f"the template item {ITEM} did not finish")
        template = read_template(fleet.url, ITEM)
        counts = {b.rsplit("_", 1)[-1]: len(p) for b, p in template.records.items()}
        print(f"template {ITEM}: {template.count()} records {counts}", flush=True)
        stored = 1
        ids: list[str] = [ITEM]
        for size in sizes:
            new = [f"R1-{n}" for n in range(stored + 1, size + 1)]
            started = CLOCK.monotonic()
            written = write_copies(fleet.url, template, new)
            ids += new
            stored = max(stored, size)
            print(
                f"{size} tasks: wrote {written} records in {CLOCK.monotonic() - started:.1f} s; "
                "measuring",
                flush=True,
            )
            rows.append(measure(fleet, template, ids, args, size))
            _print(rows[-1:])  # each size as soon as it is measured; all of them at the end
    finally:
        fleet.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    _print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
