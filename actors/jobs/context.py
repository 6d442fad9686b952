"""What every step of one launch is given: the explicit context, and what it reports back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from actors.jobs.lease_wake import LeaseWaker
from actors.jobs.meter import RunMeter
from bus.effects import Ledger
from bus.messages import LeaseRelease, LeaseReply
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.errors import ConveyorError
from conveyor.layout import Layout
from gateways import git_branches
from gateways.forge import Forge


class Abandoned(ConveyorError):
    """This launcher stopped; the run is left for the next incarnation to adopt."""


KILLED = "killed: job cancelled"
"""The error of a run whose job a KillJob cancelled."""


class RunStarted(msgspec.Struct, frozen=True):
    """Run thread -> Launcher: the process exists.

    `adopted`: a previous incarnation started it; only its pid is news (a kill target).
    """

    run_id: str
    pid: int
    create_time: float
    adopted: bool = False


class RunDone(msgspec.Struct, frozen=True):
    """Run thread -> Launcher: the run and its post-steps are over."""

    run_id: str
    exit_code: int | None
    head_sha: str = ""
    error: str = ""
    usage: dict[str, Any] = msgspec.field(default_factory=dict)
    defer_s: float = 0.0
    outcome: str = ""
    reason: str = ""


LeaseRequest = Callable[[str, msgspec.Struct], LeaseReply]
"""Ask the LeaseKeeper (subject, request); an unreachable keeper answers not granted."""

ReportStarted = Callable[[RunStarted, bool], None]
"""Tell the Launcher a process exists; with True, return only once it stored the pid."""


class RepoLocks:
    """One lock per repository: its workspace clone is shared by every task's worktree.

    With `workspace` (a repository's clone path), also the clone's lock held shared,
    so the Janitor (which takes it exclusive, never waiting) leaves the clone alone
    while a job uses it; launchers never wait on each other's processes.
    """

    def __init__(self, workspace: Callable[[str], Path] | None = None) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._workspace = workspace

    def __call__(self, repo: str) -> AbstractContextManager[object]:
        with self._guard:
            lock = self._locks.setdefault(repo, threading.Lock())
        if self._workspace is None:
            return lock
        return git_branches.workspace_lock(self._workspace(repo), lock)


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """Everything one run may use; never the Launcher actor itself."""

    cfg: Config
    clock: Clock
    layout: Layout
    forge: Forge
    effects: Ledger
    lease: LeaseRequest
    launcher: str
    """The launcher's stable name (a restarted launcher adopts the runs of its name)."""
    host: str
    python: str
    """The interpreter that replaces `{python}` in configured commands."""
    repo_lock: RepoLocks
    abandoned: threading.Event
    """Set when this launcher incarnation stops."""
    report_started: ReportStarted
    report_done: Callable[[RunDone], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set by the Launcher when a KillJob for this run's job arrives."""
    meter: RunMeter = field(default_factory=RunMeter)
    """The run's running totals, read by the Launcher's heartbeat."""
    lease_waker: LeaseWaker = field(default_factory=LeaseWaker)
    """Wakes a run refused a lease when the keeper frees it or comes back."""
    release_later: Callable[[LeaseRelease], None] = lambda _release: None
    """Hands a release the keeper did not answer to the stream it consumes when back."""
