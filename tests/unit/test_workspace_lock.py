"""The workspace clone's lock: jobs share it, the Janitor takes it only when free."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateways.git_branches import WorkspaceBusy, janitor_lock, workspace_lock


def test_jobs_share_the_clone_and_the_janitor_never_waits_on_them(tmp_path: Path) -> None:
    clone = tmp_path / "workspaces" / "demo"
    # Two jobs (say, two launcher processes on one data directory, one of them frozen)
    # hold it at once: neither waits for the other, and the Janitor gives up for now.
    with (
        workspace_lock(clone),
        workspace_lock(clone),
        pytest.raises(WorkspaceBusy),
        janitor_lock(clone),
    ):
        pytest.fail("the Janitor got the clone while jobs held it")
    with janitor_lock(clone), pytest.raises(WorkspaceBusy), janitor_lock(clone):
        pytest.fail("two Janitor holds at once")
