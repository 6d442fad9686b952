"""The Janitor's file work: a settled task's worktree and run directories, and log rotation."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from actors import janitor_policy as policy
from conveyor.layout import Layout
from gateways import git, git_branches

OUTPUT_LOG = "output.log"


def remove_worktree(layout: Layout, repo: str, task_id: str) -> bool:
    """Remove a task's worktree (and its registration in the clone); False if there was none."""
    with git_branches.janitor_lock(layout.workspace(repo)):
        return _remove_worktree(layout, repo, task_id)


def remove_branch(layout: Layout, repo: str, task_id: str, branch: str) -> bool:
    """Remove a task's worktree, then its branch from the clone; True if a worktree went."""
    clone = layout.workspace(repo)
    with git_branches.janitor_lock(clone):
        removed = _remove_worktree(layout, repo, task_id)
        git_branches.delete_local_branch(clone, branch)
    return removed


def _remove_worktree(layout: Layout, repo: str, task_id: str) -> bool:
    path = layout.worktree(repo, task_id)
    if not path.exists():
        return False
    clone = layout.workspace(repo)
    if clone.is_dir():
        git.remove_worktree(clone, path)
    if path.exists():
        # Not a worktree git knows of (a crash left it half made): the task is over anyway.
        shutil.rmtree(path)
    return True


def leftovers(layout: Layout, repo: str, task_id: str) -> bool:
    """True when a task still has a worktree or run directories on disk."""
    return layout.worktree(repo, task_id).exists() or (layout.runs / task_id).is_dir()


def remove_run_dirs(layout: Layout, task_id: str) -> bool:
    """Remove every run directory of a task; False if there were none."""
    path = layout.runs / task_id
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True


def output_logs(layout: Layout) -> Iterator[Path]:
    """Every agent output log under the run directories (`runs/<ID>/<run>/output.log`)."""
    return layout.runs.glob(f"*/*/{OUTPUT_LOG}")


def rotate(path: Path, keep: int) -> None:
    """Shift `.1`…`.keep-1` up, copy the log to `.1`, and truncate it in place.

    Copy and truncate, not rename: a live agent appends through the descriptor it was
    started with (opened for append), so after a rename it would keep writing into the
    rotated file; after a truncation its next write lands at the start of the log.
    With `keep` 0 the log is only truncated.
    """
    for older, newer in policy.log_generations(str(path), keep):
        if os.path.exists(older):
            os.replace(older, newer)
    if keep > 0:
        shutil.copyfile(path, f"{path}.1")
    with path.open("r+b") as handle:
        handle.truncate(0)
