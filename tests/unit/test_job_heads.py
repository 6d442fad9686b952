"""A launch reads each head once: the worktree's preparation answers both heads, and the
verdict clearing and the pull request reuse what is known. Real git, a local forge."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from actors.jobs.steps import (
    Prepared,
    clear_previous_verdict,
    ensure_pull,
    nothing_to_clear,
    prepare_worktree,
)
from bus.messages import LaunchOrder
from conveyor.layout import Layout
from gateways import git
from gateways.local_forge import LocalForge

pytestmark = pytest.mark.timeout(60)

REPO = "demo"
BRANCH = "feature/DEMO-1-ship-it"
VERDICT = ".conveyor/DEMO-1/staging.log"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


class CountingForge(LocalForge):
    """The local forge, counting the reads a launch should no longer need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def branch_head(self, repo: str, branch: str) -> str | None:
        self.reads.append("branch_head")
        return super().branch_head(repo, branch)

    def get_pull(self, repo: str, number: int) -> Any:
        self.reads.append("get_pull")
        return super().get_pull(repo, number)


class Effects:
    """An effect ledger in memory: `once` runs `do` the first time a key is seen."""

    def __init__(self) -> None:
        self.done: dict[str, str] = {}

    def once(self, key: str, do: Callable[[], str], probe: Callable[[], str | None]) -> str:
        if key not in self.done:
            self.done[key] = do()
        return self.done[key]


def order_for(stage: str = "deploy-staging") -> LaunchOrder:
    return LaunchOrder(
        job_id=f"DEMO-1.{stage}.1.work",
        attempt=1,
        task_id="DEMO-1",
        repo=REPO,
        stage=stage,
        role="deployer",
        visit=2,
        branch=BRANCH,
        title="Ship it",
        description="",
    )


def host(tmp_path: Path, name: str, forge: LocalForge) -> Any:
    """A launcher's view on one host: its own data directory, the shared forge."""
    return SimpleNamespace(
        forge=forge,
        layout=Layout(tmp_path / name),
        repo_lock=lambda repo: contextlib.nullcontext(),
        effects=Effects(),
    )


@pytest.fixture
def forge(tmp_path: Path) -> CountingForge:
    forge = CountingForge(tmp_path / "forge", {}, check_timeout_s=30.0)
    forge.create_repo(REPO, initial_files={"README.md": b"hello\n"})
    return forge


def commit(worktree: Path, name: str) -> str:
    (worktree / name).parent.mkdir(parents=True, exist_ok=True)
    (worktree / name).write_text(name)
    assert git.commit_all(worktree, name)
    return git.head_sha(worktree)


def test_a_new_worktree_reads_no_heads_and_a_later_preparation_reads_both(tmp_path, forge):
    ctx = host(tmp_path, "a", forge)
    # Given a new task's worktree: made at origin's head, nothing read
    first = prepare_worktree(ctx, order_for())
    assert first.heads is None
    assert first.head == ""
    sha = git.push_branch(first.worktree, BRANCH)
    # When the next job prepares it, Then both heads are known and equal (pushed)
    again = prepare_worktree(ctx, order_for())
    assert again.heads == git.Heads(head=sha, remote=sha)
    assert again.head == sha


def test_preparing_a_worktree_another_host_left_behind_catches_it_up(tmp_path, forge):
    on_a, on_b = host(tmp_path, "a", forge), host(tmp_path, "b", forge)
    wt_a = prepare_worktree(on_a, order_for()).worktree
    git.push_branch(wt_a, BRANCH)
    prepare_worktree(on_b, order_for())
    pushed = commit(wt_a, "second.txt")
    git.push_branch(wt_a, BRANCH)
    prepared = prepare_worktree(on_b, order_for())
    assert prepared.heads == git.Heads(head=pushed, remote=pushed, moved=True)
    assert git.head_sha(prepared.worktree) == pushed


def test_known_heads_spare_the_forge_and_the_head_reads(tmp_path, forge):
    ctx = host(tmp_path, "a", forge)
    worktree = prepare_worktree(ctx, order_for()).worktree
    git.push_branch(worktree, BRANCH)
    heads = prepare_worktree(ctx, order_for()).heads
    forge.reads.clear()
    # Pushed, no verdict anywhere: nothing to clear, and the forge was not asked
    assert nothing_to_clear(ctx, order_for(), worktree, [VERDICT], heads)
    assert forge.reads == []


