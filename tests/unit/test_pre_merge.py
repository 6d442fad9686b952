"""The merge step's git and process pieces on real repositories and real processes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import psutil
import pytest

from actors.jobs import pre_merge
from actors.jobs.context import JobContext
from conveyor.config import load
from gateways import git
from tests.harness import wait_until
from tests.unit.test_git import make_origin, no_git_config  # noqa: F401 - autouse fixture

BRANCH = "feature/DEMO-1-add-greeting"


def _commit(worktree: Path, name: str, text: str) -> None:
    (worktree / name).write_text(text)
    assert git.commit_all(worktree, f"change {name}")


def _diverged(tmp_path: Path) -> Path:
    """A worktree on BRANCH whose a.txt and b.txt main changed differently since."""
    origin = make_origin(tmp_path)
    clone = tmp_path / "clone"
    git.ensure_clone(str(origin), clone)
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    (worktree / "b.txt").write_text("branch\n")
    _commit(worktree, "a.txt", "branch\n")
    _commit(worktree, "c.txt", "branch only\n")
    other = tmp_path / "other"
    git.run_git(["clone", "--quiet", str(origin), str(other)])
    for name in ("a.txt", "b.txt"):
        (other / name).write_text("main\n")
    assert git.commit_all(other, "main moves")
    git.run_git(["push", "--quiet", "origin", "main"], other)
    shutil.rmtree(other)
    git.fetch(worktree)
    return worktree


def test_a_conflicting_rebase_names_the_files_and_leaves_the_branch_as_it_was(tmp_path: Path):
    worktree = _diverged(tmp_path)
    before = git.head_sha(worktree)
    assert git.rebase(worktree, "origin/main") == ["a.txt", "b.txt"]
    assert git.head_sha(worktree) == before
    assert git.run_git(["status", "--porcelain"], worktree) == ""
    assert git.run_git_result(["rev-parse", "--verify", "REBASE_HEAD"], worktree).ok is False


def test_a_clean_rebase_reports_no_conflicts(tmp_path: Path):
    origin = make_origin(tmp_path)
    clone = tmp_path / "clone"
    git.ensure_clone(str(origin), clone)
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    _commit(worktree, "mine.txt", "x\n")
    assert git.rebase(worktree, "origin/main") is None


def _ctx(python: str = sys.executable) -> JobContext:
    cfg = load(env={}, overrides={"launcher": {"kill_grace_s": 0.5}})
    return cast(JobContext, SimpleNamespace(cfg=cfg, python=python))


def test_a_check_runs_through_the_shell_with_python_replaced(tmp_path: Path):
    log = tmp_path / "check.log"
    code = pre_merge._run_one(
        _ctx(),
        "{python} -c 'import sys; print(\"hi from\", sys.version_info[0])'; exit 3",
        tmp_path,
        log,
        {"PATH": "/usr/bin:/bin"},
        30.0,
    )
    assert code == 3
    assert "hi from 3" in log.read_text()


def test_a_check_past_its_timeout_is_killed_with_its_whole_tree(tmp_path: Path):
    log = tmp_path / "check.log"
    pids = tmp_path / "pids"
    command = f"sleep 60 & echo $! > {pids}; sleep 60"
    code = pre_merge._run_one(_ctx(), command, tmp_path, log, {"PATH": "/usr/bin:/bin"}, 0.5)
    assert code is None
    child = int(pids.read_text())

    def _gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(_gone, what="the check's background child killed", deadline_s=10)


def test_restoring_the_worktree_drops_what_a_check_wrote(tmp_path: Path):
    origin = make_origin(tmp_path)
    clone = tmp_path / "clone"
    git.ensure_clone(str(origin), clone)
    worktree = tmp_path / "wt"
    git.ensure_worktree(clone, worktree, BRANCH)
    (worktree / ".gitignore").write_text("cache/\n")
    assert git.commit_all(worktree, "ignore the cache")
    (worktree / "README.md").write_text("changed by a check\n")
    (worktree / "report.txt").write_text("new\n")
    (worktree / "cache").mkdir()
    (worktree / "cache" / "kept").write_text("ignored stays\n")
    pre_merge._restore(worktree)
    assert git.run_git(["status", "--porcelain"], worktree) == ""
    assert (worktree / "README.md").read_text() == "hello\n"
    assert not (worktree / "report.txt").exists()
    assert (worktree / "cache" / "kept").exists()


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_a_non_positive_check_timeout_is_refused(timeout_s: float):
    from conveyor.errors import ConfigError

    repo = {"name": "demo", "prefix": "DEMO", "pre_merge_timeout_s": timeout_s}
    with pytest.raises(ConfigError, match=r"repos\[0\]\.pre_merge_timeout_s: must be > 0"):
        load(env={}, overrides={"repos": [repo]})


def test_an_empty_check_command_is_refused():
    from conveyor.errors import ConfigError

    repo = {"name": "demo", "prefix": "DEMO", "pre_merge_checks": ["make security", " "]}
    with pytest.raises(ConfigError, match=r"repos\[0\]\.pre_merge_checks: a command is empty"):
        load(env={}, overrides={"repos": [repo]})
