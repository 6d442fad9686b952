"""The board's and `/metrics`' cost next to `conveyor.status`, at 10,000 stored tasks.

Conveyor runs as nats-server plus the Procfile parts `control`, `launcher` and
`gateway` (each its own process) with the demo agent. One demo item is driven to
`done`; its records are copied into the KV buckets (`scale_records.py`, as the
scale bench does) until the store holds each size of `--tasks`; then `--active`
items are submitted to a second repository so the board's first page is full
(they queue: one runs at a time). Control and launcher are restarted (untimed) to
load the copies, and the bench times, one request after another:

- `conveyor.status` (NATS request, the overview);
- `conveyor.status.tasks` for the board's page (`{"state": "active", "limit": 200}`);
- `GET /board/api/overview`: what the board's first page loads (overview, that
  page, the queue, the leases and the cost ledger, asked at once);
- `GET /metrics`.

`board.refresh_s` is set to 1 µs so every HTTP request reads the status subjects
afresh (the default, 2 s, serves most views and scrapes from one read). Figures
are printed, never asserted.

    .venv/bin/python bench/board.py [--tasks 10000] [--samples 200] [--active 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bus import subjects

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import CLOCK, Fleet, drive, percentile, render_config, wait_ready
from scale_records import read_template, write_copies

PARTS = ("control", "launcher", "gateway")
ITEM = "R1-1"
PAGE = {"state": "active", "limit": 200}


def timed(call: Callable[[], Any], samples: int) -> tuple[float, float]:
    """p50 and p99 in ms of `samples` calls, one after another (after 5 untimed)."""
    for _ in range(5):
        call()
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 99)


def gateway_url(fleet: Fleet) -> str:
    path = fleet.cluster.data / "gateway.url"
    end = CLOCK.monotonic() + 60
    while CLOCK.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        CLOCK.sleep(0.1)
    raise RuntimeError(f"the gateway wrote no {path}")


def http_call(http: httpx.Client, path: str) -> Callable[[], Any]:
    def call() -> Any:
        response = http.get(path)
        response.raise_for_status()
        return response

    return call


def measure(fleet: Fleet, http: httpx.Client, samples: int) -> dict[str, tuple[float, float]]:
    client = fleet.live_client()
    return {
        "conveyor.status": timed(lambda: client.request(subjects.STATUS), samples),
        "status.tasks page": timed(lambda: client.request(subjects.STATUS_TASKS, PAGE), samples),
        "board first page": timed(http_call(http, "/board/api/overview"), samples),
        "/metrics": timed(http_call(http, "/metrics"), samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="10000", help="comma list of stored-task counts")
    parser.add_argument("--samples", type=int, default=200, help="requests per latency")
    parser.add_argument("--active", type=int, default=200, help="active tasks on the page")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.tasks.split(",") if s.strip())
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-board-"))
    print(f"board: stored tasks {', '.join(map(str, sizes))}, {args.active} active")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; scratch {root}")
    fleet = Fleet(root)
    rows: list[tuple[int, dict[str, tuple[float, float]]]] = []

    def config(data: Path, url: str) -> str:
        # Every request reads afresh: the figures are the uncached cost.
        return render_config(data, url, 2, extra=["[board]", "refresh_s = 0.000001"])

    try:
        fleet.start(PARTS, config)
        seen = drive(fleet, [(ITEM, "repo1")], in_flight=1, deadline_s=300.0)
        if ITEM not in seen.settled_at:
            raise RuntimeError(f"the template item {ITEM} did not finish")
        template = read_template(fleet.url, ITEM)
        client = fleet.live_client()
        for n in range(1, args.active + 1):
            client.command("submit", {"repo": "repo2", "title": f"Board item {n}", "id": f"R2-{n}"})
        stored = 1
        for size in sizes:
            new = [f"R1-{n}" for n in range(stored + 1, size + 1)]
            write_copies(fleet.url, template, new)
            stored = max(stored, size)
            for part in ("launcher", "control"):
                fleet.cluster.sigkill(part)
                fleet.cluster.spawn(part)
            wait_ready(client, fleet.cluster, deadline_s=300.0)
            CLOCK.sleep(1.0)
            with httpx.Client(base_url=gateway_url(fleet), trust_env=False, timeout=30) as http:
                rows.append((size, measure(fleet, http, args.samples)))
            print_rows(rows[-1:])
    finally:
        fleet.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_rows(rows)
    return 0


def print_rows(rows: list[tuple[int, dict[str, tuple[float, float]]]]) -> None:
    print()
    print(f"{'tasks':>7} {'what':<20} {'p50 ms':>8} {'p99 ms':>8}")
    for size, figures in rows:
        for what, (p50, p99) in figures.items():
            print(f"{size:>7} {what:<20} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
