"""Config of the Janitor's retention (`[retention]`), kept apart to keep `conveyor.config` small.

`conveyor.config` re-exports `RetentionConfig`; like every section, unknown keys are errors.
"""

from __future__ import annotations

import msgspec


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of config sections: unknown keys are errors (as in `conveyor.config`)."""


class RetentionConfig(_Section, frozen=True):
    """What the Janitor removes once a task is done or cancelled, and log rotation."""

    enabled: bool = True
    interval_s: float = 3600.0
    worktrees_days: float = 7.0
    records_days: float = 30.0
    log_max_mb: float = 100.0
    log_keep: int = 3
    delete_merged_branches: bool = False
    """A done task's branch is deleted on the forge and in the workspace clone, with its
    worktree, as soon as nothing works on the task any more (not after `worktrees_days`).
    Only when the forge's head is the one the task's last job left: a push since keeps it."""
    branches_interval_s: float = 10.0
    """How often the Janitor looks for newly done tasks whose branch goes."""
