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
import collections
import contextlib
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors import launcher_policy
from actors.stage_policy import (
    ADR_DIR,
    GATE_FILES,
    STEP_WORK,
    GateInputs,
    Task,
    artifact_path,
    evaluate_gate,
    job_id_for,
)
from bus import subjects
from bus.bridge import Bus, Store
from bus.messages import Alert, LaunchOrder, StageChanged
from conveyor import config as config_mod
from conveyor import logs, runwrap, validate
from conveyor.agents import demo_repo as demo
from conveyor.app.client import Client
from conveyor.app.node import Node
from conveyor.clock import SystemClock
from conveyor.config import Config, python_argv
from conveyor.layout import Layout
from gateways import git
from gateways.local_forge import LocalForge

TARGET_RATIO = 1.30
BUDGET_MS_PER_STAGE = 30.0
TITLE = "Add a greeting feature"
REPO = "demo"
ITEM_DEADLINE_S = 300.0


# --- accounting ----------------------------------------------------------------------------

AGENT_KIND = "agent (runwrap + demo agent)"


@dataclass
class Tally:
    """What one side did during one run: spawns, agent reap delays, JetStream writes."""

    spawns: collections.Counter[str] = field(default_factory=collections.Counter)
    reap_s: list[float] = field(default_factory=list)
    bus_ops: int = 0
    bus_s: float = 0.0

    def since(self, before: Tally) -> Tally:
        return Tally(
            spawns=self.spawns - before.spawns,
            reap_s=self.reap_s[len(before.reap_s) :],
            bus_ops=self.bus_ops - before.bus_ops,
            bus_s=self.bus_s - before.bus_s,
        )


class Probe:
    """Counts this process's spawns (git by subcommand, agents, CI), agent reap delays and
    JetStream writes, by wrapping `subprocess.Popen`, `Bus.publish` and `Store.create/update`.

    The reap delay of an agent is the time from `conveyor.runwrap` recording its exit code
    (`finished_at` in the exit file) to the parent's `wait` returning. The wrappers cost
    microseconds, against milliseconds for what they wrap, and apply to both sides alike.
    """

    def __init__(self) -> None:
        self._tally = Tally()
        self._lock = threading.Lock()
        self._clock = SystemClock()

    @staticmethod
    def kind(argv: Any) -> str:
        args = [str(a) for a in argv] if isinstance(argv, list | tuple) else [str(argv)]
        exe = os.path.basename(args[0]) if args else "?"
        if exe == "git":
            # Skip options, `-c key=value` pairs and `--git-dir=...` to find the subcommand.
            rest = iter(args[1:])
            for arg in rest:
                if arg == "-c":
                    next(rest, None)
                elif not arg.startswith("-"):
                    return f"git {arg}"
            return "git"
        if "conveyor.runwrap" in args:
            return AGENT_KIND
        if "-m" in args and args.index("-m") + 1 < len(args):
            return f"python -m {args[args.index('-m') + 1]}"
        return exe

    def _spawned(self, kind: str) -> None:
        with self._lock:
            self._tally.spawns[kind] += 1

    def _reaped(self, exit_file: Path) -> None:
        recorded = runwrap.read_exit_file(exit_file)
        if recorded is not None:
            with self._lock:
                self._tally.reap_s.append(self._clock.now() - recorded[1])

    def _timed(self, original: Any) -> Any:
        probe = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with probe._lock:
                    probe._tally.bus_ops += 1
                    probe._tally.bus_s += elapsed

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        probe = self
        original_popen = subprocess.Popen

        class ProbedPopen(original_popen):  # type: ignore[misc, valid-type]
            def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
                kind = Probe.kind(args)
                self._exit_file: Path | None = None
                if kind == AGENT_KIND:
                    argv = [str(a) for a in args]
                    self._exit_file = Path(argv[argv.index("--exit-file") + 1])
                probe._spawned(kind)
                super().__init__(args, *rest, **kwargs)

            def wait(self, timeout: float | None = None) -> int:
                code: int = super().wait(timeout)
                if self._exit_file is not None:
                    exit_file, self._exit_file = self._exit_file, None
                    probe._reaped(exit_file)
                return code

        patched = [
            (subprocess, "Popen", ProbedPopen),
            (Bus, "publish", self._timed(Bus.publish)),
            (Store, "create", self._timed(Store.create)),
            (Store, "update", self._timed(Store.update)),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
        for owner, name, value in patched:
            setattr(owner, name, value)
        try:
            yield self
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)

    def snapshot(self) -> Tally:
        with self._lock:
            t = self._tally
            return Tally(collections.Counter(t.spawns), list(t.reap_s), t.bus_ops, t.bus_s)


