"""SPEC §8 "Throughput": N items on 4 repositories at concurrency 8, Conveyor against a floor.

Conveyor side: nats-server and the Procfile parts `control` and `launcher` (each
`conveyor up --parts ...` in its own process, as in production) with the demo
agent, `max_concurrency = 8` and two jobs per repository at once. Run twice on a
fresh data directory each: every item submitted at once ("all at once"), and at
most 8 items unsettled at a time ("8 in flight", as the floor has). Analyses are
approved as their alerts arrive.

Floor side (`throughput_floor.py`, its own process): the same per-item work as
`stage_overhead_floor.py` (intake, 7 agent stages with commit, push, PR, CI and
gate reads, the merge), 8 lanes wide, one item after another per lane, without
NATS or actors. `--floor-layout shared` (the default, the spec's like-for-like):
the same items on the same repositories, two lanes per repository, merging under
a per-repository lock and rebasing (with CI again) a branch behind main, as
Conveyor's merge step does; `lanes`: the earlier floor, a repository per lane.

Printed for each (never asserted): items a minute, CPU seconds per item (Conveyor:
control, launcher and nats-server with their reaped children, e.g. git and the
agents; floor: its process and children), failed pushes (log lines with
"bad object" or a failed push), merge attempts per merged item (from the job
records of the merge steps), and rebases and CI runs per item on each side.

    .venv/bin/python bench/throughput.py [--items 200] [--repos 4] [--concurrency 8]
                                         [--modes all,8] [--keep] [--protected]
                                         [--no-floor] [--floor-layout shared|lanes]
                                         [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from actors.queue_policy import Job
from bus import subjects
from conveyor.pipeline import STEP_MERGE

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import CLOCK, Fleet, drive, plan, render_config

HERE = Path(__file__).resolve().parent
PARTS = ("control", "launcher")
# A failed push: the forge's own words, or the GitError of a `git push` (successes log
# `git.pushed`, never the command line).
PUSH_ERRORS = ("bad object", "missing necessary objects", "git push --quiet --no-verify origin")
TARGET_RATIO = 1.0
TARGET_MERGE_ATTEMPTS = 1.2


@dataclass
class Side:
    name: str
    items: int
    seconds: float
    cpu_s: float
    failed: int = 0
    failed_pushes: int | None = None
    merge_attempts: float | None = None
    replays: tuple[int, int] | None = None
    """The Reconciler's gate replays, and those it announced as a lost event."""
    cpu_split: dict[str, float] | None = None
    """CPU seconds per process (`NAME+`: its reaped children), where measured."""
    rebases: int | None = None
    """Branches rebased onto main before their merge."""
    ci_runs: int | None = None
    """CI checks run (on a push, and again after a rebase)."""

    @property
    def per_minute(self) -> float:
        return (self.items - self.failed) / self.seconds * 60 if self.seconds > 0 else 0.0


