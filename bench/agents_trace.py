"""Where Conveyor's time around a CLI run goes: every bus message and KV write, timed.

A core NATS subscription on `conveyor.>` and `$KV.>` sees what the node's actors publish
(launch orders included, which a work-queue stream drops once acknowledged) and records
the time this process received each. With the run directory's timestamps (prompt file
written just before the spawn, exit-code file written as the CLI exits) that splits each
agent stage into phases; `--profile` prints the whole timeline of the last item.
"""

from __future__ import annotations

import functools
import json
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.app.client import Client
from conveyor.clock import SystemClock
from gateways import git
from gateways.local_forge import LocalForge

SUBJECTS = ("conveyor.>", "$KV.>")
PHASES = (
    ("enter→order", "the stage entered → its LaunchOrder"),
    ("order→spawn", "LaunchOrder → prompt written, CLI spawned"),
    ("cli", "spawn → the CLI's exit (exit-code file)"),
    ("exit→finished", "the CLI's exit → JobFinished"),
    ("finished→next", "JobFinished → the next stage entered"),
)


@dataclass(frozen=True)
class Event:
    at: float
    subject: str
    body: dict[str, Any]


class Trace:
    """What the bus carried, in order, with receipt times."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.events: list[Event] = []
        self.clock = SystemClock()

    def start(self) -> None:
        async def _cb(msg: Any) -> None:
            at = self.clock.now()
            try:
                body = json.loads(msg.data) if msg.data else {}
            except ValueError:
                body = {}
            with self.lock:
                self.events.append(Event(at, msg.subject, body if isinstance(body, dict) else {}))

        async def _sub() -> None:
            for subject in SUBJECTS:
                await self.client.bus.nc.subscribe(subject, cb=_cb)

        self.client.bus.call(_sub())

    def time_calls(self) -> None:
        """Record every git command and the forge's CI check as a timed interval.

        In-process wrappers, both sides use them: the bench takes (and drops) the
        floor's before each Conveyor item.
        """

        def _git(args: tuple[Any, ...]) -> str:
            words = [a for a in args[0] if not a.startswith("-")]
            return "git " + " ".join(words[:1])

        self._wrap(git, "run_git_result", _git)
        self._wrap(LocalForge, "_run_check", lambda _: "CI check")

    def _wrap(self, owner: Any, name: str, label: Callable[[tuple[Any, ...]], str]) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = self.clock.now()
            try:
                return original(*args, **kwargs)
            finally:
                took = (self.clock.now() - started) * 1000
                thread = threading.current_thread().name
                subject = f"({label(args)} {took:.1f} ms, {thread})"
                with self.lock:
                    self.events.append(Event(started, subject, {}))

        setattr(owner, name, timed)

    def take(self) -> list[Event]:
        with self.lock:
            taken, self.events = self.events, []
        return taken


@dataclass(frozen=True)
class RunFiles:
    """A CLI run as its run directory dates it."""

    job_id: str
    stage: str
    spawned: float
    exited: float


def phases(events: list[Event], runs: list[RunFiles]) -> dict[str, dict[str, float]]:
    """Per stage, the seconds of each phase (`PHASES`) of its CLI run."""
    entered = {e.body["new"]: e.at for e in events if e.body.get("type") == "StageChanged"}
    orders = _first(events, "LaunchOrder")
    finished = _first(events, "JobFinished")
    result: dict[str, dict[str, float]] = {}
    for run in runs:
        nxt = min((at for at in entered.values() if at > run.exited), default=None)
        if run.stage not in entered or run.job_id not in orders or nxt is None:
            continue
        order, done = orders[run.job_id], finished.get(run.job_id, run.exited)
        result[run.stage] = {
            "enter→order": order - entered[run.stage],
            "order→spawn": run.spawned - order,
            "cli": run.exited - run.spawned,
            "exit→finished": done - run.exited,
            "finished→next": nxt - done,
        }
    return result


def _first(events: list[Event], kind: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for event in events:
        if event.body.get("type") == kind:
            found.setdefault(str(event.body.get("job_id")), event.at)
    return found


# Each Conveyor phase against the floor's part that does the same work.
VERSUS = (
    ("before spawn", ("enter→order", "order→spawn"), "prep_s"),
    ("cli", ("cli",), "cli_s"),
    ("after exit", ("exit→finished",), "post_s"),
    ("to next stage", ("finished→next",), "gate_s"),
)


def print_phases(rows: list[tuple[str, dict[str, float], Any]]) -> None:
    """Per stage, Conveyor's phases and the floor's parts (`FloorStage`), median ms."""
    stages = list(dict.fromkeys(stage for stage, split, _ in rows if split))
    print()
    print("where a stage's time goes, Conveyor / floor, median (ms):")
    print(f"  {'stage':<14}" + "".join(f" {name:>14}" for name, _ in PHASES))
    for stage in stages:
        splits = [split for name, split, _ in rows if name == stage and split]
        cells = "".join(
            f" {statistics.median(s[n] for s in splits) * 1000:14.0f}" for n, _ in PHASES
        )
        print(f"  {stage:<14}{cells}")
    for name, meaning in PHASES:
        print(f"  {name}: {meaning}")
    heads = "".join(f" {name:>20}" for name, _, _ in VERSUS)
    print(f"  {'stage':<14}{heads} {'outside cli c-f':>16}")
    for stage in stages:
        mine = [(split, floor) for name, split, floor in rows if name == stage and split]
        cells, outside = "", 0.0
        for name, parts, attr in VERSUS:
            conveyor = statistics.median(sum(s[p] for p in parts) for s, _ in mine) * 1000
            floor = statistics.median(getattr(f, attr) for _, f in mine) * 1000
            cells += f" {f'{conveyor:.0f} / {floor:.0f}':>20}"
            outside += 0.0 if name == "cli" else conveyor - floor
        print(f"  {stage:<14}{cells} {outside:16.0f}")
    print(
        "  before spawn: the floor's worktree, prompt and plan; cli: the floor's bare run;\n"
        "  after exit: the floor's commit, push, pull request, CI; to next stage: its gate read;\n"
        "  outside cli c-f: Conveyor - floor in all but the CLI run (the least noisy part)"
    )


def print_timeline(events: list[Event], runs: list[RunFiles]) -> None:
    """Every event of one item, ms after the first, with the gap since the previous one."""
    marks = [Event(e.at, e.subject, e.body) for e in events]
    for run in runs:
        marks.append(Event(run.spawned, f"(run dir) {run.job_id}", {"type": "spawned"}))
        marks.append(Event(run.exited, f"(run dir) {run.job_id}", {"type": "exited"}))
    marks.sort(key=lambda e: e.at)
    if not marks:
        return
    print()
    print("timeline of the last item (ms since its first event, gap since the previous):")
    first = previous = marks[0].at
    for mark in marks:
        kind = mark.body.get("type", "")
        detail = mark.body.get("new") or mark.body.get("job_id") or ""
        print(
            f"  {(mark.at - first) * 1000:9.1f} {(mark.at - previous) * 1000:+8.1f}  "
            f"{mark.subject} {kind} {detail}"
        )
        previous = mark.at


def run_files(job_id: str, stage: str, run_dir: Path) -> RunFiles | None:
    prompt, exit_file = run_dir / "prompt.md", run_dir / "exit_code"
    if not exit_file.exists() or not prompt.exists():
        return None  # a deploy command Conveyor runs itself: no prompt
    return RunFiles(job_id, stage, prompt.stat().st_mtime, exit_file.stat().st_mtime)
