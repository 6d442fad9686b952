"""Catching a worktree up with origin and reading both heads, in as few git processes as
possible: real git, a bare origin and two hosts' clones in tmp_path."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import GitError, InvalidField
from gateways import git, git_run
from tests.unit.test_git import make_origin

pytestmark = pytest.mark.timeout(60)

BRANCH = "feature/DEMO-1-add-greeting"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


class Spawns:
    """The git subcommands started while it is installed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def taken(self) -> list[str]:
        """The subcommands started so far, forgetting them."""
        taken, self.calls = self.calls, []
        return taken


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> Spawns:
    seen = Spawns()
    original = subprocess.Popen

    class Counted(original):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            words = iter(str(a) for a in args[1:])
            for word in words:
                if word == "-c":
                    next(words, None)
                elif not word.startswith("-"):
                    seen.calls.append(word)
                    break
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(git_run.subprocess, "Popen", Counted)
    return seen


@pytest.fixture
def hosts(tmp_path: Path) -> tuple[Path, Path]:
    """The task's worktree on two hosts, each with a clone of its own; a pushed the branch."""
    origin = make_origin(tmp_path)
    git.ensure_clone(str(origin), tmp_path / "a")
    git.ensure_clone(str(origin), tmp_path / "b")
    on_a, on_b = tmp_path / "a-wt", tmp_path / "b-wt"
    git.ensure_worktree(tmp_path / "a", on_a, BRANCH)
    commit(on_a, "first.txt")
    git.push_branch(on_a, BRANCH)
    git.ensure_worktree(tmp_path / "b", on_b, BRANCH)
    return on_a, on_b


def commit(worktree: Path, name: str) -> str:
    (worktree / name).parent.mkdir(parents=True, exist_ok=True)
    (worktree / name).write_text(name)
    assert git.commit_all(worktree, name)
    return git.head_sha(worktree)


def test_remote_missing_keeps_the_worktree_and_says_nothing_is_pushed(tmp_path: Path, spawns):
    # Given a worktree on a branch origin does not have
    origin = make_origin(tmp_path)
    git.ensure_clone(str(origin), tmp_path / "clone")
    worktree = tmp_path / "wt"
    git.ensure_worktree(tmp_path / "clone", worktree, BRANCH)
    head = git.head_sha(worktree)
    spawns.calls.clear()
    # When it catches up (the clone fetched just before)
    heads = git.catch_up_heads(worktree, BRANCH, fetched=True)
    # Then one git process answered: nothing moved, origin's head is None
    assert spawns.taken() == ["cat-file"]
    assert heads == git.Heads(head=head, remote=None)
    assert not heads.pushed
    assert not git.catch_up(worktree, BRANCH, fetched=True)


def test_remote_equal_is_one_git_process_and_pushed(hosts, spawns):
    on_a, _ = hosts
    head = git.head_sha(on_a)
    spawns.calls.clear()
    heads = git.catch_up_heads(on_a, BRANCH, fetched=True)
    assert heads == git.Heads(head=head, remote=head)
    assert heads.pushed
    assert spawns.taken() == ["cat-file"]


def test_remote_ahead_resets_the_worktree_to_origins_head(hosts, spawns):
    # Given host a pushed a commit the worktree on b lacks, and b has leftovers
    on_a, on_b = hosts
    git.catch_up(on_b, BRANCH)
    pushed = commit(on_a, "second.txt")
    git.push_branch(on_a, BRANCH)
    (on_b / "stale.txt").write_text("a lost attempt's leftovers")
    git.fetch(on_b)
    spawns.calls.clear()
    # When b catches up
    heads = git.catch_up_heads(on_b, BRANCH, fetched=True)
    assert spawns.taken() == ["cat-file", "merge-base", "reset"]
    # Then b's worktree is at origin's head, which both heads name
    assert heads == git.Heads(head=pushed, remote=pushed, moved=True)
    assert git.head_sha(on_b) == pushed
    assert (on_b / "second.txt").read_text() == "second.txt"


def test_local_ahead_is_kept_and_not_pushed(hosts, spawns):
    # Given this host's own commit, not pushed yet
    on_a, _ = hosts
    remote = git.head_sha(on_a)
    ahead = commit(on_a, "unpushed.txt")
    spawns.calls.clear()
    # When it catches up, fetching first
    heads = git.catch_up_heads(on_a, BRANCH)
    assert spawns.taken() == ["fetch", "cat-file", "merge-base"]
    # Then the local head stays, and the heads say it is not on origin
    assert heads == git.Heads(head=ahead, remote=remote)
    assert not heads.pushed
    assert git.head_sha(on_a) == ahead


