"""The local forge against real bare repositories: PRs, merges, statuses and CI."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from conveyor.clock import FakeClock
from conveyor.errors import ForgeError, HeadMismatch, InvalidField, MergeConflict
from gateways import git
from gateways.forge import Forge, PullRequest
from gateways.local_forge import CI_CONTEXT, MAX_CHECK_LOG_BYTES, LocalForge

REPO = "demo"
BRANCH = "feature/DEMO-1-add-greeting"
OTHER = "feature/DEMO-2-other-greeting"


@pytest.fixture(autouse=True)
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No global or system git config, as on a fresh CI machine."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def make_forge(
    tmp_path: Path, checks: dict[str, Sequence[str]] | None = None, timeout_s: float = 30.0
) -> LocalForge:
    forge = LocalForge(
        tmp_path / "forge", checks or {}, check_timeout_s=timeout_s, clock=FakeClock()
    )
    forge.create_repo(REPO, initial_files={"README.md": b"hello\n", "docs/guide.md": b"guide\n"})
    return forge


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    return make_forge(tmp_path)


def push(
    forge: LocalForge, tmp_path: Path, branch: str, files: dict[str, str], base: str = "origin/main"
) -> str:
    """Commit `files` on `branch` in a clone (as an agent would) and push it; return the sha."""
    clone = tmp_path / "clone"
    git.ensure_clone(forge.clone_url(REPO), clone)
    worktree = tmp_path / "wt" / branch.replace("/", "_")
    git.ensure_worktree(clone, worktree, branch, base)
    for name, text in files.items():
        (worktree / name).parent.mkdir(parents=True, exist_ok=True)
        (worktree / name).write_text(text)
    git.commit_all(worktree, f"change {', '.join(files)}")
    return git.push_branch(worktree, branch)


def effects(forge: LocalForge, kind: str | None = None) -> list[dict[str, object]]:
    if not forge.effects_path.exists():
        return []
    lines = [json.loads(line) for line in forge.effects_path.read_text().splitlines()]
    return [e for e in lines if kind is None or e["kind"] == kind]


def test_local_forge_satisfies_the_forge_protocol(forge: LocalForge):
    implementation: Forge = forge
    assert implementation.clone_url(REPO).endswith("repos/demo.git")


def test_create_repo_is_idempotent_and_commits_the_initial_files(forge: LocalForge):
    main = forge.branch_head(REPO, "main")
    forge.create_repo(REPO, initial_files={"other.txt": b"ignored"})
    assert forge.branch_head(REPO, "main") == main
    assert forge.read_file(REPO, "main", "README.md") == b"hello\n"
    assert forge.read_file(REPO, "main", "other.txt") is None
    assert effects(forge) == []


def test_read_file_and_list_dir_see_a_pushed_branch(tmp_path: Path, forge: LocalForge):
    sha = push(forge, tmp_path, BRANCH, {"docs/new.md": "new\n"})
    assert forge.branch_head(REPO, BRANCH) == sha
    assert forge.read_file(REPO, BRANCH, "docs/new.md") == b"new\n"
    assert forge.read_file(REPO, sha, "./docs/new.md") == b"new\n"
    assert forge.read_file(REPO, "main", "docs/new.md") is None
    assert forge.list_dir(REPO, BRANCH, "docs") == ["guide.md", "new.md"]
    assert forge.list_dir(REPO, BRANCH, "") == ["README.md", "docs"]
    assert forge.list_dir(REPO, "main", "docs") == ["guide.md"]


def test_read_file_and_list_dir_answer_empty_for_what_is_missing(forge: LocalForge):
    assert forge.read_file(REPO, "main", "nope.md") is None
    assert forge.read_file(REPO, "main", "docs") is None
    assert forge.read_file(REPO, "feature/DEMO-9-never-pushed", "README.md") is None
    assert forge.list_dir(REPO, "main", "nope") == []
    assert forge.list_dir(REPO, "main", "README.md") == []
    assert forge.branch_head(REPO, "feature/DEMO-9-never-pushed") is None


@pytest.mark.parametrize("path", ["../secret", "/etc/passwd", "docs/../../x", ".git/config"])
def test_read_file_refuses_paths_that_leave_the_tree(forge: LocalForge, path: str):
    with pytest.raises(InvalidField):
        forge.read_file(REPO, "main", path)


def test_open_pull_twice_opens_one_pull_request_with_one_effect(tmp_path: Path, forge: LocalForge):
    sha = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi\n"})
    first = forge.open_pull(REPO, BRANCH, "Add greeting", "Body")
    second = forge.open_pull(REPO, BRANCH, "Add greeting again", "Other body")
    assert first == second
    assert (first.number, first.head, first.base, first.state, first.head_sha) == (
        1,
        BRANCH,
        "main",
        "open",
        sha,
    )
    assert [(e["kind"], e["number"]) for e in effects(forge)] == [("pr_opened", 1)]
    assert forge.find_pull(REPO, BRANCH) == first
    assert forge.get_pull(REPO, 1) == first


def test_pull_request_numbers_increase_per_repository(tmp_path: Path, forge: LocalForge):
    push(forge, tmp_path, BRANCH, {"a.txt": "a"})
    push(forge, tmp_path, OTHER, {"b.txt": "b"})
    forge.create_repo("other")
    assert forge.open_pull(REPO, BRANCH, "A", "").number == 1
    assert forge.open_pull(REPO, OTHER, "B", "").number == 2
    assert forge.find_pull("other", BRANCH) is None


def test_two_threads_opening_the_same_pull_request_get_one(tmp_path: Path, forge: LocalForge):
    push(forge, tmp_path, BRANCH, {"greeting.txt": "hi\n"})
    barrier = threading.Barrier(8)
    results: list[PullRequest] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        barrier.wait()
        try:
            results.append(forge.open_pull(REPO, BRANCH, "Add greeting", ""))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert {pr.number for pr in results} == {1}
    assert len(effects(forge, "pr_opened")) == 1
    assert [p.name for p in (forge.root / "pulls" / REPO).glob("*.json")] == ["1.json"]


def test_open_pull_for_a_branch_that_was_never_pushed_is_refused(forge: LocalForge):
    with pytest.raises(ForgeError):
        forge.open_pull(REPO, BRANCH, "Add greeting", "")
    assert effects(forge) == []


def test_get_pull_reports_the_current_head_of_an_open_pull_request(
    tmp_path: Path, forge: LocalForge
):
    push(forge, tmp_path, BRANCH, {"a.txt": "1"})
    forge.open_pull(REPO, BRANCH, "A", "")
    moved = push(forge, tmp_path, BRANCH, {"a.txt": "2"})
    assert forge.get_pull(REPO, 1).head_sha == moved
    with pytest.raises(ForgeError):
        forge.get_pull(REPO, 2)


def test_merge_pull_makes_a_real_merge_commit_on_main(tmp_path: Path, forge: LocalForge):
    # Given a pushed branch with a new file and its pull request
    old_main = forge.branch_head(REPO, "main")
    head = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi\n"})
    pr = forge.open_pull(REPO, BRANCH, "Add greeting", "")
    # When it is merged at the checked head
    merged = forge.merge_pull(REPO, pr.number, expected_head_sha=head)
    # Then main is a --no-ff merge commit of old main and the head, holding the file
    bare = forge.repo_path(REPO)
    main = forge.branch_head(REPO, "main")
    assert merged.merged
    assert merged.state == "closed"
    assert merged.merge_commit == main
    assert merged.merged_at is not None
    parents = git.run_git(["rev-list", "--parents", "-n", "1", "main"], git_dir=bare).split()
    assert parents == [main, old_main, head]
    subject = git.run_git(["log", "-1", "--format=%s", "main"], git_dir=bare)
    assert subject == f"Merge pull request #1 from {BRANCH}"
    assert forge.read_file(REPO, "main", "greeting.txt") == b"hi\n"
    assert forge.read_file(REPO, "main", "README.md") == b"hello\n"
    assert forge.get_pull(REPO, 1) == merged
    # And no scratch worktree is left registered in the bare repository
    assert git.run_git(["worktree", "list", "--porcelain"], git_dir=bare).count("worktree ") == 1


def test_merging_twice_merges_once(tmp_path: Path, forge: LocalForge):
    head = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi\n"})
    pr = forge.open_pull(REPO, BRANCH, "Add greeting", "")
    first = forge.merge_pull(REPO, pr.number, expected_head_sha=head)
    main = forge.branch_head(REPO, "main")
    second = forge.merge_pull(REPO, pr.number, expected_head_sha=head)
    assert second == first
    assert forge.branch_head(REPO, "main") == main
    assert len(effects(forge, "pr_merged")) == 1
    # And opening it again returns the merged pull request, not a new one
    assert forge.open_pull(REPO, BRANCH, "Add greeting", "") == first
    assert len(effects(forge, "pr_opened")) == 1


def test_merge_pull_refuses_when_the_branch_moved(tmp_path: Path, forge: LocalForge):
    checked = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi\n"})
    pr = forge.open_pull(REPO, BRANCH, "Add greeting", "")
    push(forge, tmp_path, BRANCH, {"greeting.txt": "hi again\n"})
    main = forge.branch_head(REPO, "main")
    with pytest.raises(HeadMismatch):
        forge.merge_pull(REPO, pr.number, expected_head_sha=checked)
    assert forge.branch_head(REPO, "main") == main
    assert not forge.get_pull(REPO, pr.number).merged
    assert effects(forge, "pr_merged") == []


def test_merge_pull_raises_merge_conflict_and_leaves_main_alone(tmp_path: Path, forge: LocalForge):
    # Given two branches from the same main that change the same line differently
    first = push(forge, tmp_path, BRANCH, {"README.md": "hello from one\n"})
    second = push(forge, tmp_path, OTHER, {"README.md": "hello from two\n"})
    one = forge.open_pull(REPO, BRANCH, "One", "")
    two = forge.open_pull(REPO, OTHER, "Two", "")
    forge.merge_pull(REPO, one.number, expected_head_sha=first)
    main = forge.branch_head(REPO, "main")
    # When the second is merged, Then it conflicts and nothing changed
    with pytest.raises(MergeConflict, match=r"README\.md"):
        forge.merge_pull(REPO, two.number, expected_head_sha=second)
    assert forge.branch_head(REPO, "main") == main
    assert forge.get_pull(REPO, two.number).state == "open"
    assert len(effects(forge, "pr_merged")) == 1
    bare = forge.repo_path(REPO)
    assert git.run_git(["worktree", "list", "--porcelain"], git_dir=bare).count("worktree ") == 1


def test_merge_pull_adopts_a_merge_a_crash_left_on_main(tmp_path: Path, forge: LocalForge):
    # Given main already holds the merge of the head, but the PR record was never updated
    head = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi\n"})
    pr = forge.open_pull(REPO, BRANCH, "Add greeting", "")
    bare = forge.repo_path(REPO)
    scratch = tmp_path / "crash"
    git.run_git(["worktree", "add", "--quiet", "--detach", str(scratch), "main"], git_dir=bare)
    git.run_git(
        [*git.identity("F", "f@x"), "merge", "--quiet", "--no-ff", "-m", "m", head], scratch
    )
    crashed_merge = git.head_sha(scratch)
    git.run_git(["update-ref", "refs/heads/main", crashed_merge], git_dir=bare)
    # When merge_pull is retried, Then it records that merge instead of merging again
    merged = forge.merge_pull(REPO, pr.number, expected_head_sha=head)
    assert merged.merge_commit == crashed_merge
    assert forge.branch_head(REPO, "main") == crashed_merge
    assert len(effects(forge, "pr_merged")) == 1


def test_ci_records_pending_then_success_for_a_passing_check(tmp_path: Path):
    # The check passes only in a checkout of the pushed commit itself.
    check = [
        sys.executable,
        "-c",
        "import pathlib, sys; print('checking'); "
        "sys.exit(0 if pathlib.Path('greeting.txt').read_text() == 'hi' else 3)",
    ]
    forge = make_forge(tmp_path, {REPO: check})
    sha = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi"})
    forge.on_push(REPO, BRANCH, sha)
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.context) == ("success", CI_CONTEXT)
    assert [e["state"] for e in effects(forge, "status_set")] == ["pending", "success"]
    assert "checking" in (forge.root / "ci-logs" / REPO / f"{sha}.log").read_text()
    assert list((forge.root / "tmp" / REPO).iterdir()) == []


def test_ci_records_failure_for_a_failing_check(tmp_path: Path):
    forge = make_forge(tmp_path, {REPO: [sys.executable, "-c", "import sys; sys.exit(1)"]})
    sha = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi"})
    forge.on_push(REPO, BRANCH, sha)
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert status.state == "failure"
    assert "1" in status.description


def test_a_failing_checks_output_tail_is_kept_bounded_and_readable(tmp_path: Path):
    # Given a check that prints much more than the forge keeps, a marker last, and fails
    script = (
        "import sys\n"
        "for n in range(20000): print(f'noise line {n}')\n"
        "print('MARKER: test_greeting failed', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    forge = make_forge(tmp_path, {REPO: [sys.executable, "-c", script]})
    sha = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi"})
    assert forge.check_log(REPO, sha) == ""
    forge.on_push(REPO, BRANCH, sha)
    # Then its status is red and the tail of its output, stderr included, is kept bounded
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert status.state == "failure"
    kept = forge.root / "ci-logs" / REPO / f"{sha}.log"
    assert kept.stat().st_size == MAX_CHECK_LOG_BYTES
    log = forge.check_log(REPO, sha)
    assert log.rstrip().endswith("MARKER: test_greeting failed")
    assert "noise line 19999" in log
    assert "noise line 0\n" not in log


def test_ci_records_error_and_kills_a_check_that_times_out(tmp_path: Path):
    # Given a check that starts a grandchild, which writes its pid, and outlives the timeout
    pid_file = tmp_path / "grandchild.pid"
    grandchild = (
        f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); "
        "time.sleep(30)"
    )
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
        "time.sleep(30)"
    )
    forge = make_forge(tmp_path, {REPO: [sys.executable, "-c", code]}, timeout_s=1.0)
    sha = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi"})
    # When CI runs it
    forge.on_push(REPO, BRANCH, sha)
    # Then the status is error and the whole process group died with it
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert status.state == "error"
    assert "timed out" in status.description
    assert grandchild_is_dead(int(pid_file.read_text()))


def grandchild_is_dead(pid: int) -> bool:
    """Killed means gone or a zombie; an orphan's reaper may take a while to collect it."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        proc.wait(timeout=5)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return proc.status() == psutil.STATUS_ZOMBIE
    return True


