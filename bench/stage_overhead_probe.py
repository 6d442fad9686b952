"""What each side of the stage-overhead bench did, and the results of a run.

`Probe` counts spawns, agent reap delays and JetStream writes by wrapping
`subprocess.Popen`, `Bus.publish` and `Store.create/update` in this process.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.bridge import Bus, Store
from conveyor import runwrap
from conveyor.clock import SystemClock
from conveyor.config import Config
from conveyor.pipeline import CREATED

TITLE = "Add a greeting feature"
REPO = "demo"
"""The work item both sides deliver, and its repository."""

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
        if runwrap.is_wrapper(args):
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
    return [CREATED, *(s.name for s in cfg.pipeline.stages)]


def add_stage_times(result: RunResult, names: list[str], marks: list[float]) -> None:
    """Append each stage's duration, from consecutive `marks`, to `result`."""
    for name, start, end in zip(names, marks, marks[1:], strict=False):
        result.stage_seconds.setdefault(name, []).append(end - start)
