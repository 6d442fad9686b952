"""Git helpers against real repositories in tmp_path, as on a fresh CI machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conveyor.errors import GitError, InvalidField
from gateways import git

BRANCH = "feature/DEMO-1-add-greeting"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No global or system git config, no identity in the environment."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "EMAIL"):
        monkeypatch.delenv(name, raising=False)


def make_origin(tmp_path: Path) -> Path:
    """A bare repository with one commit on main holding README.md."""
    origin = tmp_path / "origin.git"
    git.init_bare(origin)
    seed = tmp_path / "seed"
    git.run_git(["clone", "--quiet", str(origin), str(seed)])
    git.run_git(["symbolic-ref", "HEAD", "refs/heads/main"], seed)
    (seed / "README.md").write_text("hello\n")
    assert git.commit_all(seed, "Initial commit")
    git.run_git(["push", "--quiet", "origin", "main"], seed)
    shutil.rmtree(seed)
    return origin


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path)


@pytest.fixture
def clone(tmp_path: Path, origin: Path) -> Path:
    path = tmp_path / "clone"
    git.ensure_clone(str(origin), path)
    return path


def branch_of(worktree: Path) -> str:
    return git.run_git(["symbolic-ref", "--short", "HEAD"], worktree)


def registered_worktrees(clone: Path) -> list[str]:
    out = git.run_git(["worktree", "list", "--porcelain"], clone)
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


def test_run_git_returns_stdout_without_trailing_newline(origin: Path):
    assert git.run_git(["rev-parse", "--is-bare-repository"], git_dir=origin) == "true"


def test_run_git_raises_git_error_carrying_args_and_stderr(tmp_path: Path):
    with pytest.raises(GitError) as caught:
        git.run_git(["rev-parse", "--verify", "no-such-ref"], tmp_path)
    assert caught.value.args_list == ["rev-parse", "--verify", "no-such-ref"]
    assert caught.value.returncode != 0
    assert "not a git repository" in caught.value.stderr


def test_run_git_kills_a_command_that_outlives_its_timeout(tmp_path: Path):
    # Given a git alias that runs for longer than the timeout
    args = ["-c", "alias.hang=!sleep 30", "hang"]
    # When it runs with a short timeout, Then it is killed and reported as a GitError
    with pytest.raises(GitError, match="timed out"):
        git.run_git(args, tmp_path, timeout_s=0.3)


def test_init_bare_is_idempotent_and_points_head_at_main(tmp_path: Path):
    path = tmp_path / "r.git"
    git.init_bare(path)
    git.init_bare(path)
    assert git.run_git(["symbolic-ref", "HEAD"], git_dir=path) == "refs/heads/main"


def test_ensure_clone_clones_then_fetches_and_prunes(tmp_path: Path, origin: Path):
    path = tmp_path / "clone"
    git.ensure_clone(str(origin), path)
    main = git.head_sha(path, "origin/main")
    # Given a branch pushed to origin after the clone
    git.run_git(["branch", BRANCH, "main"], git_dir=origin)
    # When ensure_clone runs again, Then it fetched the branch
    git.ensure_clone(str(origin), path)
    assert git.head_sha(path, f"origin/{BRANCH}") == main
    # And a branch deleted on origin disappears from the clone
    git.run_git(["branch", "-D", BRANCH], git_dir=origin)
    git.ensure_clone(str(origin), path)
    assert git.resolve_commit(path, f"origin/{BRANCH}") is None


def test_ensure_clone_replaces_a_partial_directory_left_by_a_crash(tmp_path: Path, origin: Path):
    # Given a directory where a killed clone left an empty .git and a stray file
    path = tmp_path / "clone"
    (path / ".git").mkdir(parents=True)
    (path / "half-written").write_text("x")
    # When ensure_clone runs, Then it is a real clone of origin
    git.ensure_clone(str(origin), path)
    assert (path / "README.md").read_text() == "hello\n"
    assert not (path / "half-written").exists()
    assert git.head_sha(path) == git.head_sha(origin, "main")


def test_ensure_clone_does_not_mistake_a_directory_inside_another_repo_for_a_clone(
    tmp_path: Path, origin: Path, clone: Path
):
    nested = clone / "sub"
    nested.mkdir()
    git.ensure_clone(str(origin), nested)
    assert git.run_git(["rev-parse", "--show-toplevel"], nested) == str(nested.resolve())


def test_ensure_worktree_creates_the_branch_from_base_and_repeating_it_changes_nothing(
    tmp_path: Path, clone: Path
):
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    assert branch_of(worktree) == BRANCH
    assert git.head_sha(worktree) == git.head_sha(clone, "origin/main")
    # Given uncommitted work in the worktree
    (worktree / "work.txt").write_text("in progress")
    # When ensure_worktree runs again, Then the work is untouched
    git.ensure_worktree(clone, worktree, BRANCH)
    assert (worktree / "work.txt").read_text() == "in progress"
    assert branch_of(worktree) == BRANCH


def test_ensure_worktree_reattaches_a_branch_whose_worktree_directory_vanished(
    tmp_path: Path, clone: Path
):
    # Given a branch with a commit whose worktree directory was deleted (stale registration)
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    (worktree / "a.txt").write_text("a")
    assert git.commit_all(worktree, "add a")
    committed = git.head_sha(worktree)
    shutil.rmtree(worktree)
    # When ensure_worktree runs, Then the stale entry is pruned and the branch checked out again
    git.ensure_worktree(clone, worktree, BRANCH)
    assert branch_of(worktree) == BRANCH
    assert git.head_sha(worktree) == committed
    assert (worktree / "a.txt").read_text() == "a"


def test_ensure_worktree_uses_a_branch_created_before_a_crash_without_a_worktree(
    tmp_path: Path, clone: Path
):
    # Given `worktree add -b` died after creating the branch but before the worktree
    git.run_git(["branch", BRANCH, "origin/main"], clone)
    worktree = tmp_path / "wt"
    # When ensure_worktree runs, Then it checks out the existing branch
    git.ensure_worktree(clone, worktree, BRANCH)
    assert branch_of(worktree) == BRANCH


def test_ensure_worktree_recovers_from_an_add_killed_while_initializing(
    tmp_path: Path, clone: Path
):
    # Given a worktree left locked "initializing" with half its files checked out
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    admin = Path(git.run_git(["rev-parse", "--absolute-git-dir"], worktree))
    (admin / "locked").write_text("initializing")
    (worktree / "README.md").unlink()
    # When ensure_worktree runs, Then the worktree is rebuilt complete and unlocked
    git.ensure_worktree(clone, worktree, BRANCH)
    assert (worktree / "README.md").read_text() == "hello\n"
    assert branch_of(worktree) == BRANCH
    assert "locked" not in git.run_git(["worktree", "list", "--porcelain"], clone)


def test_ensure_worktree_removes_a_worktree_orphaned_by_a_reclone(tmp_path: Path, origin: Path):
    # Given a worktree whose clone was deleted and cloned again
    clone = tmp_path / "clone"
    git.ensure_clone(str(origin), clone)
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    shutil.rmtree(clone)
    git.ensure_clone(str(origin), clone)
    # When ensure_worktree runs, Then the orphan is replaced by a working worktree
    git.ensure_worktree(clone, worktree, BRANCH)
    assert branch_of(worktree) == BRANCH
    assert str(worktree.resolve()) in registered_worktrees(clone)


def test_ensure_worktree_takes_the_branch_from_origin_when_only_origin_has_it(
    tmp_path: Path, origin: Path, clone: Path
):
    # Given another machine pushed the branch with a commit
    other = tmp_path / "other"
    git.ensure_clone(str(origin), other)
    other_wt = tmp_path / "other-wt"
    git.ensure_worktree(other, other_wt, BRANCH)
    (other_wt / "b.txt").write_text("b")
    git.commit_all(other_wt, "add b")
    pushed = git.push_branch(other_wt, BRANCH)
    git.ensure_clone(str(origin), clone)
    # When this clone makes a worktree for it, Then it starts from origin's branch
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    assert git.head_sha(worktree) == pushed
    assert branch_of(worktree) == BRANCH


def test_ensure_worktree_refuses_a_directory_it_did_not_create(tmp_path: Path, clone: Path):
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / "precious.txt").write_text("keep me")
    with pytest.raises(git.WorktreeConflict):
        git.ensure_worktree(clone, worktree, BRANCH)
    assert (worktree / "precious.txt").read_text() == "keep me"


def test_ensure_worktree_refuses_a_worktree_on_another_branch(tmp_path: Path, clone: Path):
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    with pytest.raises(git.WorktreeConflict):
        git.ensure_worktree(clone, worktree, "feature/DEMO-2-other")


@pytest.mark.parametrize(
    "branch",
    ["main", "--upload-pack=touch /tmp/x", "feature/DEMO-1-a/../b", "feature/demo-1-x", ""],
)
def test_invalid_branch_is_rejected_before_git_runs(tmp_path: Path, branch: str):
    # A clone that does not exist: had git run, it would have failed with GitError instead.
    missing = tmp_path / "no-clone"
    with pytest.raises(InvalidField) as caught:
        git.ensure_worktree(missing, tmp_path / "wt", branch)
    assert caught.value.field == "branch"
    with pytest.raises(InvalidField):
        git.push_branch(missing, branch)
    assert not (tmp_path / "wt").exists()


@pytest.mark.parametrize("ref", ["--output=/tmp/x", "a..b", "main;rm", ""])
def test_unsafe_refs_are_rejected_before_git_runs(tmp_path: Path, ref: str):
    with pytest.raises(InvalidField):
        git.head_sha(tmp_path / "missing", ref)
    with pytest.raises(InvalidField):
        git.ensure_worktree(tmp_path / "missing", tmp_path / "wt", BRANCH, base=ref)


def test_ensure_clone_rejects_an_url_that_reads_as_an_option(tmp_path: Path):
    with pytest.raises(InvalidField):
        git.ensure_clone("--upload-pack=touch /tmp/pwned", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_commit_all_commits_only_when_something_changed(tmp_path: Path, clone: Path):
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    assert git.commit_all(worktree, "nothing") is False
    (worktree / "new.txt").write_text("new")
    (worktree / "README.md").unlink()
    assert git.commit_all(worktree, "add new, drop readme") is True
    assert git.commit_all(worktree, "again") is False
    author = git.run_git(["log", "-1", "--format=%an <%ae>|%s"], worktree)
    assert author == "Conveyor Agent <agent@conveyor.local>|add new, drop readme"
    assert git.run_git(["status", "--porcelain"], worktree) == ""


def test_push_branch_force_pushes_and_returns_the_sha_now_on_origin(
    tmp_path: Path, origin: Path, clone: Path
):
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    (worktree / "f.txt").write_text("1")
    git.commit_all(worktree, "one")
    first = git.push_branch(worktree, BRANCH)
    assert git.head_sha(origin, BRANCH) == first
    # Given history rewritten locally (as after a rebase)
    (worktree / "f.txt").write_text("2")
    git.run_git(["add", "-A"], worktree)
    git.run_git([*git.identity("T", "t@x"), "commit", "--quiet", "--amend", "-m", "one'"], worktree)
    # When pushed with force, Then origin has the rewritten head
    second = git.push_branch(worktree, BRANCH)
    assert second != first
    assert git.head_sha(origin, BRANCH) == second
    # And without force the same rewrite is refused
    git.run_git([*git.identity("T", "t@x"), "commit", "--quiet", "--amend", "-m", "1''"], worktree)
    with pytest.raises(GitError):
        git.push_branch(worktree, BRANCH, force=False)


def test_remove_worktree_is_idempotent(tmp_path: Path, clone: Path):
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    (worktree / "dirty.txt").write_text("uncommitted")
    git.remove_worktree(clone, worktree)
    git.remove_worktree(clone, worktree)
    assert not worktree.exists()
    assert registered_worktrees(clone) == [str(clone.resolve())]
    # And the branch survives for a later ensure_worktree
    git.ensure_worktree(clone, worktree, BRANCH)
    assert branch_of(worktree) == BRANCH


def test_head_sha_and_resolve_commit_name_commits(origin: Path, clone: Path):
    sha = git.head_sha(clone)
    assert git.is_sha(sha)
    assert git.head_sha(origin, "main") == sha
    assert git.resolve_commit(clone, "origin/nope") is None


def test_catch_up_moves_a_worktree_another_host_left_behind_and_keeps_local_work(
    tmp_path: Path, origin: Path
):
    # Given a task's worktree on two hosts (clones of their own), both on the branch
    git.ensure_clone(str(origin), tmp_path / "a")
    git.ensure_clone(str(origin), tmp_path / "b")
    on_a, on_b = tmp_path / "a-wt", tmp_path / "b-wt"
    git.ensure_worktree(tmp_path / "a", on_a, BRANCH)
    (on_a / "first.txt").write_text("1")
    git.commit_all(on_a, "first")
    git.push_branch(on_a, BRANCH)
    git.ensure_worktree(tmp_path / "b", on_b, BRANCH)
    assert git.catch_up(on_b, BRANCH)
    # When host a pushes another commit the worktree on b lacks
    (on_a / "second.txt").write_text("2")
    git.commit_all(on_a, "second")
    pushed = git.push_branch(on_a, BRANCH)
    (on_b / "stale.txt").write_text("a lost attempt's leftovers")
    # Then b's worktree is brought to origin's head, not left to force-push a stale one
    assert git.catch_up(on_b, BRANCH)
    assert git.head_sha(on_b) == pushed
    assert (on_b / "second.txt").read_text() == "2"
    # And a head ahead of origin (this host's own unpushed commit) is kept
    (on_b / "third.txt").write_text("3")
    git.commit_all(on_b, "third")
    ahead = git.head_sha(on_b)
    assert not git.catch_up(on_b, BRANCH)
    assert git.head_sha(on_b) == ahead