def test_known_heads_see_a_deletion_committed_but_never_pushed(tmp_path, forge):
    ctx = host(tmp_path, "a", forge)
    worktree = prepare_worktree(ctx, order_for()).worktree
    commit(worktree, VERDICT)
    git.push_branch(worktree, BRANCH)
    (worktree / VERDICT).unlink()
    git.commit_all(worktree, "clear the verdict")  # a dead incarnation's, not pushed
    heads = prepare_worktree(ctx, order_for()).heads
    assert heads is not None
    assert not heads.pushed
    assert not nothing_to_clear(ctx, order_for(), worktree, [VERDICT], heads)


def test_known_heads_see_a_verdict_on_the_pushed_head(tmp_path, forge):
    ctx = host(tmp_path, "a", forge)
    worktree = prepare_worktree(ctx, order_for()).worktree
    commit(worktree, VERDICT)
    git.push_branch(worktree, BRANCH)
    (worktree / VERDICT).unlink()  # gone from disk, still on the pushed head
    heads = prepare_worktree(ctx, order_for()).heads
    assert heads is not None
    assert heads.pushed
    assert not nothing_to_clear(ctx, order_for(), worktree, [VERDICT], heads)


def test_a_clearing_that_pushes_hands_on_its_pushed_head(tmp_path, forge, monkeypatch):
    ctx = host(tmp_path, "a", forge)
    worktree = prepare_worktree(ctx, order_for()).worktree
    commit(worktree, VERDICT)
    git.push_branch(worktree, BRANCH)
    prepared = prepare_worktree(ctx, order_for())
    # The transition lease is the Launcher's business, not this test's
    fence = SimpleNamespace(check=lambda what: None)
    monkeypatch.setattr(
        "actors.jobs.steps.transition", lambda *a, **k: contextlib.nullcontext(fence)
    )
    cleared = clear_previous_verdict(ctx, order_for(), prepared, [VERDICT])
    assert cleared.heads is not None
    assert cleared.heads.pushed
    assert cleared.head == git.head_sha(worktree) == forge.branch_head(REPO, BRANCH)
    assert cleared.head != prepared.head
    assert not (worktree / VERDICT).exists()


def test_no_verdict_to_clear_hands_on_the_preparation_unchanged(tmp_path, forge):
    ctx = host(tmp_path, "a", forge)
    prepared = Prepared(tmp_path / "nowhere", None)
    assert clear_previous_verdict(ctx, order_for(), prepared, []) is prepared


def test_a_pull_request_opened_now_is_not_read_back(tmp_path, forge):
    ctx = host(tmp_path, "a", forge)
    worktree = prepare_worktree(ctx, order_for()).worktree
    sha = git.push_branch(worktree, BRANCH)
    forge.reads.clear()
    pull = ensure_pull(ctx, order_for(), sha, "body", after_merge=False)
    assert forge.reads == []
    assert pull == forge.get_pull(REPO, pull.number)
    # One opened before (the ledger has it): read from the forge, never opened twice
    forge.reads.clear()
    again = ensure_pull(ctx, order_for(), sha, "body", after_merge=False)
    assert again.number == pull.number
    assert len(list((tmp_path / "forge" / "pulls" / REPO).glob("*.json"))) == 1


def test_paths_asked_while_preparing_spare_the_tree_read(tmp_path, forge, monkeypatch):
    ctx = host(tmp_path, "a", forge)
    worktree = prepare_worktree(ctx, order_for()).worktree
    commit(worktree, VERDICT)
    git.push_branch(worktree, BRANCH)
    (worktree / VERDICT).unlink()  # gone from disk, still on the pushed head
    other = ".conveyor/DEMO-1/deploy.log"
    heads = prepare_worktree(ctx, order_for(), [VERDICT, other]).heads
    assert heads is not None

    def no_tree_read(*args: Any) -> list[str]:
        raise AssertionError("the tree was read again")

    monkeypatch.setattr(git, "paths_in_tree", no_tree_read)
    forge.reads.clear()
    # The verdict on origin's head is seen, and a path it lacks is nothing to clear
    assert not nothing_to_clear(ctx, order_for(), worktree, [VERDICT], heads)
    assert nothing_to_clear(ctx, order_for(), worktree, [other], heads)
    assert forge.reads == []
    # Paths never asked are read from the tree as before
    monkeypatch.undo()
    assert nothing_to_clear(ctx, order_for(), worktree, ["never/asked.log"], heads)
