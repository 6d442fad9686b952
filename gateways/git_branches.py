"""A workspace clone's lock between processes, and the removal of a task branch from it.

The Launcher's jobs and the Janitor (in another process when control and the
launcher run apart) both change a repository's workspace clone: worktrees added
and removed, refs fetched and deleted. Git's own lock files make a loser fail
rather than wait. So the Launcher's jobs hold the clone's lock shared
(`workspace_lock`), and the Janitor takes it exclusive without waiting
(`janitor_lock`), giving up for now while any job holds it. A job never waits on
another process: a launcher frozen (SIGSTOP) or hung while it holds the lock
delays only the Janitor's clean-up, never another launcher's work.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

from conveyor import validate
from conveyor.logs import get_logger
from gateways import git

log = get_logger(__name__)


def lock_path(clone: Path) -> Path:
    """The lock file of a workspace clone: beside it, never inside (git owns that)."""
    return clone.parent / f".{clone.name}.lock"


class WorkspaceBusy(Exception):
    """A job holds the workspace clone: the Janitor tries again later."""


@contextlib.contextmanager
def workspace_lock(clone: Path, thread_lock: threading.Lock | None = None) -> Iterator[None]:
    """Hold `clone`'s lock shared against the Janitor (and `thread_lock` within this process)."""
    with thread_lock or contextlib.nullcontext(), _flock(lock_path(clone), fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def janitor_lock(clone: Path) -> Iterator[None]:
    """Hold `clone`'s lock exclusive, or raise WorkspaceBusy at once if a job holds it."""
    try:
        with _flock(lock_path(clone), fcntl.LOCK_EX | fcntl.LOCK_NB):
            yield
    except BlockingIOError as err:
        raise WorkspaceBusy(f"{clone} is in use by a job") from err


@contextlib.contextmanager
def _flock(path: Path, how: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Each open() is its own open file description, so threads hold their own locks.
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), how)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def delete_local_branch(clone: Path, branch: str) -> None:
    """Delete `branch` and its remote-tracking ref from `clone`; no-op for what is gone.

    The task's worktree must be removed first: git keeps a branch a worktree has out.
    """
    validate.branch(branch)
    if not clone.is_dir():
        return
    for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"):
        # Deleting a ref that is not there is no error: a retry after a crash is a no-op.
        git.run_git(["update-ref", "-d", ref], clone)
    log.info("git.branch_deleted", path=str(clone), branch=branch)
