"""SPEC §8 stage overhead with a real agent CLI: Conveyor around a CLI run against a bare run.

Conveyor side: a `Node` with every part (embedded nats-server) on a temporary data
directory, the embedded default config with one real CLI (`--cli`, Claude Code by
default) on every agent role and deploy commands on the demo repository (so Conveyor
deploys without a deployer run). The CLI talks to the role-aware fake model of the
tests (`tests/fakes/models/roles.py`), which answers each prompt with the writes that
pass that stage's gate. Items go from `submit` to `done`, one after another; the
analysis is approved as soon as its alert arrives.

Per agent stage it reads:
- stage: the time the task spent in the stage (the task history's `at` marks);
- cli: the CLI's wall time in that run, from the run directory's timestamps (the
  prompt file written just before the spawn, the exit-code file the wrapper writes as
  the CLI exits), so it includes the start of Conveyor's `runwrap` wrapper;
- conveyor: stage - cli, Conveyor's own time around the run (queue, launch, commit,
  push, CI for development, the gate, the next stage's request).

Floor side, in the same run: a bare run of the same CLI (the adapter's own argv and
environment, no Conveyor) with the same prompt file, against the same fake model, in
a fresh git directory, timed from spawn to exit. `stage - bare` is the overhead the
SPEC bounds (≤ 30 ms per stage over a bare run). It includes the git and CI work a bare
run does not do; `bench/stage_overhead.py` measures that work against its own floor.

    .venv/bin/python bench/agents.py [--cli claude] [--items N] [--keep]

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
from gateways.agents.base import AgentRequest
from gateways.agents.registry import adapter_for
from tests.fakes.models import FakeModel
from tests.fakes.models.roles import RoleScript

INSTALLER = Path(__file__).resolve().parents[1] / "scripts" / "install-agent-clis"
INSTALL_TIMEOUT_S = 900.0
ITEM_DEADLINE_S = 300.0
BARE_TIMEOUT_S = 120.0
BUDGET_MS_PER_STAGE = 30.0
KEY_ENV = "CONVEYOR_BENCH_MODEL_KEY"
ROLES = ("analyst", "architect", "developer", "reviewer", "tester", "deployer")
MODELS = {
    "claude": "claude-sonnet-4-5",
    "codex": "gpt-5.5",
    "gemini": "gemini-2.5-flash",
    "opencode": "fake-model",
    "aider": "fake",
}
ARGS: dict[str, list[str]] = {"aider": ["--edit-format", "whole"]}
CHECK = ["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]


@dataclass
class StageRun:
    """One agent stage of one item: Conveyor's figures and the bare run's."""

    stage: str
    role: str
    stage_s: float
    cli_s: float
    prompt: str
    cli_own_ms: float | None
    bare_s: float = 0.0
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

    def start(self) -> None:
        self.node.start()
        self.client = Client(self.node.url)
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
        body = {"repo": "demo", "title": "Greet the user", "description": "", "id": task_id}
        reply = client.command("submit", body)
        if not reply.get("ok"):
            raise RuntimeError(f"submit refused: {reply.get('error')}")
        self._wait_done(client, task_id)
        record = client.request(subjects.status_task(task_id))
        return self._stage_runs(client, record)

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
                if "approve" in msg.text:
                    client.command("approve", {"id": task_id})
                elif "escalated" in msg.text:
                    raise RuntimeError(f"{task_id}: {msg.text}")
            elif msg.new == DONE:
                return

    def _stage_runs(self, client: Client, record: dict[str, Any]) -> list[StageRun]:
        history = record.get("history", [])
        spans = {
            entry["new"]: nxt["at"] - entry["at"] for entry, nxt in itertools.pairwise(history)
        }
        store = client.bus.store(subjects.BUCKET_RUNS, Run)
        runs = [e.value for e in store.load_all().values() if e.value.task_id == record["id"]]
        found = []
        for run in sorted(runs, key=lambda r: r.started_at):
            run_dir = Path(run.run_dir)
            prompt, exit_file = run_dir / "prompt.md", run_dir / "exit_code"
            if not run.outcome or run.stage not in spans or not exit_file.exists():
                continue  # a deploy command Conveyor ran itself, not a CLI
            cli_s = exit_file.stat().st_mtime - prompt.stat().st_mtime
            own = own_ms(Path(run.log_path).read_text(errors="replace"))
            found.append(
                StageRun(run.stage, run.role, spans[run.stage], cli_s, prompt.read_text(), own)
            )
        return found


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


# --- floor side ----------------------------------------------------------------------------


def bare_run(
    cli: str, binary: str, url: str, script: RoleScript, scratch: Path, prompt: str
) -> tuple[float, float | None]:
    """Spawn-to-exit seconds of the CLI alone, with the adapter's argv, in a fresh git dir.

    With the run time the CLI reports itself, when it does.
    """
    workdir, run_dir = scratch / "repo", scratch / "run"
    workdir.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    script.workdir = workdir
    request = AgentRequest(
        binary=binary,
        prompt=prompt,
        workdir=workdir,
        run_dir=run_dir,
        env={"PATH": f"{Path(binary).parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        model=MODELS[cli],
        extra_args=tuple(ARGS.get(cli, [])),
        base_url=url,
        api_key="dummy",
        as_root=os.geteuid() == 0,
        max_retries=1,
        request_timeout_s=30.0,
    )
    plan = adapter_for(cli).plan(request)
    plan.materialize()
    started = time.perf_counter()
    done = subprocess.run(
        plan.argv,
        cwd=plan.cwd,
        env=plan.env,
        input=plan.stdin,
        stdin=None if plan.stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BARE_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(f"  bare run exited {done.returncode}: {done.stderr[-300:]}", file=sys.stderr)
    return elapsed, own_ms(done.stdout)


# --- report --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.0f}"


def report(results: Results, items: int, cli: str) -> None:
    print()
    print(f"per agent stage, median over {items} item(s) (ms):")
    header = (
        f"  {'stage':<14} {'stage':>8} {'cli':>8} {'conveyor':>9} {'bare':>8} {'over bare':>10}"
    )
    print(header)
    overs, owns = [], []
    for name in dict.fromkeys(s.stage for s in results.stages):
        rows = results.of(name)
        stage = statistics.median(r.stage_s for r in rows)
        cli_s = statistics.median(r.cli_s for r in rows)
        bare = statistics.median(r.bare_s for r in rows)
        overs.append(stage - bare)
        owns.append(stage - cli_s)
        print(
            f"  {name:<14} {_ms(stage)} {_ms(cli_s)} {_ms(stage - cli_s):>9} {_ms(bare)} "
            f"{_ms(stage - bare):>10}"
        )
    reported = [
        (r.cli_own_ms, r.bare_own_ms)
        for r in results.stages
        if r.cli_own_ms is not None and r.bare_own_ms is not None
    ]
    if reported:
        # The CLI's own timer leaves out its start-up: this splits the cli - bare difference.
        inside = statistics.median(c for c, _ in reported)
        alone = statistics.median(b for _, b in reported)
        print(
            f"  the CLI's own reported run time (median): {inside:.0f} ms under Conveyor, "
            f"{alone:.0f} ms bare"
        )
    print()
    own, over = statistics.mean(owns) * 1000, statistics.mean(overs) * 1000
    print(f"{cli}: Conveyor's own time per agent stage (stage - cli), mean {own:7.0f} ms")
    print(f"{cli}: over a bare run of the same CLI (stage - bare), mean   {over:7.0f} ms")
    verdict = "PASS" if over <= BUDGET_MS_PER_STAGE else "MISS"
    print(f"target: ≤ {BUDGET_MS_PER_STAGE:.0f} ms per stage over a bare run (SPEC §8) — {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cli", default="claude", choices=sorted(MODELS), help="the agent CLI")
    parser.add_argument("--items", type=int, default=1, help="items, one after another")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.items < 1:
        parser.error("--items must be >= 1")
    logs.configure("warning")
    binary = install()[args.cli]
    root = Path(tempfile.mkdtemp(prefix="conveyor-bench-agents-"))
    print(f"agents bench: {args.cli} on every agent role, {args.items} item(s)")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {sys.platform}")
    print(f"scratch: {root}")
    os.environ[KEY_ENV] = "dummy"
    script = RoleScript(workdir=root, whole_format=args.cli == "aider")
    model = FakeModel(script)
    model.start()
    side = ConveyorSide(_config(root / "conveyor", args.cli, binary, model.url), script)
    results = Results()
    try:
        side.start()
        for number in range(1, args.items + 1):
            runs = side.one(number)
            for index, stage_run in enumerate(runs):
                scratch = root / "bare" / f"{number}-{index}"
                stage_run.bare_s, stage_run.bare_own_ms = bare_run(
                    args.cli, binary, model.url, script, scratch, stage_run.prompt
                )
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
