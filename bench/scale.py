"""SPEC §8 "Scale": Conveyor's costs against the number of stored tasks (1k, 10k, 100k).

Conveyor runs as nats-server plus the Procfile parts `control` and `launcher`
(each `conveyor up --parts ...` in its own process) with the demo agent. One demo
item is driven to `done`; its task, job, run and effect records are then copied
straight into the KV buckets (`scale_records.py`) until the store holds each size
of `--tasks` (all copies finished, each with its jobs, runs and effects). The copies
are written with the parts stopped, into the same nats-server run without its fsync
per write (`load_copies`); then nats-server and the parts start over them (untimed:
the parts read the copies as writes since their checkpoints), the launcher restarts
from its checkpoint, and:

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
                                    [--submits 100] [--ready-deadline-s 300]
                                    [--first-start-deadline-s 1200] [--keep]

100,000 is opt-in: `--tasks 1000,10000,100000`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bus import subjects
from bus.server import find_nats_server
from conveyor.app.client import Client
from conveyor.config import load as config_load

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import submit_rate
from fleet import CLOCK, Fleet, drive, percentile, render_config, wait_ready
from scale_records import Template, read_template, write_copies

PARTS = ("control", "launcher")
SYNC_ALWAYS = "  sync_interval: always\n"
LAUNCHER_STARTED = '"launcher.started"'
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
    first_start_s: float = 0.0
    first_peak: dict[str, float] = field(default_factory=dict)
    nats_start_s: float = 0.0
    nats_fresh_mb: float = 0.0
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


@dataclass
class Loaded:
    """What writing one size's copies took."""

    written: int
    writing_s: float
    nats_start_s: float
    nats_rss_mb: float
    """nats-server's RSS right after its start over the copies, before the parts read."""
    spawned_at: float
    """When the parts were started over the copies (CLOCK.monotonic)."""
    launcher_starts: int
    """`launcher.started` lines in its log before that start."""