def conveyor_run(root: Path, args: argparse.Namespace, in_flight: int, label: str) -> Side:
    fleet = Fleet(root / label)
    per_repo = max(1, args.concurrency // args.repos)

    def config(data: Path, url: str) -> str:
        text = render_config(
            data,
            url,
            args.repos,
            concurrency=args.concurrency,
            per_repo=per_repo,
            # As the floor does: every repository stays as small as merged work makes it.
            extra=["[retention]", "delete_merged_branches = true"],
        )
        if args.protected:
            # Each task keeps its repository's merge lease until its production deploy ends.
            text = text.replace('template = "demo"\n', 'template = "demo"\nprotected = true\n')
        return text

    try:
        fleet.start(PARTS, config)
        planned = plan(args.items, args.repos)
        cpu0 = fleet.cpu_split()
        bus0 = fleet.bus_counts()
        t0 = CLOCK.monotonic()
        seen = drive(
            fleet,
            planned,
            in_flight=in_flight,
            deadline_s=args.deadline_s,
            say=lambda line: print(line, flush=True),
        )
        seconds = (max(seen.settled_at.values()) if seen.settled_at else CLOCK.monotonic()) - t0
        cpu1 = fleet.cpu_split()
        _print_bus(label, bus0, fleet.bus_counts(), args.items)
        split = {name: cpu1[name] - cpu0.get(name, 0.0) for name in cpu1}
        cpu = sum(split.values())
        unsettled = len(planned) - len(seen.settled_at)
        side = Side(label, args.items, seconds, cpu, failed=len(seen.escalated) + unsettled)
        side.cpu_split = split
        side.failed_pushes = fleet.log_count(PUSH_ERRORS)
        side.merge_attempts = _merge_attempts(fleet, len(seen.settled_at) - len(seen.escalated))
        side.rebases = _log_count_both(fleet, '"launcher.merged"', '"rebased": true')
        side.ci_runs = fleet.log_count(('"forge.ci_started"',))
        # Nothing is lost here: every replay is a task taken for quiet, every announced one false.
        side.replays = (
            fleet.log_count(('"reconciler.replayed"',)),
            fleet.log_count(('"reconciler.unblocked"',)),
        )
        return side
    finally:
        if args.keep:
            print(f"kept {root / label}")
        fleet.stop()


def _print_bus(label: str, before: dict[str, int], after: dict[str, int], items: int) -> None:
    """Messages through nats-server and JetStream writes per item, by stream."""
    per = {name: (after[name] - before.get(name, 0)) / items for name in after}
    writes = {name: n for name, n in per.items() if name.startswith("stream ") and n > 0}
    parts = ", ".join(
        f"{name[7:]} {n:.1f}" for name, n in sorted(writes.items(), key=lambda kv: -kv[1])
    )
    print(
        f"{label}: per item, {per.get('msgs in', 0):.0f} messages in and "
        f"{per.get('msgs out', 0):.0f} out of nats-server; "
        f"{sum(writes.values()):.0f} JetStream writes ({parts})",
        flush=True,
    )


def _merge_attempts(fleet: Fleet, merged: int) -> float | None:
    """Attempts of every merge step, from the job records, per merged item."""
    if fleet.client is None or merged <= 0:
        return None
    store = fleet.client.bus.store(subjects.BUCKET_JOBS, Job)
    jobs = [entry.value for entry in store.load_all().values()]
    attempts = sum(job.attempts for job in jobs if job.id.endswith(f".{STEP_MERGE}"))
    return attempts / merged


def _log_count_both(fleet: Fleet, first: str, second: str) -> int:
    """Lines of the parts' logs that contain both `first` and `second`."""
    count = 0
    for path in fleet.cluster.workdir.glob("*.log"):
        with path.open(errors="replace") as fh:
            count += sum(1 for line in fh if first in line and second in line)
    return count


def floor_run(root: Path, args: argparse.Namespace) -> Side:
    argv = [sys.executable, str(HERE / "throughput_floor.py"), "--items", str(args.items)]
    argv += ["--lanes", str(args.concurrency), "--workdir", str(root / "floor")]
    argv += ["--layout", args.floor_layout, "--repos", str(args.repos)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.deadline_s, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"floor failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if "branches_removed" in figures:
        print(
            f"floor: {figures['branches_removed']} done branches removed, "
            f"{figures['branches_left']} waiting for a free workspace at the end",
            flush=True,
        )
    failed_pushes = sum(
        1 for line in done.stderr.splitlines() if any(w in line for w in PUSH_ERRORS)
    )
    return Side(
        f"floor ({figures.get('layout', args.floor_layout)})",
        figures["items"],
        figures["seconds"],
        figures["cpu_s"],
        failed=figures["failed"],
        failed_pushes=failed_pushes,
        cpu_split=figures.get("cpu_split"),
        rebases=figures.get("rebases"),
        ci_runs=figures.get("ci_runs"),
    )


def _report(sides: list[Side], floor: Side) -> None:
    print()
    print(
        f"{'side':<22} {'items':>6} {'failed':>6} {'seconds':>8} {'items/min':>10} "
        f"{'CPU s/item':>10} {'failed pushes':>13} {'merge att/item':>14} {'vs floor':>9}"
    )
    for side in [*sides, floor]:
        merges = "-" if side.merge_attempts is None else f"{side.merge_attempts:.2f}"
        pushes = "-" if side.failed_pushes is None else str(side.failed_pushes)
        ratio = side.per_minute / floor.per_minute if floor.per_minute else float("nan")
        print(
            f"{side.name:<22} {side.items:>6} {side.failed:>6} {side.seconds:>8.1f} "
            f"{side.per_minute:>10.1f} {side.cpu_s / side.items:>10.2f} {pushes:>13} "
            f"{merges:>14} {ratio:>8.2f}x"
        )
    print()
    for side in [*sides, floor]:
        if side.cpu_split:
            parts = ", ".join(
                f"{name} {seconds / side.items:.2f}" for name, seconds in side.cpu_split.items()
            )
            print(f"{side.name}: CPU s/item by process (NAME+: its children): {parts}")
    for side in [*sides, floor]:
        if side.rebases is not None and side.ci_runs is not None:
            print(
                f"{side.name}: {side.rebases / side.items:.2f} rebases per item, "
                f"{side.ci_runs / side.items:.2f} CI runs per item"
            )
    for side in sides:
        if side.replays is not None:
            replayed, unblocked = side.replays
            print(f"{side.name}: {replayed} gate replays, {unblocked} announced as a lost event")
    for side in sides:
        ratio = side.per_minute / floor.per_minute if floor.per_minute else 0.0
        ok = (
            ratio >= TARGET_RATIO
            and side.failed_pushes == 0
            and side.failed == 0
            and (side.merge_attempts or 0.0) <= TARGET_MERGE_ATTEMPTS
        )
        merges = "-" if side.merge_attempts is None else f"{side.merge_attempts:.2f}"
        print(
            f"target ({side.name}): >= {TARGET_RATIO:.1f}x the floor ({ratio:.2f}x), "
            f"0 failed pushes ({side.failed_pushes}), <= {TARGET_MERGE_ATTEMPTS} merge "
            f"attempts per item ({merges}): {'PASS' if ok else 'MISS'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repos", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--modes",
        default="all,8",
        help="comma list: 'all' (every item at once) and/or a number in flight",
    )
    parser.add_argument("--deadline-s", type=float, default=3600.0, help="per run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="pairs of runs (Conveyor and floor back to back, the floor first every other "
        "round); the verdict is on the median ratio",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="Conveyor only (ratios against a zero floor)"
    )
    parser.add_argument(
        "--protected",
        action="store_true",
        help="protected repositories: merges wait for the deploy before them (confirmed at once)",
    )
    parser.add_argument(
        "--floor-layout",
        choices=("shared", "lanes"),
        default="shared",
        help="shared: the floor's lanes share the repositories, two per repository (the "
        "spec's like-for-like); lanes: a repository per lane (the earlier floor)",
    )
    args = parser.parse_args(argv)
    if args.items < 1 or args.repos < 1 or args.concurrency < 1:
        parser.error("--items, --repos and --concurrency must be >= 1")
    if args.floor_layout == "shared" and args.repos > args.concurrency:
        parser.error("--floor-layout shared needs --repos <= --concurrency")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-throughput-"))
    print(
        f"throughput: {args.items} items, {args.repos} repositories, concurrency "
        f"{args.concurrency}, modes {args.modes}, floor layout {args.floor_layout}, "
        f"{args.rounds} round(s)"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; scratch {root}")
    rounds: list[tuple[list[Side], Side]] = []
    try:
        for number in range(1, args.rounds + 1):
            where = root / f"round-{number}" if args.rounds > 1 else root
            if args.rounds > 1:
                print(f"round {number}/{args.rounds}", flush=True)
            # Every other round the floor goes first: a machine's load drifting over a
            # run then weighs on both sides alike.
            floor_first = number % 2 == 0 and not args.no_floor
            floor = _floor_side(where, args) if floor_first else None
            sides = _conveyor_sides(where, args)
            rounds.append((sides, floor or _floor_side(where, args)))
            _report(*rounds[-1])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.rounds > 1:
        _summary(rounds)
    return 0


def _conveyor_sides(root: Path, args: argparse.Namespace) -> list[Side]:
    sides: list[Side] = []
    for mode in args.modes.split(","):
        in_flight = args.items if mode == "all" else int(mode)
        label = "conveyor all at once" if mode == "all" else f"conveyor {in_flight} in flight"
        print(f"{label}: running", flush=True)
        side = conveyor_run(root, args, in_flight, label.replace(" ", "-"))
        side.name = label
        sides.append(side)
        print(f"{label}: {side.seconds:.1f} s", flush=True)
    return sides


def _floor_side(root: Path, args: argparse.Namespace) -> Side:
    if args.no_floor:
        return Side("floor (not run)", args.items, 0.0, 0.0)
    print("floor: running", flush=True)
    floor = floor_run(root, args)
    print(f"floor: {floor.seconds:.1f} s", flush=True)
    return floor


def _summary(rounds: list[tuple[list[Side], Side]]) -> None:
    """Per mode: each round's ratio (its sides run back to back); the verdict on the median."""
    print()
    print(f"over {len(rounds)} rounds (each ratio from one round's pair):")
    for index, first in enumerate(rounds[0][0]):
        pairs = [(sides[index], floor) for sides, floor in rounds]
        ratios = [s.per_minute / f.per_minute if f.per_minute else 0.0 for s, f in pairs]
        median = statistics.median(ratios)
        pushes = sum(s.failed_pushes or 0 for s, _ in pairs)
        failed = sum(s.failed for s, _ in pairs)
        merges = max((s.merge_attempts or 0.0) for s, _ in pairs)
        ok = (
            median >= TARGET_RATIO
            and pushes == 0
            and failed == 0
            and merges <= TARGET_MERGE_ATTEMPTS
        )
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        print(
            f"target ({first.name}): >= {TARGET_RATIO:.1f}x the floor (median {median:.2f}x; "
            f"rounds {each}), 0 failed pushes ({pushes}), 0 failed items ({failed}), <= "
            f"{TARGET_MERGE_ATTEMPTS} merge attempts per item (worst {merges:.2f}): "
            f"{'PASS' if ok else 'MISS'}"
        )


if __name__ == "__main__":
    sys.exit(main())