def test_diverged_resets_to_origins_head(hosts):
    # Given b's unpushed commit on a head that host a has since rewritten and force-pushed
    on_a, on_b = hosts
    git.catch_up(on_b, BRANCH)
    commit(on_b, "b-only.txt")
    git.run_git(
        [*git.identity("T", "t@x"), "commit", "--quiet", "--amend", "-m", "rewritten"], on_a
    )
    rewritten = git.push_branch(on_a, BRANCH)
    # When b catches up, Then origin's head wins: b's head was built on what origin dropped
    heads = git.catch_up_heads(on_b, BRANCH)
    assert heads == git.Heads(head=rewritten, remote=rewritten, moved=True)
    assert git.head_sha(on_b) == rewritten
    assert not (on_b / "b-only.txt").exists()


def test_commits_names_each_rev_or_none_in_one_process(hosts, spawns):
    on_a, _ = hosts
    head = git.head_sha(on_a)
    tree = git.run_git(["rev-parse", "HEAD^{tree}"], on_a)
    spawns.calls.clear()
    found = git.commits(on_a, ["HEAD", "refs/remotes/origin/nope", "main", tree])
    assert found[0] == head
    assert found[1] is None
    assert found[2] is not None
    assert git.is_sha(found[2])
    # A tree is not a commit
    assert found[3] is None
    assert spawns.taken() == ["cat-file"]


def test_commits_refuses_revs_that_could_read_as_options_or_lines(hosts):
    on_a, _ = hosts
    with pytest.raises(InvalidField):
        git.commits(on_a, ["HEAD\nmain"])
    with pytest.raises(InvalidField):
        git.commits(on_a, ["--all"])


def test_catch_up_heads_raises_when_neither_head_names_a_commit(tmp_path: Path):
    repo = tmp_path / "empty"
    git.run_git(["init", "--quiet", str(repo)])
    with pytest.raises(GitError, match="HEAD names no commit"):
        git.catch_up_heads(repo, BRANCH, fetched=True)


def test_ensure_worktree_says_when_it_made_the_branch_at_origins_head(tmp_path: Path, hosts):
    on_a, _ = hosts
    clone = tmp_path / "a"
    # Already there: not fresh
    assert not git.ensure_worktree(clone, on_a, BRANCH)
    # Made from origin's branch on another host: fresh, and at origin's head
    fresh = tmp_path / "c-wt"
    git.ensure_clone(str(tmp_path / "origin.git"), tmp_path / "c")
    assert git.ensure_worktree(tmp_path / "c", fresh, BRANCH)
    assert git.catch_up_heads(fresh, BRANCH, fetched=True).pushed
    # Made from main where origin has no such branch: fresh
    assert git.ensure_worktree(clone, tmp_path / "other-wt", "feature/DEMO-2-other")
    # Re-added from a local branch a removed worktree left: not fresh (it may be stale)
    git.remove_worktree(clone, on_a)
    assert not git.ensure_worktree(clone, on_a, BRANCH)


def test_paths_are_looked_up_in_origins_head_in_the_same_process(hosts, spawns):
    # Given origin's head holding a file under docs/, pushed from host a
    on_a, on_b = hosts
    commit(on_a, "docs/verdict.md")
    pushed = git.push_branch(on_a, BRANCH)
    git.fetch(on_b)
    spawns.calls.clear()
    # When b catches up asking for paths
    paths = ["docs/verdict.md", "docs/other.md", "docs"]
    heads = git.catch_up_heads(on_b, BRANCH, fetched=True, paths=paths)
    # Then the head it moved to holds the file and the folder, and no more git was run
    assert spawns.taken() == ["cat-file", "merge-base", "reset"]
    assert heads.head == pushed
    assert heads.asked == frozenset(paths)
    assert heads.held == {"docs/verdict.md", "docs"}
    # And asked again with the heads equal, one process answers all of it
    again = git.catch_up_heads(on_b, BRANCH, fetched=True, paths=paths)
    assert spawns.taken() == ["cat-file"]
    assert again.held == heads.held
    assert again.pushed


def test_paths_on_a_branch_origin_lacks_are_held_nowhere(tmp_path: Path):
    origin = make_origin(tmp_path)
    git.ensure_clone(str(origin), tmp_path / "clone")
    worktree = tmp_path / "wt"
    git.ensure_worktree(tmp_path / "clone", worktree, BRANCH)
    heads = git.catch_up_heads(worktree, BRANCH, fetched=True, paths=["README.md"])
    assert heads.remote is None
    assert heads.asked == {"README.md"}
    assert heads.held == frozenset()


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../up", "./here", "two\nlines"])
def test_paths_must_be_one_line_and_relative_to_the_top(hosts, path: str):
    on_a, _ = hosts
    with pytest.raises(InvalidField):
        git.catch_up_heads(on_a, BRANCH, fetched=True, paths=[path])
