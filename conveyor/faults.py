"""Fault injection: die at a named point, to prove a restart repeats no side effect.

Set `CONVEYOR_FAULT` to one or more point names (comma-separated); the process
that reaches such a point kills itself with SIGKILL, exactly like an OOM kill or
a power cut would, leaving no chance to clean up. Unset (the default) it costs
one environment lookup per point.

Two points fire only for a repository with a `staging_command` / `deploy_command`
(`DEPLOY_POINTS`, proved by `tests/e2e/test_deploy.py`): `launcher.deploy_started`
right after the deploy command's wrapper is spawned and its pid stored, and
`launcher.deploy_verdict` after the finalizer wrote the verdict file into the
worktree, before it is committed.
"""

from __future__ import annotations

import os
import signal

from conveyor.logs import get_logger

log = get_logger(__name__)

ENV = "CONVEYOR_FAULT"

POINTS = (
    "stage_engine.persisted",
    "stage_engine.published",
    "queue_worker.persisted",
    "queue_worker.published",
    "launcher.run_recorded",
    "launcher.spawned",
    "launcher.agent_exited",
    "launcher.deploy_started",
    "launcher.deploy_verdict",
    "launcher.committed",
    "launcher.pushed",
    "launcher.pr_opened",
    "launcher.checked",
    "launcher.merge_checked",
    "launcher.merged",
    "launcher.finished_recorded",
    "launcher.reported",
    "tracker_sync.commented",
)
"""Every named point, in pipeline order (docs/failure-model.md says what each proves)."""

DEPLOY_POINTS = ("launcher.deploy_started", "launcher.deploy_verdict")
"""The points only a deploy command Conveyor runs itself reaches."""


def point(name: str) -> None:
    """Die here if `CONVEYOR_FAULT` names this point."""
    spec = os.environ.get(ENV)
    if spec and name in spec.split(","):
        log.warning("fault.injected", point=name, pid=os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
