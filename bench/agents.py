"""SPEC §8 "Agents": Conveyor around a real agent CLI run against a floor doing the same work.

Conveyor side: a `Node` with every part (embedded nats-server) on a temporary data
directory, the embedded default config with one real CLI (`--cli`, Claude Code by
default) on every agent role and deploy commands on the demo repository (so Conveyor
deploys without a deployer run). The CLI talks to the role-aware fake model of the
tests (`tests/fakes/models/roles.py`), which answers each prompt with the writes that
pass that stage's gate. Items go from `submit` to `done`, one after another; the
analysis is approved as soon as its alert arrives.

Per agent stage it reads, under Conveyor:
- conveyor: the time the task spent in the stage (the task history's `at` marks): the
  queue, launch, the CLI run, commit, push, CI, the report, the gate, the next request;
- cli: the CLI's wall time in that run, from the run directory's timestamps (the
  prompt file written just before the spawn, the exit-code file the wrapper writes as
  the CLI exits), so it includes the start of Conveyor's `runwrap` wrapper.

Floor side (`bench/agents_floor.py`), in the same run, right after each item: the same
item's agent stages done without Conveyor by a plain script, with the prompt Conveyor
gave the CLI, against the same fake model: the worktree, the same CLI spawned bare
with the adapter's argv, environment and files, then commit all, push to the local
forge's bare repository, pull request, the forge's CI check, and the gate's reads.
`conveyor - floor` is the overhead SPEC §8 bounds (≤ 30 ms per stage); the floor's
spawn-to-exit is also a bare run of the CLI, and `conveyor - bare` (the stage against
a bare CLI run with no git work at all) is printed as extra information.

    .venv/bin/python bench/agents.py [--cli claude] [--items N] [--keep]
                                     [--wrap-floor] [--profile]

`--wrap-floor` spawns the floor's CLI behind Conveyor's exit-code wrapper too, which
prices the wrapper; `--profile` prints the last item's timeline (every bus message, KV
write, git command and CI check) with a split of each stage into phases.

The CLIs come from `scripts/install-agent-clis` (cached). Figures are printed, never
asserted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts: the fake model lives with the tests, at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.launcher_policy import Run
from bus import subjects
from bus.messages import Alert, StageChanged
from conveyor import config as config_mod
from conveyor import logs
from conveyor.app.client import Client
from conveyor.app.node import Node
from conveyor.layout import Layout
from conveyor.pipeline import DONE
from tests.e2e.agents_support import ARGS, MODELS, ROLES
from tests.fakes.models import FakeModel
from tests.fakes.models.roles import RoleScript

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agents_floor import CliFloor, FloorStage
from agents_trace import Event, RunFiles, Trace, phases, print_phases, print_timeline, run_files

INSTALLER = Path(__file__).resolve().parents[1] / "scripts" / "install-agent-clis"
INSTALL_TIMEOUT_S = 900.0
ITEM_DEADLINE_S = 300.0
BARE_TIMEOUT_S = 120.0
BUDGET_MS_PER_STAGE = 30.0
KEY_ENV = "CONVEYOR_BENCH_MODEL_KEY"
TITLE = "Greet the user"
CHECK = ["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]


@dataclass
class StageRun:
    """One agent stage of one item: Conveyor's figures and the floor's."""

    stage: str
    role: str
    stage_s: float
    cli_s: float
    prompt: str
    cli_own_ms: float | None
    phases: dict[str, float] = field(default_factory=dict)
    """The stage's phases under Conveyor (`agents_trace.PHASES`), seconds."""
    floor: FloorStage = field(default_factory=FloorStage)
    bare_own_ms: float | None = None


@dataclass
class Results:
    stages: list[StageRun] = field(default_factory=list)

    def of(self, stage: str) -> list[StageRun]:
        return [s for s in self.stages if s.stage == stage]