# --- results -------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run (N items in sequence) of one side."""

    seconds: float
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)


def stage_names(cfg: Config) -> list[str]:
    """Stages an item spends time on: created (intake) and every pipeline stage."""
    return ["created", *(s.name for s in cfg.pipeline.stages)]


def _add_stage_times(result: RunResult, names: list[str], marks: list[float]) -> None:
    for name, start, end in zip(names, marks, marks[1:], strict=False):
        result.stage_seconds.setdefault(name, []).append(end - start)


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
                if "approve" in msg.text:
                    answer = client.command("approve", {"id": task_id})
                    if not answer.get("ok"):
                        raise RuntimeError(f"approve refused: {answer.get('error')}")
                elif "escalated" in msg.text:
                    raise RuntimeError(f"{task_id}: {msg.text}")
                continue
            if msg.new == "done":
                elapsed = time.perf_counter() - started
                break
            if msg.new == "cancelled":
                raise RuntimeError(f"{task_id} was cancelled: {msg.cause}")
        record = client.request(subjects.status_task(task_id))
        marks = [entry["at"] for entry in record.get("history", [])]
        _add_stage_times(result, names, marks)
        return elapsed


# --- floor side ----------------------------------------------------------------------------


class FloorSide:
    """The same git operations, forge calls and agent spawns, in one plain sequential loop."""

    def __init__(self, data_dir: Path) -> None:
        self.cfg = config_mod.load(env={}, overrides={"data_dir": str(data_dir)})
        self.layout = Layout(self.cfg.data_path)
        self.repo_cfg = self.cfg.repo(REPO)
        checks = {r.name: python_argv(r.check_command) for r in self.cfg.repos if r.check_command}
        self.forge = LocalForge(
            self.layout.forge, checks, check_timeout_s=self.cfg.forge.check_timeout_s
        )
        self.next_number = 1

    def start(self) -> None:
        # As the Node does at start-up (not timed on either side).
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.forge.create_repo(REPO, initial_files=demo.create_demo_files())

    def run(self, items: int) -> RunResult:
        names = stage_names(self.cfg)
        result = RunResult(seconds=0.0)
        for _ in range(items):
            task_id = f"{self.repo_cfg.prefix}-{self.next_number}"
            self.next_number += 1
            started = time.perf_counter()
            marks = self._one(task_id)
            result.seconds += time.perf_counter() - started
            _add_stage_times(result, names, [started, *marks])
        return result

    def _one(self, task_id: str) -> list[float]:
        """Deliver one item; return the time each stage's gate passed."""
        branch = validate.branch_for(task_id, TITLE)
        task = Task(id=task_id, repo=REPO, title=TITLE, branch=branch, step="intake")
        marks: list[float] = []
        # created: the built-in intake job, then the branch_exists gate.
        worktree = self._prepare_worktree(task_id, branch)
        git.push_branch(worktree, branch)
        self._gate(task, "branch_exists")
        marks.append(time.perf_counter())
        for stage in self.cfg.pipeline.stages:
            task = Task(
                id=task_id, repo=REPO, title=TITLE, branch=branch, stage=stage.name, step=STEP_WORK
            )
            self._agent(task, stage.name, stage.role, step=STEP_WORK)
            if stage.human_approval:
                # Conveyor reads the gate, waits for the approval, then reads it again.
                self._gate(task, stage.gate)
                task = Task(
                    id=task_id,
                    repo=REPO,
                    title=TITLE,
                    branch=branch,
                    stage=stage.name,
                    step=STEP_WORK,
                    approved=True,
                )
            self._gate(task, stage.gate)
            if stage.merge:
                self._merge(task_id, branch)
                self._gate(task, "pr_merged")
            marks.append(time.perf_counter())
        return marks

    def _prepare_worktree(self, task_id: str, branch: str) -> Path:
        worktree = self.layout.worktree(REPO, task_id)
        git.ensure_clone(self.forge.clone_url(REPO), self.layout.workspace(REPO))
        git.ensure_worktree(self.layout.workspace(REPO), worktree, branch)
        return worktree

    def _agent(self, task: Task, stage: str, role: str, *, step: str) -> None:
        order = LaunchOrder(
            job_id=job_id_for(task.id, stage, 1, step),
            attempt=1,
            task_id=task.id,
            repo=REPO,
            stage=stage,
            role=role,
            visit=1,
            branch=task.branch,
            title=TITLE,
            description="",
        )
        worktree = self._prepare_worktree(task.id, task.branch)
        run_dir = self.layout.run_dir(order.job_id, order.attempt)
        run_dir.mkdir(parents=True, exist_ok=True)
        prompt_path = run_dir / "prompt.md"
        prompt_path.write_text(launcher_policy.prompt(order))
        exit_file = run_dir / "exit_code"
        agent = self.cfg.agents.for_role(role)
        env = launcher_policy.agent_env(
            os.environ,
            order,
            repo=self.repo_cfg,
            worktree=str(worktree),
            python=sys.executable,
            extra=agent.env,
        )
        argv = launcher_policy.wrapped_argv(
            agent.command,
            order,
            exit_file=str(exit_file),
            worktree=str(worktree),
            python=sys.executable,
        )
        with prompt_path.open("rb") as stdin, (run_dir / "output.log").open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=worktree,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc.wait()
        recorded = runwrap.read_exit_file(exit_file)
        code = recorded[0] if recorded else proc.returncode
        if code != 0:
            raise RuntimeError(f"floor: {role} on {stage} exited {code} (see {run_dir})")
        # The Launcher's post-steps: commit, push, pull request, CI.
        git.commit_all(worktree, f"{role}: {task.id} {stage} (visit 1, attempt 1)")
        sha = git.push_branch(worktree, task.branch)
        if self.forge.find_pull(REPO, task.branch) is None:
            self.forge.open_pull(
                REPO, task.branch, f"{task.id}: {TITLE}", f"Work item {task.id}, delivered."
            )
        if self.forge.commit_status(REPO, sha) is None:
            self.forge.on_push(REPO, task.branch, sha)

    def _merge(self, task_id: str, branch: str) -> None:
        """The built-in merge job of a `merge = true` stage."""
        head = self.forge.branch_head(REPO, branch)
        if head is None:
            raise RuntimeError(f"floor: branch {branch} missing before merge")
        pull = self.forge.find_pull(REPO, branch)
        if pull is None:
            pull = self.forge.open_pull(REPO, branch, f"{task_id}: {TITLE}", "Opened before merge.")
        if not pull.merged:
            self.forge.merge_pull(REPO, pull.number, expected_head_sha=head)

    def _gate(self, task: Task, gate: str, expect: str = "pass") -> None:
        """Read what the gate reads from the forge at the branch head, and decide it."""
        forge = self.forge
        head = forge.branch_head(REPO, task.branch)
        files: dict[str, str | None] = {}
        adr_files: dict[str, str] = {}
        ci_state = None
        pr_merged = None
        if gate != "branch_exists" and head is not None:
            for name in GATE_FILES.get(gate, ()):
                path = artifact_path(task.id, name)
                data = forge.read_file(REPO, head, path)
                files[path] = None if data is None else data.decode("utf-8", "replace")
            if gate == "architecture_done":
                adr_dir = artifact_path(task.id, ADR_DIR)
                for name in sorted(forge.list_dir(REPO, head, adr_dir)):
                    if name.endswith(".md"):
                        data = forge.read_file(REPO, head, f"{adr_dir}/{name}")
                        if data is not None:
                            adr_files[name] = data.decode("utf-8", "replace")
            if gate == "ci_green":
                status = forge.commit_status(REPO, head)
                ci_state = status.state if status else None
            if gate == "pr_merged":
                pull = forge.find_pull(REPO, task.branch)
                pr_merged = bool(pull and pull.merged)
        inputs = GateInputs(
            files=files,
            adr_files=adr_files,
            branch_head=head,
            ci_state=ci_state,
            pr_merged=pr_merged,
        )
        verdict = evaluate_gate(gate, task, inputs)
        if verdict.verdict != expect:
            raise RuntimeError(f"floor: gate {gate} said {verdict.verdict}: {verdict.reason}")


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