def load_copies(fleet: Fleet, template: Template, new: list[str]) -> Loaded:
    """Write the copies with the parts stopped, into a nats-server that skips the fsyncs.

    nats-server fsyncs every write (`sync_interval: always`), about 1,000 a second on
    this disk, so 2.4 M copies would take 40 minutes. They are stored tasks, not what
    is measured: the parts are killed, nats-server is stopped (it flushes), and the same
    server, store and ports run without that line while the copies are written. Then it
    stops again, nats-server starts as configured, and the parts start over the copies.
    """
    cluster = fleet.cluster
    for part in reversed(PARTS):
        cluster.sigkill(part)
    if fleet.client is not None:
        fleet.client.close()
        fleet.client = None
    cluster.nats.stop(timeout_s=120.0)
    conf = cluster.nats.conf_file.read_text()
    unsynced = conf.replace(SYNC_ALWAYS, "")
    if unsynced == conf:
        raise RuntimeError(f"no {SYNC_ALWAYS.strip()!r} in {cluster.nats.conf_file}")
    path = cluster.workdir / "nats-loader.conf"
    path.write_text(unsynced)
    with (cluster.workdir / "nats-loader.log").open("ab") as log:
        loader = subprocess.Popen(
            [str(find_nats_server()), "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthz(cluster.nats.monitor_url, loader)
        started = CLOCK.monotonic()
        written = write_copies(fleet.url, template, new)
        writing_s = CLOCK.monotonic() - started
    finally:
        loader.terminate()
        try:
            loader.wait(timeout=120)
        except subprocess.TimeoutExpired:
            loader.kill()
            loader.wait()
    cluster.nats.ready_timeout_s = 600.0
    started = CLOCK.monotonic()
    cluster.nats.start()
    nats_start_s = CLOCK.monotonic() - started
    nats_rss = fleet.rss_mb().get("nats-server", 0.0)
    fleet.client = Client(fleet.url, timeout_s=10.0)
    starts = _count(cluster.workdir / "launcher.log", LAUNCHER_STARTED)
    spawned_at = CLOCK.monotonic()
    for part in PARTS:
        cluster.spawn(part)
    return Loaded(written, writing_s, nats_start_s, nats_rss, spawned_at, starts)


def _wait_healthz(monitor_url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = CLOCK.monotonic() + 600.0
    while CLOCK.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the loading nats-server exited with {proc.returncode}")
        url = f"{monitor_url}/healthz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2.0) as reply:  # noqa: S310 - http URL we built
            if reply.status == 200:
                return
        CLOCK.sleep(0.1)
    raise RuntimeError("the loading nats-server was not healthy within 600 s")


def _count(path: Path, needle: str) -> int:
    with path.open(errors="replace") as fh:
        return sum(1 for line in fh if needle in line)


def _wait_log(path: Path, needle: str, count: int, deadline_s: float) -> None:
    """Wait until `path` holds `count` lines with `needle` (bounded)."""
    end = CLOCK.monotonic() + deadline_s
    while _count(path, needle) < count:
        if CLOCK.monotonic() > end:
            raise RuntimeError(f"no {needle} in {path} within {deadline_s:g} s")
        CLOCK.sleep(0.1)


def _peak_rss_mb(fleet: Fleet) -> dict[str, float]:
    """Each part's peak RSS so far (VmHWM), in MB."""
    out = {}
    for name, proc in fleet.processes().items():
        with contextlib.suppress(OSError, psutil.Error):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
            out[name] = int(kb) / 1000
    return out


def measure(
    fleet: Fleet,
    template: Template,
    ids: list[str],
    args: argparse.Namespace,
    loaded: Loaded,
    size: int,
) -> Row:
    row = Row(size)
    row.nats_start_s, row.nats_fresh_mb = loaded.nats_start_s, loaded.nats_rss_mb
    cluster = fleet.cluster
    client = fleet.live_client()
    # `load_copies` started the launcher and control over the copies just written. Those
    # were written behind their backs, so each part's first start reads them as writes
    # since its checkpoints (as an upgrade's migration reads every record once); untimed,
    # with its peak RSS. Then the launcher restarts from its checkpoint, so its RSS is
    # a restart's and not what the first start left, and control's restart is timed.
    launcher_log = cluster.workdir / "launcher.log"
    first = args.first_start_deadline_s
    try:
        wait_ready(client, cluster, deadline_s=first)
        _wait_log(launcher_log, LAUNCHER_STARTED, loaded.launcher_starts + 1, first)
    except RuntimeError:
        row.restart_s = float("inf")
        row.page_shape = f"not measured: first start not done within {first:g} s"
        row.rss, row.first_peak, row.measured = fleet.rss_mb(), _peak_rss_mb(fleet), False
        print(f"  first start not done within {first:g} s", flush=True)
        return row
    row.first_start_s = CLOCK.monotonic() - loaded.spawned_at
    row.first_peak = _peak_rss_mb(fleet)
    peaks = ", ".join(f"{k} {v:.0f} MB" for k, v in row.first_peak.items())
    print(f"  untimed first start: {row.first_start_s:.1f} s; peak RSS {peaks}", flush=True)
    seen = _count(launcher_log, LAUNCHER_STARTED)
    cluster.sigkill("launcher")
    cluster.spawn("launcher")
    _wait_log(launcher_log, LAUNCHER_STARTED, seen + 1, args.ready_deadline_s)
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
    for r in rows:
        peaks = "/".join(f"{r.first_peak.get(k, 0):.0f}" for k in ("control", "launcher"))
        print(
            f"{r.tasks}: untimed first start over the new copies {r.first_start_s:.1f} s "
            f"(peak RSS control/launcher {peaks} MB); nats-server start {r.nats_start_s:.2f} s, "
            f"RSS {r.nats_fresh_mb:.0f} MB right after it"
        )
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


def _sorted(template: Template) -> dict[str, list[tuple[str, bytes]]]:
    return {bucket: sorted(pairs) for bucket, pairs in template.records.items()}


def _settled_template(url: str, deadline_s: float = 30.0) -> Template:
    """The template item's records once two reads a second apart agree.

    The item is seen `done` before its owners wrote everything that follows (under
    load, its last effect): read too early, every copy would lack that record.
    """
    template = read_template(url, ITEM)
    end = CLOCK.monotonic() + deadline_s
    while CLOCK.monotonic() < end:
        CLOCK.sleep(1.0)
        again = read_template(url, ITEM)
        if _sorted(again) == _sorted(template):
            return again
        template = again
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1000,10000", help="comma list of stored-task counts")
    parser.add_argument("--samples", type=int, default=200, help="requests per latency")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--submits", type=int, default=100)
    parser.add_argument("--ready-deadline-s", type=float, default=300.0)
    parser.add_argument(
        "--first-start-deadline-s",
        type=float,
        default=1200.0,
        help="for the untimed first start over new copies (every copy read once)",
    )
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
        template = _settled_template(fleet.url)
        counts = {b.rsplit("_", 1)[-1]: len(p) for b, p in template.records.items()}
        print(f"template {ITEM}: {template.count()} records {counts}", flush=True)
        stored = 1
        ids: list[str] = [ITEM]
        for size in sizes:
            new = [f"R1-{n}" for n in range(stored + 1, size + 1)]
            loaded = load_copies(fleet, template, new)
            ids += new
            stored = max(stored, size)
            print(
                f"{size} tasks: wrote {loaded.written} records in {loaded.writing_s:.1f} s; "
                f"nats-server started over them in {loaded.nats_start_s:.2f} s "
                f"({loaded.nats_rss_mb:.0f} MB); measuring",
                flush=True,
            )
            rows.append(measure(fleet, template, ids, args, loaded, size))
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
