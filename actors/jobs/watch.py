"""Live reading of an agent run: its output as it is written, and the brakes applied to it.

The run thread blocks on the process's exit (a pidfd wakes it at once) with a short
timeout; each wake-up reads the bytes the log gained and feeds them to the adapter's
parser. Output or a worktree change is activity: silence past `stall_s` kills the tree,
and so do running totals past a per-run ceiling.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from actors import launcher_policy as policy
from actors.jobs.meter import RunMeter
from actors.launcher_policy import LaunchPlan
from conveyor import procs, runwrap
from conveyor.pipeline import OUTCOME_OVER_BUDGET, OUTCOME_STALLED, OUTCOME_TIMED_OUT
from gateways.agents.base import (
    AgentResult,
    LineBuffer,
    ModelPrice,
    OutputParser,
    Stream,
    Usage,
    price_usd,
    with_price,
)

POLL_S = 0.25
"""How often a running agent's log is read; its exit is seen at once regardless."""
WORKTREE_SAMPLE_S = 1.0
"""How often, at most, a silent run's worktree is looked at for changes."""
READ_CHUNK = 64 * 1024


class Watched(NamedTuple):
    """How a watched run ended: its exit code (None: killed), the parser's verdict, the brake.

    `stopped` is the outcome of a brake that killed it ("" when it ran to its end).
    """

    exit_code: int | None
    result: AgentResult
    stopped: str
    reason: str
    usage: dict[str, Any]


def usage_dict(usage: Usage, cost_usd: float | None) -> dict[str, Any]:
    """Tokens and cost in the shape runs, heartbeats and job results carry."""
    out: dict[str, Any] = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
    }
    if cost_usd is not None:
        out["cost_usd"] = cost_usd
    return out


def stream_of(line: str) -> Stream:
    """The log merges both streams: JSON events are stdout, anything else counts as stderr."""
    return "stdout" if line.lstrip().startswith("{") else "stderr"


def newest_mtime(root: Path) -> float:
    """The newest modification time under `root`, `.git` left out (cheap enough once a second)."""
    newest = 0.0
    stack = [root]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name == ".git":
                    continue
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
    return newest


class _Reader:
    """The log's new bytes, decoded and split into lines, fed to the parser."""

    def __init__(self, path: Path, parser: OutputParser, *, start: int | None = None) -> None:
        self._handle = path.open("rb")
        # A live run's log is read from where it stood at the spawn; a replay from `start`.
        if start is None:
            self._handle.seek(0, os.SEEK_END)
        else:
            self._handle.seek(start)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines = LineBuffer()
        self.parser = parser

    def pump(self, *, final: bool = False) -> bool:
        """Feed what was written since the last call; True if there was any."""
        got = False
        if os.fstat(self._handle.fileno()).st_size < self._handle.tell():
            # The Janitor rotated the log (copied, then truncated it): go on from its start.
            self._handle.seek(0)
        while chunk := self._handle.read(READ_CHUNK):
            got = True
            for line in self._lines.push(self._decoder.decode(chunk)):
                self.parser.feed(line, stream_of(line))
        if final:
            for line in self._lines.flush():
                self.parser.feed(line, stream_of(line))
            self._handle.close()
        return got


def replay(log_path: Path, parser: OutputParser) -> None:
    """Feed a whole log to `parser`, as if it had been read live (an adopted run's)."""
    with contextlib.suppress(FileNotFoundError):
        reader = _Reader(log_path, parser, start=0)
        reader.pump(final=True)


class Prices(NamedTuple):
    """How a run without a CLI-reported cost is priced."""

    model: str | None
    table: Mapping[str, ModelPrice]


def run_watched(
    plan: LaunchPlan,
    parser: OutputParser,
    *,
    cwd: Path,
    log_path: Path,
    prices: Prices,
    meter: RunMeter,
    kill_grace_s: float,
    on_started: Callable[[int, float], None],
    stdin_path: Path | None = None,
) -> Watched:
    """Run `plan.argv` (behind the exit-code wrapper) to its end or until a brake stops it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    reader = _Reader(log_path, parser)
    with contextlib.ExitStack() as stack:
        stdin: Any = subprocess.DEVNULL
        if stdin_path is not None:
            stdin = stack.enter_context(stdin_path.open("rb"))
        proc, create_time = procs.spawn(
            plan.argv, cwd=cwd, stdin=stdin, log_path=str(log_path), env=plan.env
        )
    on_started(proc.pid, create_time)
    brake = _Brakes(plan, cwd, prices)
    stopped = reason = ""
    while True:
        exited = procs.wait_exit(proc.pid, POLL_S)
        if reader.pump():
            brake.active()
        meter.set(brake.totals(parser.usage))
        if exited:
            break
        stopped, reason = brake.check(parser.usage)
        if stopped:
            procs.kill_tree(proc.pid, kill_grace_s)
            break
    proc.wait()
    reader.pump(final=True)
    exit_code: int | None = None
    if not stopped:
        recorded = runwrap.read_exit_file(Path(plan.exit_file))
        exit_code = recorded[0] if recorded is not None else proc.returncode
    result = with_price(parser.finish(exit_code), prices.model, prices.table)
    usage = usage_dict(result.usage, result.cost_usd)
    meter.set(usage)
    return Watched(exit_code, result, stopped, reason, usage)


class _Brakes:
    """The timers and ceilings of one run (monotonic time: a stall is measured, not dated)."""

    def __init__(self, plan: LaunchPlan, worktree: Path, prices: Prices) -> None:
        self._plan = plan
        self._worktree = worktree
        self._prices = prices
        self._started = self._last = time.monotonic()
        self._sampled = self._started
        self._mtime = newest_mtime(worktree) if plan.stall_s > 0 else 0.0

    def active(self) -> None:
        self._last = time.monotonic()

    def totals(self, usage: Usage) -> dict[str, Any]:
        return usage_dict(usage, price_usd(self._prices.model, usage, self._prices.table))

    def check(self, usage: Usage) -> tuple[str, str]:
        """(outcome, reason) of the brake to apply now; ("", "") to let the run go on."""
        now = time.monotonic()
        if now - self._started > self._plan.timeout_s:
            return OUTCOME_TIMED_OUT, f"timed out after {self._plan.timeout_s:g}s"
        cost = price_usd(self._prices.model, usage, self._prices.table)
        ceiling = policy.over_budget(self._plan, usage.total_tokens, cost)
        if ceiling:
            return OUTCOME_OVER_BUDGET, ceiling
        stall_s = self._plan.stall_s
        if stall_s <= 0:
            return "", ""
        if now - self._last >= WORKTREE_SAMPLE_S and now - self._sampled >= WORKTREE_SAMPLE_S:
            self._sampled = now
            mtime = newest_mtime(self._worktree)
            if mtime > self._mtime:
                self._mtime, self._last = mtime, now
        if now - self._last > stall_s:
            return OUTCOME_STALLED, policy.stalled_reason(stall_s)
        return "", ""
