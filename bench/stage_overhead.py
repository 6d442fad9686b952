"""SPEC §8 "Stage overhead": one work item through every stage, Conveyor against a floor.

Conveyor side: a `Node` with every part (embedded nats-server) on a temporary
data directory and the embedded default config; the demo agent is the instant
scripted agent. Each item is timed from `submit` to the `done` stage event (the
node's start-up is not timed); the analysis is approved as soon as its alert
arrives (JetStream subscription, no polling).

Floor side: a plain sequential script doing the work Conveyor's Launcher,
forge and gates do for the same item, with the same `gateways` code and no
NATS or actors: intake (clone/fetch, worktree, push), then per agent stage the
prompt file, the `conveyor.runwrap` + demo-agent spawn with the Launcher's
environment, commit, push, pull request, CI (`forge.on_push`), the gate's
forge reads, and the merge on deploy-staging. The analysis gate is read twice
(before and after the instant approval), as Conveyor does.

Every process either side spawns is counted (git by subcommand, agents, CI
checks) so the floor can be seen to do the same work.

    .venv/bin/python bench/stage_overhead.py [--items N] [--repeat R]

A run is N items one after another; R runs alternate Conveyor and floor, and
the medians are compared. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bus import subjects
from bus.messages import Alert, StageChanged
from conveyor import config as config_mod
from conveyor import logs
from conveyor.app.client import Client
from conveyor.app.node import Node
from conveyor.pipeline import CANCELLED, DONE

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stage_overhead_floor import FloorSide
from stage_overhead_probe import (
    REPO,
    TITLE,
    Probe,
    RunResult,
    add_stage_times,
    stage_names,
)

TARGET_RATIO = 1.30
BUDGET_MS_PER_STAGE = 30.0
ITEM_DEADLINE_S = 300.0


# --- Conveyor side -------------------------------------------------------------------------


class ConveyorSide:
    """A Node with every part and a client following stage events and alerts."""

    def __init__(self, data_dir: Path) -> None:
        self.cfg = config_mod.load(env={}, overrides={"data_dir": str(data_dir)})
        self.node = Node(self.cfg)
        self.client: Client | None = None
        self.inbox: queue.Queue[StageChanged | Alert] = queue.Queue()

    def start(self) -> None:
        self.node.start()
        self.client = Client(self.node.url)
        self.client.follow(self.inbox.put)

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.node.stop()

    def run(self, items: int) -> RunResult:
        names = stage_names(self.cfg)
        result = RunResult(seconds=0.0)
        for _ in range(items):
            result.seconds += self._one(names, result)
        return result

    def _one(self, names: list[str], result: RunResult) -> float:
        client = self.client
        if client is None:
            raise RuntimeError("ConveyorSide not started")
        started = time.perf_counter()
        reply = client.command("submit", {"repo": REPO, "title": TITLE, "description": ""})
        if not reply.get("ok"):
            raise RuntimeError(f"submit refused: {reply.get('error')}")
        task_id = reply["task"]["id"]
        deadline = started + ITEM_DEADLINE_S
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise RuntimeError(f"{task_id} not done within {ITEM_DEADLINE_S:g}s")
            try:
                msg = self.inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            if msg.task_id != task_id:
                continue
            if isinstance(msg, Alert):
                if msg.kind == "awaiting_approval":
                    answer = client.command("approve", {"id": task_id})
                    if not answer.get("ok"):
                        raise RuntimeError(f"approve refused: {answer.get('error')}")
                elif msg.kind == "escalated":
                    raise RuntimeError(f"{task_id}: {msg.text}")
                continue
            if msg.new == DONE:
                elapsed = time.perf_counter() - started
                break
            if msg.new == CANCELLED:
                raise RuntimeError(f"{task_id} was cancelled: {msg.cause}")
        record = client.request(subjects.status_task(task_id))
        marks = [entry["at"] for entry in record.get("history", [])]
        add_stage_times(result, names, marks)
        return elapsed


# --- running and reporting -----------------------------------------------------------------


def _median_run(runs: list[RunResult]) -> RunResult:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.0f}"


def _print_report(
    items: int,
    conveyor_runs: list[RunResult],
    floor_runs: list[RunResult],
    names: list[str],
) -> None:
    print()
    print(f"{'run':>4} {'conveyor ms':>12} {'floor ms':>10} {'ratio':>7}")
    for index, (c, f) in enumerate(zip(conveyor_runs, floor_runs, strict=True), start=1):
        print(f"{index:>4} {_ms(c.seconds):>12} {_ms(f.seconds):>10} {c.seconds / f.seconds:7.3f}")
    conveyor = statistics.median(r.seconds for r in conveyor_runs)
    floor = statistics.median(r.seconds for r in floor_runs)
    ratio = conveyor / floor
    stages = len(names) * items
    per_stage_ms = (conveyor - floor) / stages * 1000
    print()
    print(f"median Conveyor   {conveyor * 1000:9.0f} ms  ({items} item(s) per run)")
    print(f"median floor      {floor * 1000:9.0f} ms")
    print(f"ratio             {ratio:9.3f}")
    best = min(r.seconds for r in conveyor_runs) / min(r.seconds for r in floor_runs)
    print(f"best-of ratio     {best:9.3f}  (fastest Conveyor run / fastest floor run; less noisy)")
    print(
        f"overhead/stage    {per_stage_ms:9.1f} ms  "
        f"((conveyor - floor) / {stages} stages; budget {BUDGET_MS_PER_STAGE:.0f} ms/stage: "
        f"{'within' if per_stage_ms <= BUDGET_MS_PER_STAGE else 'over'})"
    )
    print()
    print("per stage, median over every item (ms; Conveyor from the task history's `at`):")
    print(f"  {'stage':<16} {'conveyor':>9} {'floor':>9} {'overhead':>9}")
    for name in names:
        c_times = [t for r in conveyor_runs for t in r.stage_seconds.get(name, [])]
        f_times = [t for r in floor_runs for t in r.stage_seconds.get(name, [])]
        if not c_times or not f_times:
            continue
        c_med, f_med = statistics.median(c_times), statistics.median(f_times)
        print(f"  {name:<16} {_ms(c_med):>9} {_ms(f_med):>9} {_ms(c_med - f_med):>9}")
    print()
    print("processes spawned per item (median run):")
    c_spawns = _median_run(conveyor_runs).tally.spawns
    f_spawns = _median_run(floor_runs).tally.spawns
    kinds = sorted(set(c_spawns) | set(f_spawns))
    print(f"  {'kind':<30} {'conveyor':>9} {'floor':>9}")
    for kind in kinds:
        c_n, f_n = c_spawns.get(kind, 0) / items, f_spawns.get(kind, 0) / items
        flag = "" if c_n == f_n else "  <- differs"
        print(f"  {kind:<30} {c_n:>9g} {f_n:>9g}{flag}")
    c_total, f_total = sum(c_spawns.values()) / items, sum(f_spawns.values()) / items
    print(f"  {'total':<30} {c_total:>9g} {f_total:>9g}")
    print()
    print("where the difference comes from (per item, all runs):")
    c_reap = [t for r in conveyor_runs for t in r.tally.reap_s]
    f_reap = [t for r in floor_runs for t in r.tally.reap_s]
    if c_reap and f_reap:
        c_med, f_med = statistics.median(c_reap) * 1000, statistics.median(f_reap) * 1000
        print(
            f"  agent exit -> parent's wait() returns: conveyor {c_med:.1f} ms, "
            f"floor {f_med:.1f} ms (median per agent run)"
        )
    ops = statistics.median(r.tally.bus_ops for r in conveyor_runs) / items
    bus_s = statistics.median(r.tally.bus_s for r in conveyor_runs) / items
    print(
        f"  JetStream writes (KV create/update, publish)  {ops:g} per item, "
        f"{bus_s * 1000:.0f} ms summed over all threads ({bus_s / max(ops, 1) * 1000:.2f} ms each)"
    )
    print()
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"target: ratio ≤ {TARGET_RATIO:.2f} (SPEC §8) — {ratio:.3f}: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1, help="items per run, one after another")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; medians reported")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.items < 1 or args.repeat < 1:
        parser.error("--items and --repeat must be >= 1")
    logs.configure("warning")
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-stage-"))
    print(f"stage overhead: {args.items} item(s) per run, {args.repeat} run(s) per side")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {sys.platform}")
    print(f"scratch: {root}")
    probe = Probe()
    conveyor = ConveyorSide(root / "conveyor")
    floor = FloorSide(root / "floor")
    names = stage_names(conveyor.cfg)
    conveyor_runs: list[RunResult] = []
    floor_runs: list[RunResult] = []
    try:
        with probe.installed():
            conveyor.start()
            floor.start()
            for index in range(args.repeat):
                # Alternate the sides so drift (caches, other load) hits both alike.
                before = probe.snapshot()
                run = conveyor.run(args.items)
                run.tally = probe.snapshot().since(before)
                conveyor_runs.append(run)
                before = probe.snapshot()
                frun = floor.run(args.items)
                frun.tally = probe.snapshot().since(before)
                floor_runs.append(frun)
                print(
                    f"  run {index + 1}/{args.repeat}: conveyor {run.seconds * 1000:.0f} ms, "
                    f"floor {frun.seconds * 1000:.0f} ms",
                    flush=True,
                )
    finally:
        conveyor.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    _print_report(args.items, conveyor_runs, floor_runs, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
