"""The post-deploy log in the repository: `16-post-deploy-log.md` in the work item's directory.

Every other artifact of a work item lives in `docs/work-items/<ID>/` on the task's
branch, the production deploy's `14-deploy-log.md` included (it is written after
the merge). The verdict of the window joins them there. Main is never pushed
directly, and a post-deploy note is no reason to move main under a production
that was deployed from it, so the log goes on the branch, not main.

The commit is a throw-away clone of that one branch, one commit on its head and a
plain (never forced) push: a branch that moved meanwhile refuses it and the next
attempt starts again from the new head. The monitor runs it through the effect
ledger, and `find` recognises a commit a crash interrupted by the file's bytes on
the branch, so the log is committed once across restarts.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from bus.effects import Ledger, effect_key
from conveyor import validate
from conveyor.clock import Clock
from conveyor.logs import get_logger
from gateways import git
from gateways.forge import Forge

log = get_logger(__name__)

AUTHOR = ("Conveyor Monitor", "monitor@conveyor.local")
NO_BRANCH = "no branch"
"""The result when the task's branch is unknown or gone: nothing to commit onto."""

BranchOf = Callable[[str], str | None]
"""Task id -> its branch, or None when the task is unknown."""


def log_path(task_id: str, name: str) -> str:
    """Where the log lives in the repository."""
    return f"docs/work-items/{validate.work_item_id(task_id)}/{name}"


class LogCommitter:
    """Commits one file to a task's branch on the forge; called from a worker thread."""

    def __init__(self, forge: Forge, branch_of: BranchOf) -> None:
        self._forge = forge
        self._branch_of = branch_of

    def _branch(self, task_id: str, repo: str) -> str | None:
        branch = self._branch_of(task_id)
        if not branch or self._forge.branch_head(repo, branch) is None:
            return None
        return branch

    def find(self, task_id: str, repo: str, name: str, content: bytes) -> str | None:
        """The branch head when the file is already there with these bytes, else None."""
        branch = self._branch(task_id, repo)
        if branch is None:
            return None
        if self._forge.read_file(repo, branch, log_path(task_id, name)) != content:
            return None
        return self._forge.branch_head(repo, branch)

    def commit(self, task_id: str, repo: str, name: str, content: bytes, scratch: Path) -> str:
        """Commit `content` as the log on the task's branch; the pushed sha, or `NO_BRANCH`."""
        branch = self._branch(task_id, repo)
        if branch is None:
            log.warning("monitor.log_not_committed", task_id=task_id, repo=repo, reason=NO_BRANCH)
            return NO_BRANCH
        work = scratch / "repo"
        shutil.rmtree(work, ignore_errors=True)
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            git.run_git(
                [
                    "clone",
                    "--quiet",
                    "--no-tags",
                    "--single-branch",
                    "--branch",
                    branch,
                    "--",
                    self._forge.clone_url(repo),
                    str(work),
                ]
            )
            target = work / log_path(task_id, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            # A note on a delivered task is nothing to test: forges that honour it skip CI.
            message = f"{task_id}: post-deploy log ({name}) [skip ci]"
            git.commit_all(work, message, author_name=AUTHOR[0], author_email=AUTHOR[1])
            sha = git.push_branch(work, branch, force=False)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("monitor.log_committed", task_id=task_id, repo=repo, branch=branch, sha=sha)
        return sha


MAX_TRIES = 5
"""Failed commits of one log before the watch closes without it (the file stays on disk)."""
RETRY_S = 10.0
"""Pause after a failed commit (a forge that is down) before the next try."""


class Committed(msgspec.Struct, frozen=True):
    """Commit worker -> PostDeployMonitor (in-process): the ledger's result, or an error."""

    task_id: str
    result: str = ""
    error: str = ""


class LogCommits:
    """One commit of each watch's log (through the effect ledger), each in its own thread.

    `start` and `done` are called on the monitor's thread only; the worker thread
    touches nothing here and reports by `tell`.
    """

    def __init__(
        self,
        committer: LogCommitter,
        effects: Ledger,
        clock: Clock,
        tell: Callable[[Committed], None],
        *,
        name: str,
    ) -> None:
        self._committer, self._effects, self._clock, self._tell = committer, effects, clock, tell
        self._name = name
        self._running: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    @property
    def running(self) -> int:
        return len(self._running)

    def busy(self, task_id: str) -> bool:
        """A commit of this log runs, or a failed one waits for its next try."""
        return task_id in self._running or self._clock.now() < self._retry_at.get(task_id, 0.0)

    def start(self, task_id: str, repo: str, text: str, scratch: Path) -> None:
        """Commit the log unless a commit of it runs or a failed one is still cooling down."""
        if self.busy(task_id):
            return
        self._running.add(task_id)
        content = text.encode()

        def _run() -> None:
            try:
                result = self._effects.once(
                    effect_key("monitor", task_id, "log"),
                    lambda: self._committer.commit(task_id, repo, self._name, content, scratch),
                    lambda: self._committer.find(task_id, repo, self._name, content),
                )
                self._tell(Committed(task_id=task_id, result=result))
            except Exception as err:
                # Reported to the actor; a later tick tries again through the ledger.
                log.exception("monitor.log_commit_failed", task_id=task_id, repo=repo)
                self._tell(Committed(task_id=task_id, error=f"{type(err).__name__}: {err}"))

        threading.Thread(target=_run, name=f"monitor-log-{task_id}", daemon=True).start()

    def done(self, msg: Committed) -> str:
        """What the watch stores as `log_commit`; "" while a failed commit is to be retried."""
        self._running.discard(msg.task_id)
        if not msg.error:
            self._failures.pop(msg.task_id, None)
            self._retry_at.pop(msg.task_id, None)
            return msg.result
        failures = self._failures.get(msg.task_id, 0) + 1
        self._failures[msg.task_id] = failures
        if failures >= MAX_TRIES:
            return f"not committed: {msg.error}"[:500]
        self._retry_at[msg.task_id] = self._clock.now() + RETRY_S
        return ""
