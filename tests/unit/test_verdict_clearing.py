"""When a stale-verdict clearing may skip its lease, commit and push: real git, local forge."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from actors.jobs.steps import nothing_to_clear
from bus.messages import LaunchOrder
from gateways import git
from gateways.local_forge import LocalForge

pytestmark = pytest.mark.timeout(30)

REPO = "demo"
BRANCH = "feature/DEMO-1-ship-it"
VERDICT = ".conveyor/DEMO-1/staging.log"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Any, LaunchOrder, Path]:
    forge = LocalForge(tmp_path / "forge", {}, check_timeout_s=30.0)
    forge.create_repo(REPO, initial_files={"README.md": b"hello\n"})
    clone = tmp_path / "clone"
    git.ensure_clone(forge.clone_url(REPO), clone)
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    git.push_branch(worktree, BRANCH)
    order = LaunchOrder(
        job_id="DEMO-1.deploy-staging.1.work",
        attempt=1,
        task_id="DEMO-1",
        repo=REPO,
        stage="deploy-staging",
        role="deployer",
        visit=2,
        branch=BRANCH,
        title="Ship it",
        description="",
    )
    return SimpleNamespace(forge=forge), order, worktree


def write_verdict(worktree: Path) -> None:
    (worktree / VERDICT).parent.mkdir(parents=True, exist_ok=True)
    (worktree / VERDICT).write_text("DEPLOY OK\n")


def test_no_verdict_anywhere_and_heads_equal_needs_no_clearing(setup):
    ctx, order, worktree = setup
    assert nothing_to_clear(ctx, order, worktree, [VERDICT])


def test_a_verdict_in_the_worktree_is_cleared(setup):
    ctx, order, worktree = setup
    write_verdict(worktree)
    assert not nothing_to_clear(ctx, order, worktree, [VERDICT])


def test_a_verdict_on_the_forge_head_is_cleared_even_when_gone_from_disk(setup):
    ctx, order, worktree = setup
    write_verdict(worktree)
    git.commit_all(worktree, "verdict")
    git.push_branch(worktree, BRANCH)
    (worktree / VERDICT).unlink()
    assert not nothing_to_clear(ctx, order, worktree, [VERDICT])


def test_a_deletion_committed_but_never_pushed_is_still_pushed(setup):
    ctx, order, worktree = setup
    write_verdict(worktree)
    git.commit_all(worktree, "verdict")
    git.push_branch(worktree, BRANCH)
    (worktree / VERDICT).unlink()
    git.commit_all(worktree, "clear the verdict")  # a dead incarnation's, not pushed
    assert not nothing_to_clear(ctx, order, worktree, [VERDICT])


def test_paths_in_tree_names_only_the_paths_the_commit_holds(setup):
    _ctx, _order, worktree = setup
    write_verdict(worktree)
    git.commit_all(worktree, "verdict")
    head = git.head_sha(worktree)
    assert git.paths_in_tree(worktree, head, [VERDICT, ".conveyor/DEMO-1/deploy.log"]) == [VERDICT]