def test_ci_without_a_check_command_records_success(tmp_path: Path, forge: LocalForge):
    sha = push(forge, tmp_path, BRANCH, {"greeting.txt": "hi"})
    forge.on_push(REPO, BRANCH, sha)
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.description) == ("success", "no check command configured")


def test_on_push_refuses_a_commit_the_repository_does_not_have(forge: LocalForge):
    with pytest.raises(ForgeError):
        forge.on_push(REPO, BRANCH, "0" * 40)


def test_set_status_records_each_change_once_and_combines_contexts(
    tmp_path: Path, forge: LocalForge
):
    sha = push(forge, tmp_path, BRANCH, {"a.txt": "a"})
    assert forge.commit_status(REPO, sha) is None
    forge.set_status(REPO, sha, "success", CI_CONTEXT, "ok")
    forge.set_status(REPO, sha, "success", CI_CONTEXT, "ok")
    assert len(effects(forge, "status_set")) == 1
    forge.set_status(REPO, sha, "failure", "lint", "bad")
    status = forge.commit_status(REPO, sha)
    assert status is not None
    assert (status.state, status.context) == ("failure", "lint")
    with pytest.raises(InvalidField):
        forge.set_status(REPO, sha, "green", CI_CONTEXT, "")


@pytest.mark.parametrize("repo", ["../evil", "Demo", "-x", "a.b", ""])
def test_invalid_repo_names_are_rejected_before_any_git_call(tmp_path: Path, repo: str):
    forge = LocalForge(tmp_path / "forge", {})
    with pytest.raises(InvalidField):
        forge.create_repo(repo)
    with pytest.raises(InvalidField):
        forge.open_pull(repo, BRANCH, "t", "")
    with pytest.raises(InvalidField):
        forge.find_pull(repo, BRANCH)
    with pytest.raises(InvalidField):
        forge.read_file(repo, "main", "README.md")
    assert not (tmp_path / "forge").exists()


