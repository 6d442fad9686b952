"""The Janitor deletes a done task's branch and worktree once it is settled (real NATS, git)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.monitor_policy import Watch
from actors.queue_policy import Job
from actors.task_policy import Task
from bus import subjects
from bus.messages import StageChanged
from conveyor.app import wiring
from conveyor.clock import FakeClock
from conveyor.config import Config
from conveyor.layout import Layout
from gateways import git
from gateways.local_forge import LocalForge
from tests.actors.conftest import ActorUnderTest
from tests.harness import make_config, wait_until
from tests.kv_raw import api_requests, flush

pytestmark = pytest.mark.timeout(60)

REPO = "demo"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def branch_cfg(tmp_path: Path, nats_url: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        retention={
            "interval_s": 3600.0,
            "worktrees_days": 7.0,
            "branches_interval_s": 1.0,
            "delete_merged_branches": True,
        },
        disk={"interval_s": 3600.0, "alert_percent": 0.0, "min_free_mb": 0.0},
    )


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    local = LocalForge(tmp_path / "forge", {}, clock=FakeClock())
    local.create_repo(REPO, initial_files={"README.md": b"hello\n"})
    return local


@pytest.fixture
def janitor(
    bus: Any, clock: FakeClock, branch_cfg: Config, forge: LocalForge, stub: Any
) -> Iterator[ActorUnderTest]:
    ctx = wiring.Context(branch_cfg, bus, clock, forge=forge, refs={"queue_worker": stub()})
    started = ActorUnderTest(wiring.SPECS["janitor"], ctx, clock)
    yield started
    started.ref.stop(block=True, timeout=10)


def worked_on(layout: Layout, forge: LocalForge, task_id: str) -> tuple[Path, str, str]:
    """A task's worktree with one commit pushed: (worktree, branch, head)."""
    clone = layout.workspace(REPO)
    git.ensure_clone(forge.clone_url(REPO), clone)
    branch = f"feature/{task_id}-work"
    worktree = layout.worktree(REPO, task_id)
    git.ensure_worktree(clone, worktree, branch)
    (worktree / f"{task_id}.txt").write_text("work\n")
    git.commit_all(worktree, f"{task_id}: work")
    return worktree, branch, git.push_branch(worktree, branch)


def finish(janitor: ActorUnderTest, task_id: str, branch: str, head: str, stage: str) -> None:
    """Store the task at `stage` and announce it, as the StageEngine does."""
    now = janitor.clock.now()  # young: the retention sweep leaves it alone
    task = Task(
        id=task_id, repo=REPO, title="t", branch=branch, stage=stage, head_sha=head, updated_at=now
    )
    janitor.bus.store(subjects.BUCKET_TASKS, Task).create(task_id, task)
    changed = StageChanged(
        task_id=task_id, repo=REPO, old="deploy", new=stage, cause="c", revision=1, at=1.0
    )
    janitor.bus.publish(subjects.stage_changed(task_id), changed, msg_id=f"test:{task_id}")


def in_clone(layout: Layout, branch: str) -> list[str]:
    """The refs of `branch` the workspace clone still has (its own and origin's)."""
    out = git.run_git(["for-each-ref", "--format=%(refname)"], layout.workspace(REPO))
    return [ref for ref in out.splitlines() if ref.endswith(branch)]


def open_job(janitor: ActorUnderTest, task_id: str, status: str, revision: int = 0) -> None:
    job = Job(
        id=f"{task_id}.deploy.1.work",
        task_id=task_id,
        repo=REPO,
        stage="deploy",
        role="deployer",
        visit=1,
        branch="b",
        title="t",
        status=status,
        attempts=1,
    )
    jobs = janitor.bus.store(subjects.BUCKET_JOBS, Job)
    if revision:
        jobs.update(job.id, job, expect=revision)
    else:
        jobs.create(job.id, job)


