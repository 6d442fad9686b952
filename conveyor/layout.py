"""Where Conveyor keeps things under its data directory."""

from __future__ import annotations

from pathlib import Path

from conveyor import validate


class Layout:
    """Paths under the data directory; ids are validated before they become paths."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir

    @property
    def nats_store(self) -> Path:
        """JetStream store of the embedded server."""
        return self.root / "nats"

    @property
    def forge(self) -> Path:
        """Root of the local forge (bare repositories, pull requests, statuses).

        Only the process that owns the forge uses it: with `forge.url` set, a process
        elsewhere keeps its workspaces, worktrees and runs here and nothing of the forge.
        """
        return self.root / "forge"

    @property
    def forge_url_file(self) -> Path:
        """Where the `forge` part writes the URL it serves the local forge on."""
        return self.root / "forge.url"

    @property
    def tracker(self) -> Path:
        """Root of the local tracker."""
        return self.root / "tracker"

    @property
    def runs(self) -> Path:
        """Per-run directories: prompt, output log, exit code."""
        return self.root / "runs"

    def workspace(self, repo: str) -> Path:
        """The clone of a repository that worktrees hang off."""
        return self.root / "workspaces" / validate.repo_name(repo)

    def worktree(self, repo: str, task_id: str) -> Path:
        """A task's own worktree."""
        return self.root / "worktrees" / validate.repo_name(repo) / validate.work_item_id(task_id)

    def run_dir(self, job_id: str, attempt: int) -> Path:
        """Directory of one run of a job (job ids are `<ID>.<stage>.<visit>.<step>`)."""
        task_id, rest = job_id.split(".", 1)
        validate.work_item_id(task_id, "job_id")
        safe = rest.replace("/", "_").replace("..", "_")
        return self.runs / task_id / f"{safe}.{attempt}"