@pytest.mark.parametrize("branch", ["main", "--force", "feature/DEMO-1-a..b", "refs/heads/x"])
def test_invalid_branch_names_are_rejected_before_any_git_call(forge: LocalForge, branch: str):
    with pytest.raises(InvalidField):
        forge.open_pull(REPO, branch, "t", "")
    with pytest.raises(InvalidField):
        forge.find_pull(REPO, branch)
    assert effects(forge) == []


def test_invalid_check_command_configuration_is_rejected(tmp_path: Path):
    with pytest.raises(InvalidField):
        LocalForge(tmp_path, {"Bad Repo": ["true"]})
    with pytest.raises(InvalidField):
        LocalForge(tmp_path, {REPO: "make check"})


def test_pushes_checks_and_merges_in_parallel_on_one_repository_never_fail(tmp_path: Path):
    # Checks that read history and take a moment, so pushes land while they run.
    check = [sys.executable, "-c", "import subprocess; subprocess.run(['git', 'log', '-3'])"]
    forge = make_forge(tmp_path, checks={REPO: check})
    bare = forge.repo_path(REPO)
    errors: list[BaseException] = []
    merged: list[str] = []

    def deliver(n: int) -> None:
        try:
            clone = tmp_path / f"clone-{n}"
            git.ensure_clone(forge.clone_url(REPO), clone)
            branch = f"feature/DEMO-{n + 1}-parallel"
            worktree = tmp_path / f"wt-{n}"
            git.ensure_worktree(clone, worktree, branch, "origin/main")
            for round_ in range(3):
                (worktree / f"file-{n}.txt").write_text(f"{n} {round_}\n")
                git.commit_all(worktree, f"change {n} {round_}")
                head = git.push_branch(worktree, branch)
                forge.on_push(REPO, branch, head)
                status = forge.commit_status(REPO, head)
                assert status is not None
                assert status.state == "success", forge.check_log(REPO, head)
            pull = forge.open_pull(REPO, branch, f"item {n}", "")
            merged.append(forge.merge_pull(REPO, pull.number, expected_head_sha=head).merge_commit)
        except BaseException as err:  # the assertion is made in the test thread
            errors.append(err)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert len(merged) == 8
    main = forge.branch_head(REPO, "main")
    assert main is not None
    for n in range(8):
        assert forge.read_file(REPO, main, f"file-{n}.txt") == f"{n} 2\n".encode()
    # No worktree of the bare repository was ever left behind (or needed).
    assert not (bare / "worktrees").exists()
    fsck = git.run_git_result(["fsck", "--connectivity-only"], git_dir=bare)
    assert fsck.ok, fsck.stderr