def install() -> dict[str, str]:
    done = subprocess.run(
        [str(INSTALLER)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=True
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def _config(data_dir: Path, cli: str, binary: str, url: str) -> config_mod.Config:
    agent = {
        "cli": cli,
        "binary": binary,
        "model": MODELS[cli],
        "args": ARGS.get(cli, []),
        "base_url": url,
        "api_key_env": KEY_ENV,
        "max_retries": 1,
        "request_timeout_s": 30.0,
        "timeout_s": BARE_TIMEOUT_S,
    }
    deployed = ["{python}", "-c", "print('deployed')"]
    repo = {
        "name": "demo",
        "prefix": "DEMO",
        "template": "demo",
        "check_command": CHECK,
        "staging_command": deployed,
        "deploy_command": deployed,
    }
    overrides: dict[str, Any] = {
        "data_dir": str(data_dir),
        "agents": {role: agent for role in ROLES},
        "repos": [repo],
    }
    return config_mod.load(env={}, overrides=overrides)


# --- Conveyor side -------------------------------------------------------------------------


class ConveyorSide:
    """A Node with every part, the CLI on every role, and a client following events."""

    def __init__(self, cfg: config_mod.Config, script: RoleScript) -> None:
        self.cfg = cfg
        self.script = script
        self.layout = Layout(cfg.data_path)
        self.node = Node(cfg)
        self.client: Client | None = None
        self.inbox: queue.Queue[StageChanged | Alert] = queue.Queue()
        self.trace: Trace | None = None
        self.last: tuple[list[Event], list[RunFiles]] = ([], [])

    def start(self) -> None:
        self.node.start()
        self.client = Client(self.node.url)
        self.trace = Trace(self.client)
        self.trace.start()
        self.client.follow(self.inbox.put)

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.node.stop()

    def one(self, number: int) -> list[StageRun]:
        client = self.client
        if client is None:
            raise RuntimeError("ConveyorSide not started")
        task_id = f"DEMO-{number}"
        # The fake writes with absolute paths: into this item's worktree.
        self.script.workdir = self.layout.worktree("demo", task_id)
        if self.trace is not None:
            self.trace.take()  # the floor's, or the start-up's
        body = {"repo": "demo", "title": TITLE, "description": "", "id": task_id}
        reply = client.command("submit", body)
        if not reply.get("ok"):
            raise RuntimeError(f"submit refused: {reply.get('error')}")
        self._wait_done(client, task_id)
        record = client.request(subjects.status_task(task_id))
        found, files = self._stage_runs(client, record)
        events = self.trace.take() if self.trace is not None else []
        split = phases(events, files)
        for run in found:
            run.phases = split.get(run.stage, {})
        self.last = (events, files)
        return found

    def _wait_done(self, client: Client, task_id: str) -> None:
        deadline = time.monotonic() + ITEM_DEADLINE_S
        while True:
            remaining = deadline - time.monotonic()
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
                    client.command("approve", {"id": task_id})
                elif msg.kind == "escalated":
                    raise RuntimeError(f"{task_id}: {msg.text}")
            elif msg.new == DONE:
                return

    def _stage_runs(
        self, client: Client, record: dict[str, Any]
    ) -> tuple[list[StageRun], list[RunFiles]]:
        history = record.get("history", [])
        spans = {
            entry["new"]: nxt["at"] - entry["at"] for entry, nxt in itertools.pairwise(history)
        }
        store = client.bus.store(subjects.BUCKET_RUNS, Run)
        runs = [e.value for e in store.load_all().values() if e.value.task_id == record["id"]]
        found, files = [], []
        for run in sorted(runs, key=lambda r: r.started_at):
            dated = run_files(run.job_id, run.stage, Path(run.run_dir))
            if not run.outcome or run.stage not in spans or dated is None:
                continue  # a deploy command Conveyor ran itself, not a CLI
            files.append(dated)
            prompt = (Path(run.run_dir) / "prompt.md").read_text()
            own = own_ms(Path(run.log_path).read_text(errors="replace"))
            cli_s = dated.exited - dated.spawned
            found.append(StageRun(run.stage, run.role, spans[run.stage], cli_s, prompt, own))
        return found, files


def own_ms(output: str) -> float | None:
    """The run time a CLI reports itself (Claude's `duration_ms`), None when it reports none."""
    for line in reversed(output.splitlines()):
        if '"duration_ms"' not in line:
            continue
        with contextlib.suppress(ValueError):
            value = json.loads(line).get("duration_ms")
            if isinstance(value, int | float):
                return float(value)
    return None


# --- report --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.0f}"


def _median(rows: list[StageRun], field_name: str) -> float | None:
    values = [getattr(r, field_name) for r in rows if getattr(r, field_name) is not None]
    return statistics.median(values) if values else None


def _own(value: float | None) -> str:
    return f"{value:8.0f}" if value is not None else f"{'-':>8}"


def report(results: Results, items: int, cli: str) -> None:
    print()
    print(f"per agent stage, median over {items} item(s) (ms):")
    print(
        f"  {'stage':<14} {'conveyor':>8} {'floor':>8} {'c-floor':>8} {'ratio':>6} "
        f"{'cli':>8} {'bare':>8} {'own c':>8} {'own f':>8} {'gate':>6} {'over bare':>10}"
    )
    overs, bares = [], []
    for name in dict.fromkeys(s.stage for s in results.stages):
        rows = results.of(name)
        stage = statistics.median(r.stage_s for r in rows)
        floor = statistics.median(r.floor.total_s for r in rows)
        bare = statistics.median(r.floor.cli_s for r in rows)
        over = statistics.median(r.stage_s - r.floor.total_s for r in rows)
        overs.append(over)
        bares.append(stage - bare)
        print(
            f"  {name:<14} {_ms(stage)} {_ms(floor)} {_ms(over)} {stage / floor:6.2f} "
            f"{_ms(statistics.median(r.cli_s for r in rows))} {_ms(bare)} "
            f"{_own(_median(rows, 'cli_own_ms'))} {_own(_median(rows, 'bare_own_ms'))} "
            f"{statistics.median(r.floor.gate_s for r in rows) * 1000:6.0f} "
            f"{_ms(stage - bare):>10}"
        )
    print(
        "  conveyor: the stage under Conveyor; floor: the same CLI run and git/CI/gate work "
        "without Conveyor;\n  cli / bare: the CLI's spawn-to-exit under Conveyor (with its "
        "wrapper) / in the floor;\n  own c / own f: the run time the CLI reports itself "
        "(Claude duration_ms); gate: the floor's gate read"
    )
    print()
    over, worst = statistics.mean(overs) * 1000, max(overs) * 1000
    total = sum(r.stage_s for r in results.stages) / sum(r.floor.total_s for r in results.stages)
    print(
        f"{cli}: Conveyor - floor per agent stage: mean {over:6.0f} ms, worst stage {worst:.0f} ms"
    )
    print(f"{cli}: Conveyor / floor over all agent stages: {total:.2f}")
    print(
        f"{cli}: over a bare CLI run (stage - bare), mean {statistics.mean(bares) * 1000:6.0f} ms"
    )
    verdict = "PASS" if worst <= BUDGET_MS_PER_STAGE else "MISS"
    print(f"target: ≤ {BUDGET_MS_PER_STAGE:.0f} ms per stage over the floor (SPEC §8) — {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cli", default="claude", choices=sorted(MODELS), help="the agent CLI")
    parser.add_argument("--items", type=int, default=1, help="items, one after another")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--wrap-floor",
        action="store_true",
        help="the floor spawns the CLI behind Conveyor's exit-code wrapper too",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print every bus event, git command and CI check of the last item, timed",
    )
    args = parser.parse_args(argv)
    if args.items < 1:
        parser.error("--items must be >= 1")
    logs.configure("warning")
    binary = install()[args.cli]
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-agents-"))
    print(f"agents bench: {args.cli} on every agent role, {args.items} item(s)")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {sys.platform}")
    print(f"scratch: {root}")
    if args.wrap_floor:
        print("floor: the CLI behind Conveyor's exit-code wrapper (--wrap-floor)")
    os.environ[KEY_ENV] = "dummy"
    script = RoleScript(workdir=root, whole_format=args.cli == "aider")
    model = FakeModel(script)
    model.start()
    side = ConveyorSide(_config(root / "conveyor", args.cli, binary, model.url), script)
    floor = CliFloor(_config(root / "floor", args.cli, binary, model.url), wrapped=args.wrap_floor)
    results = Results()
    try:
        side.start()
        if args.profile and side.trace is not None:
            side.trace.time_calls()
        floor.start()
        for number in range(1, args.items + 1):
            runs = side.one(number)
            floor_item(floor, script, f"DEMO-{number}", runs)
            results.stages += runs
            print(f"  item {number}/{args.items}: {len(runs)} agent stage(s)", flush=True)
    finally:
        side.stop()
        model.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(results, args.items, args.cli)
    print_phases([(r.stage, r.phases, r.floor) for r in results.stages])
    if args.profile:
        print_timeline(*side.last)
    return 0


def floor_item(floor: CliFloor, script: RoleScript, task_id: str, runs: list[StageRun]) -> None:
    """The same item's agent stages through the floor, with the prompts Conveyor gave the CLI."""
    floor.begin(task_id, TITLE)
    # The fake writes with absolute paths: into the floor's worktree of the item.
    script.workdir = floor.worktree(task_id)
    for run in runs:
        done = floor.stage(task_id, TITLE, run.stage, run.prompt)
        run.floor = done
        run.bare_own_ms = own_ms(done.output)


if __name__ == "__main__":
    sys.exit(main())