def test_a_done_tasks_branch_and_worktree_go_once_settled_and_others_stay(
    janitor: ActorUnderTest, forge: LocalForge, branch_cfg: Config
) -> None:
    layout = Layout(branch_cfg.data_path)
    work = {t: worked_on(layout, forge, t) for t in ("DEMO-1", "DEMO-2", "DEMO-3", "DEMO-4")}
    # DEMO-2's last job is still finishing; DEMO-3 was cancelled; DEMO-4 was pushed to since
    open_job(janitor, "DEMO-2", "running")
    (work["DEMO-4"][0] / "late.txt").write_text("late\n")
    git.commit_all(work["DEMO-4"][0], "late push")
    moved = git.push_branch(work["DEMO-4"][0], work["DEMO-4"][1])
    for task_id, stage in (("DEMO-1", "done"), ("DEMO-2", "done"), ("DEMO-3", "cancelled")):
        finish(janitor, task_id, work[task_id][1], work[task_id][2], stage)
    finish(janitor, "DEMO-4", work["DEMO-4"][1], work["DEMO-4"][2], "done")

    status = wait_until(
        lambda: (lambda s: s if s.get("branches_removed", 0) >= 2 else None)(janitor.tick(1.0)),
        what="DEMO-1 and DEMO-4 handled",
    )

    # DEMO-1: its worktree, its refs in the clone and its branch on the forge are gone
    worktree, branch, _ = work["DEMO-1"]
    assert not worktree.exists()
    assert str(worktree) not in git.run_git(["worktree", "list"], layout.workspace(REPO))
    assert in_clone(layout, branch) == []
    assert forge.branch_head(REPO, branch) is None
    # DEMO-4: the forge's branch moved past the task's last head, so it stays there
    assert (status["branches_removed"], status["branches_kept"]) == (2, 1)
    assert forge.branch_head(REPO, work["DEMO-4"][1]) == moved
    # DEMO-2 (a job open) and DEMO-3 (cancelled: unmerged work) keep everything
    for task_id in ("DEMO-2", "DEMO-3"):
        worktree, branch, head = work[task_id]
        assert worktree.exists()
        assert forge.branch_head(REPO, branch) == head

    # Once DEMO-2's job finished, its branch goes at the next pass; DEMO-3's never does
    jobs = janitor.bus.store(subjects.BUCKET_JOBS, Job)
    found = jobs.get("DEMO-2.deploy.1.work")
    assert found is not None
    open_job(janitor, "DEMO-2", "done", revision=found.revision)
    wait_until(lambda: janitor.tick(1.0).get("branches_removed", 0) >= 3, what="DEMO-2 handled")
    assert forge.branch_head(REPO, work["DEMO-2"][1]) is None
    assert not work["DEMO-2"][0].exists()
    assert forge.branch_head(REPO, work["DEMO-3"][1]) == work["DEMO-3"][2]
    assert janitor.tick(1.0)["branches_removed"] == 3


def test_a_done_task_missed_by_a_restart_loses_its_branch_at_the_retention_sweep(
    janitor: ActorUnderTest, forge: LocalForge, branch_cfg: Config
) -> None:
    layout = Layout(branch_cfg.data_path)
    worktree, branch, head = worked_on(layout, forge, "DEMO-1")
    task = Task(
        id="DEMO-1",
        repo=REPO,
        title="t",
        branch=branch,
        stage="done",
        head_sha=head,
        updated_at=janitor.clock.now(),
    )
    # Stored, but its StageChanged never heard (the Janitor was down)
    janitor.bus.store(subjects.BUCKET_TASKS, Task).create(task.id, task)
    assert "branches_removed" not in janitor.tick(1.0)
    assert forge.branch_head(REPO, branch) == head

    status = janitor.tick(8 * 86400.0)

    assert (status["branches_removed"], status["worktrees_removed"]) == (1, 1)
    assert not worktree.exists()
    assert forge.branch_head(REPO, branch) is None
    assert in_clone(layout, branch) == []


def test_a_done_task_in_its_post_deploy_window_is_tried_with_one_read_each_pass(
    janitor: ActorUnderTest, forge: LocalForge, branch_cfg: Config
) -> None:
    layout = Layout(branch_cfg.data_path)
    worktree, branch, head = worked_on(layout, forge, "DEMO-5")
    watches = janitor.bus.store(subjects.BUCKET_MONITOR, Watch)
    now = janitor.clock.now()
    watch = Watch(
        task_id="DEMO-5",
        repo=REPO,
        health_url="http://127.0.0.1:9/health",
        protected=False,
        has_rollback=False,
        started_at=now,
        ends_at=now + 60.0,
        window_s=60.0,
    )
    revision = watches.create("DEMO-5", watch)
    open_job(janitor, "DEMO-5", "done")
    buckets = (subjects.BUCKET_JOBS, subjects.BUCKET_RUNS, subjects.BUCKET_EFFECTS)
    taps = [
        api_requests(janitor.bus, api, bucket)
        for bucket in buckets
        for api in ("STREAM.MSG.GET", "STREAM.INFO")
    ]
    finish(janitor, "DEMO-5", branch, head, "done")
    for _ in range(5):
        janitor.tick(1.0)
    # The watch still open: nothing else of the task was read, and everything stays.
    flush(janitor.bus)
    assert [request for tap in taps for request in tap] == []
    assert forge.branch_head(REPO, branch) == head

    watches.update("DEMO-5", msgspec.structs.replace(watch, closed=True), expect=revision)
    wait_until(lambda: janitor.tick(1.0).get("branches_removed", 0) >= 1, what="DEMO-5 handled")
    assert forge.branch_head(REPO, branch) is None
    assert not worktree.exists()
