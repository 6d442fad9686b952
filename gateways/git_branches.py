"""A workspace clone's lock between processes, and the removal of a task branch from it.

The Launcher's jobs and the Janitor (in another process when control and the
launcher run apart) both change a repository's workspace clone: worktrees added
and removed, refs fetched and deleted. Git's own lock files make a loser fail
rather than wait, so every change to a clone holds `workspace_lock` first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from conveyor import validate
from conveyor.logs import get_logger
from gateways import git
from gateways.forge import locked

log = get_logger(__name__)


def lock_path(clone: Path) -> Path:
    """The lock file of a workspace clone: beside it, never inside (git owns that)."""
    return clone.parent / f".{clone.name}.lock"


@contextlib.contextmanager
def workspace_lock(clone: Path, thread_lock: threading.Lock | None = None) -> Iterator[None]:
    """Hold `clone`'s lock against other processes (and `thread_lock` within this one)."""
    with thread_lock or contextlib.nullcontext(), locked(lock_path(clone)):
        yield


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
