"""The Janitor's removal of a done task's branch: its worktree, the clone's refs, the forge's.

What a forge's "delete branch after merge" does, once the task is settled (done,
with no job, run or post-deploy window of it open): the task's worktree is removed
and its branch deleted in the workspace clone and on the forge. Without it every
finished task leaves a branch and a worktree behind, and the git commands that read
every ref or worktree (fetches, pushes, clones, worktree listings) get dearer with
each. Only a `done` task's branch goes (a cancelled task's unmerged work stays), and
on the forge only while it still points at the head the task's last job left: a
push since keeps it. Every step is a no-op when already done, so a pass killed
half-way is simply done again. A task hears of here through its `StageChanged` to
`done`; one missed (a restart) goes at the retention sweep (`worktrees_days`).
"""

from __future__ import annotations

from typing import NamedTuple

from actors import janitor_files as files
from actors import janitor_sweep as sweep
from actors.task_policy import Task
from conveyor.config import RetentionConfig
from conveyor.errors import HeadMismatch
from conveyor.layout import Layout
from conveyor.logs import get_logger
from conveyor.pipeline import DONE
from gateways.forge import Forge

log = get_logger(__name__)


class Removed(NamedTuple):
    """What removing one task's branch did."""

    worktree: bool
    forge: bool
    kept: bool
    """The forge's branch moved past the task's last head, so it stays."""


def deletable(task: Task, cfg: RetentionConfig) -> bool:
    """Whether `task`'s branch goes: done, with a head its last job left to compare with."""
    return cfg.delete_merged_branches and task.stage == DONE and bool(task.head_sha)


def remove(layout: Layout, forge: Forge | None, task: Task) -> Removed:
    """Remove `task`'s worktree, its branch in the clone, then on the forge (idempotent)."""
    worktree = files.remove_branch(layout, task.repo, task.id, task.branch)
    deleted = kept = False
    if forge is not None:
        try:
            deleted = forge.delete_branch(task.repo, task.branch, expected_sha=task.head_sha)
        except HeadMismatch as err:
            kept = True
            log.warning("janitor.branch_kept", task_id=task.id, branch=task.branch, reason=str(err))
    log.info(
        "janitor.branch_removed", task_id=task.id, branch=task.branch, on_forge=deleted, kept=kept
    )
    return Removed(worktree, deleted, kept)


class Pending:
    """Done tasks heard of, waiting to be settled; tried every `branches_interval_s`."""

    def __init__(self, cfg: RetentionConfig) -> None:
        self._cfg = cfg
        self.ids: set[str] = set()
        self._next = 0.0

    def heard(self, task_id: str, stage: str) -> None:
        if self._cfg.enabled and self._cfg.delete_merged_branches and stage == DONE:
            self.ids.add(task_id)

    def due(self, now: float) -> list[str]:
        """The ids to try now (none before the interval has passed since the last try)."""
        if not self.ids or now < self._next:
            return []
        self._next = now + self._cfg.branches_interval_s
        return sorted(self.ids)

    def settled(self, stores: sweep.Stores, task_id: str, now: float) -> Task | None:
        """The task once it is settled and its branch may go (then it is no longer pending).

        None while it is not settled yet; a task gone, or not deletable, is forgotten.
        """
        found = stores.tasks.get(task_id)
        if found is None or not deletable(found.value, self._cfg):
            self.ids.discard(task_id)
            return None
        if not sweep.settled_now(stores, found.value, now):
            return None
        self.ids.discard(task_id)
        return found.value
