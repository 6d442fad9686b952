"""Thin, safe git helpers: argument lists, never a shell; a timeout on every call.

Every function is idempotent where its name promises a state (`ensure_*`,
`init_bare`, `remove_worktree`), so a caller that crashed half-way can simply
call it again. Branch names go through `conveyor.validate.branch` before they
reach git, and paths are made absolute so they can never read as options.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conveyor import validate
from conveyor.errors import ConveyorError, GitError, InvalidField, redact_credentials
from conveyor.logs import get_logger
from gateways.git_run import GIT_TIMEOUT_S as GIT_TIMEOUT_S
from gateways.git_run import GitResult as GitResult
from gateways.git_run import absolute as _abs
from gateways.git_run import child_env as child_env
from gateways.git_run import git_env as git_env
from gateways.git_run import git_executable as git_executable
from gateways.git_run import run_git as run_git
from gateways.git_run import run_git_result as run_git_result

log = get_logger(__name__)

DEFAULT_AUTHOR_NAME = "Conveyor Agent"
DEFAULT_AUTHOR_EMAIL = "agent@conveyor.local"

_SHA_RE = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(?:[~^][0-9]*)*$")


class WorktreeConflict(ConveyorError):
    """The worktree path holds something Conveyor did not put there or cannot reuse."""


def init_bare(path: Path, default_branch: str = "main") -> None:
    """Create a bare repository at `path` whose HEAD is `default_branch`; no-op if present."""
    _plain_branch(default_branch)
    path = _abs(path)
    if _is_bare_repo(path):
        return
    path.mkdir(parents=True, exist_ok=True)
    run_git(["init", "--quiet", "--bare", f"--initial-branch={default_branch}", "--", str(path)])
    log.info("git.bare_initialised", path=str(path))


def ensure_clone(url: str, path: Path) -> None:
    """Clone `url` to `path`, or fetch with prune if it is already a clone of it."""
    _url(url)
    path = _abs(path)
    origin = _origin_of(path)
    if origin is not None:
        if origin != url:
            run_git(["remote", "set-url", "origin", url], path)
        run_git(["fetch", "--quiet", "--prune", "origin"], path)
        return
    if path.exists():
        # Not a clone: the leftover of a crash. Clones live in Conveyor's own
        # directory, and a clone is rebuilt from the remote, so nothing is lost.
        log.warning("git.partial_clone_removed", path=str(path))
        _remove_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Clone beside the target and rename: a crash never leaves a half clone at `path`.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.clone-", dir=path.parent))
    try:
        run_git(["clone", "--quiet", "--", url, str(staging / "repo")])
        (staging / "repo").rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("git.cloned", url=redact_credentials(url), path=str(path))


def ensure_worktree(clone: Path, worktree: Path, branch: str, base: str = "origin/main") -> bool:
    """Make `worktree` a worktree of `clone` on `branch`, repairing what a crash left.

    True when it added the worktree on a new local branch made from origin's branch
    (or from `base` where origin has none): it is then exactly at origin's head as last
    fetched, with nothing for `catch_up` to do.
    """
    validate.branch(branch)
    _ref(base)
    clone, worktree = _abs(clone), _abs(worktree)
    # Forget worktrees whose directory vanished, or git refuses to check the branch out again.
    run_git(["worktree", "prune"], clone)
    entry = _worktree_entry(clone, worktree)
    if entry is not None:
        if entry.locked_reason == "initializing" or not worktree.exists():
            # `git worktree add` was killed before it finished; nothing of value is inside.
            log.warning("git.half_worktree_discarded", path=str(worktree), branch=branch)
            _discard_registered(clone, worktree)
        elif entry.branch == f"refs/heads/{branch}":
            return False
        else:
            raise WorktreeConflict(
                f"{worktree} is a worktree on {entry.branch or 'a detached HEAD'}, not {branch}"
            )
    elif worktree.exists():
        if not _is_disposable(worktree):
            raise WorktreeConflict(f"{worktree} exists and is not a worktree of {clone}")
        log.warning("git.orphan_worktree_removed", path=str(worktree))
        _remove_path(worktree)
    worktree.parent.mkdir(parents=True, exist_ok=True)
    fresh = True
    if _has_ref(clone, f"refs/heads/{branch}"):
        run_git(["worktree", "add", "--quiet", "--", str(worktree), branch], clone)
        fresh = False
    elif _has_ref(clone, f"refs/remotes/origin/{branch}"):
        run_git(
            [
                "worktree",
                "add",
                "--quiet",
                "--no-track",
                "-b",
                branch,
                "--",
                str(worktree),
                f"refs/remotes/origin/{branch}",
            ],
            clone,
        )
    else:
        run_git(
            ["worktree", "add", "--quiet", "--no-track", "-b", branch, "--", str(worktree), base],
            clone,
        )
    log.info("git.worktree_added", path=str(worktree), branch=branch)
    return fresh


def commit_all(
    worktree: Path,
    message: str,
    *,
    author_name: str = DEFAULT_AUTHOR_NAME,
    author_email: str = DEFAULT_AUTHOR_EMAIL,
) -> bool:
    """Stage everything and commit if anything changed; return whether a commit was made."""
    if not message.strip():
        raise InvalidField("message", "must not be empty")
    committer = identity(author_name, author_email)
    worktree = _abs(worktree)
    run_git(["add", "--all"], worktree)
    staged = run_git_result(["diff", "--cached", "--quiet"], worktree)
    if staged.returncode == 0:
        return False
    if staged.returncode != 1:
        raise GitError(["diff", "--cached", "--quiet"], staged.returncode, staged.stderr)
    run_git(
        [*committer, "commit", "--quiet", "--no-verify", "-m", message],
        worktree,
    )
    log.info("git.committed", path=str(worktree), sha=head_sha(worktree))
    return True


def push_branch(worktree: Path, branch: str, *, force: bool = True) -> str:
    """Push local `branch` to the same name on origin; return the pushed sha."""
    validate.branch(branch)
    worktree = _abs(worktree)
    ref = f"refs/heads/{branch}"
    sha = head_sha(worktree, ref)
    refspec = f"{'+' if force else ''}{ref}:{ref}"
    run_git(["push", "--quiet", "--no-verify", "origin", refspec], worktree)
    log.info("git.pushed", branch=branch, sha=sha)
    return sha


def head_sha(path: Path, ref: str = "HEAD") -> str:
    """Return the commit sha `ref` names in the repository at `path`."""
    _ref(ref)
    return run_git(["rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}"], _abs(path))


def resolve_commit(path: Path, ref: str) -> str | None:
    """Return the commit sha `ref` names, or None when it names nothing."""
    _ref(ref)
    result = run_git_result(
        ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], _abs(path)
    )
    return result.text if result.ok else None


def remove_worktree(clone: Path, worktree: Path) -> None:
    """Remove `worktree` from `clone` and from disk; no-op if it is already gone."""
    clone, worktree = _abs(clone), _abs(worktree)
    if _worktree_entry(clone, worktree) is not None:
        _discard_registered(clone, worktree)
        log.info("git.worktree_removed", path=str(worktree))
    elif worktree.exists() and _is_disposable(worktree):
        _remove_path(worktree)
    run_git(["worktree", "prune"], clone)


def identity(name: str, email: str) -> list[str]:
    """Return `-c` options naming the committer, so no global git config is needed."""
    for field, value in (("author_name", name), ("author_email", email)):
        if not value or any(ch in value for ch in "<>\n\r\0"):
            raise InvalidField(field, "must be non-empty without <, > or newlines")
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def is_sha(value: str) -> bool:
    """Whether `value` is a full lower-case hex object id."""
    return bool(_SHA_RE.fullmatch(value))


@dataclass(frozen=True)
class _Worktree:
    path: Path
    branch: str | None
    locked_reason: str | None


def _worktree_entry(clone: Path, worktree: Path) -> _Worktree | None:
    for entry in _worktrees(clone):
        if entry.path == worktree:
            return entry
    return None


def _worktrees(repo: Path) -> list[_Worktree]:
    out = run_git(["worktree", "list", "--porcelain"], repo)
    entries: list[_Worktree] = []
    for block in out.split("\n\n"):
        path: Path | None = None
        branch: str | None = None
        locked: str | None = None
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key == "worktree":
                path = Path(value).resolve()
            elif key == "branch":
                branch = value
            elif key == "locked":
                locked = value
        if path is not None:
            entries.append(_Worktree(path, branch, locked))
    return entries


def _discard_registered(clone: Path, worktree: Path) -> None:
    # Unlock first: a locked entry survives both `remove` and `prune`.
    run_git_result(["worktree", "unlock", "--", str(worktree)], clone)
    if worktree.exists():
        removed = run_git_result(["worktree", "remove", "--force", "--", str(worktree)], clone)
        if not removed.ok:
            _remove_path(worktree)
    run_git(["worktree", "prune"], clone)


def _is_disposable(path: Path) -> bool:
    """Whether `path` is an empty directory or a worktree whose repository is gone."""
    if path.is_dir() and not any(path.iterdir()):
        return True
    dotgit = path / ".git"
    if not dotgit.is_file():
        return False
    text = dotgit.read_text("utf-8", "replace").strip()
    if not text.startswith("gitdir: "):
        return False
    return not Path(text.removeprefix("gitdir: ")).exists()


def _is_bare_repo(path: Path) -> bool:
    if not (path / "HEAD").is_file():
        return False
    result = run_git_result(["rev-parse", "--is-bare-repository"], git_dir=path)
    return result.ok and result.text == "true"


def _origin_of(path: Path) -> str | None:
    """The origin URL of the clone at `path`; None when `path` is no clone with an origin."""
    if not (path / ".git").is_dir():
        return None
    # The top level must be `path` itself, not an enclosing repository.
    top = run_git_result(["rev-parse", "--show-toplevel"], path)
    if not top.ok or Path(top.text).resolve() != path:
        return None
    origin = run_git_result(["config", "--get", "remote.origin.url"], path)
    return origin.text if origin.ok else None


def _has_ref(repo: Path, ref: str) -> bool:
    return run_git_result(["show-ref", "--verify", "--quiet", ref], repo).ok


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _ref(value: str, field: str = "ref") -> str:
    if not isinstance(value, str) or not _REF_RE.fullmatch(value) or ".." in value:
        raise InvalidField(field, "must be a plain ref name (A-Z a-z 0-9 . _ / -), no '..'")
    return value


def _plain_branch(value: str) -> str:
    _ref(value, "default_branch")
    if value.endswith("/") or "/." in value or value.endswith(".lock") or value[-1] in "~^":
        raise InvalidField("default_branch", "must be a plain branch name")
    return value


def _url(value: str) -> str:
    if not value or value.startswith("-") or any(ch in value for ch in "\n\r\0"):
        raise InvalidField("url", "must be non-empty, not start with '-', and be one line")
    return value


def fetch(path: Path) -> None:
    """Update the remote-tracking refs of a clone or worktree from origin."""
    run_git(["fetch", "--quiet", "--prune", "origin"], path)


@dataclass(frozen=True)
class Heads:
    """A worktree's HEAD and origin's head of its branch as last fetched."""

    head: str
    remote: str | None
    """None when origin has no such branch."""
    moved: bool = False
    """Whether `catch_up_heads` reset the worktree to origin's head."""
    asked: frozenset[str] = frozenset()
    """The paths looked up in origin's head (`catch_up_heads(paths=...)`)."""
    held: frozenset[str] = frozenset()
    """Those of `asked` that origin's head holds (a file or a directory)."""

    @property
    def pushed(self) -> bool:
        """Whether origin's branch is at the worktree's HEAD: nothing local is left to push."""
        return self.head == self.remote


def catch_up(worktree: Path, branch: str, *, fetched: bool = False) -> bool:
    """Move `worktree` to origin's `branch` when origin has commits it lacks; True if moved.

    With launchers on several hosts a task's jobs hop between their own worktrees: one
    left behind by another host's pushes would work on, and force-push, a stale head.
    A local head ahead of origin (this host's own unpushed commits) is kept. `fetched`:
    the clone was fetched just before, under the same lock (its refs are the worktree's).
    """
    return catch_up_heads(worktree, branch, fetched=fetched).moved


def catch_up_heads(
    worktree: Path, branch: str, *, fetched: bool = False, paths: Sequence[str] = ()
) -> Heads:
    """`catch_up`, answering both heads after it: one git process unless the heads differ.

    Both heads (and which of `paths`, relative to the top, origin's head holds) are
    read at once; only a worktree whose HEAD is not origin's asks git whether it is
    ahead (kept) or behind or diverged (reset to origin's head).
    """
    validate.branch(branch)
    if not fetched:
        fetch(worktree)
    remote_ref = f"refs/remotes/origin/{branch}"
    names = [f"{_ref(rev)}^{{commit}}" for rev in ("HEAD", remote_ref)]
    names.extend(f"{remote_ref}:{_tree_path(path)}" for path in paths)
    found = _objects(worktree, names)
    head, remote = (_commit_of(answer) for answer in found[:2])
    asked = frozenset(paths)
    held = frozenset(p for p, answer in zip(paths, found[2:], strict=True) if answer is not None)
    if head is None:
        if remote is None:
            raise GitError(["cat-file", "HEAD"], 1, f"{worktree}: HEAD names no commit")
    elif remote is None or remote == head or is_ancestor(worktree, remote, head):
        return Heads(head, remote, asked=asked, held=held)
    run_git(["reset", "--quiet", "--hard", remote], worktree)
    log.warning("git.worktree_caught_up", path=str(worktree), branch=branch)
    return Heads(remote, remote, moved=True, asked=asked, held=held)


def commits(path: Path, revs: list[str]) -> list[str | None]:
    """The commit each of `revs` names in the repository at `path` (None: none), in one process."""
    found = _objects(path, [f"{_ref(rev)}^{{commit}}" for rev in revs])
    return [_commit_of(answer) for answer in found]


def _objects(path: Path, names: list[str]) -> list[tuple[str, str] | None]:
    """`(sha, type)` of the object each of `names` names (None: none), in one git process."""
    query = "".join(f"{name}\n" for name in names).encode()
    out = run_git(
        ["cat-file", "--batch-check=%(objectname) %(objecttype)"], _abs(path), stdin=query
    )
    found: list[tuple[str, str] | None] = []
    for line in out.splitlines():
        # "<sha> <type>" for an object; "<name> missing" (or "ambiguous") for none.
        sha, _, kind = line.partition(" ")
        found.append((sha, kind) if is_sha(sha) and kind in _OBJECT_TYPES else None)
    if len(found) != len(names):
        raise GitError(["cat-file", "--batch-check"], 0, f"{len(found)} answers for {len(names)}")
    return found


_OBJECT_TYPES = frozenset({"commit", "tree", "blob", "tag"})


def _commit_of(answer: tuple[str, str] | None) -> str | None:
    return answer[0] if answer is not None and answer[1] == "commit" else None


def _tree_path(value: str) -> str:
    if not value or value.startswith(("/", "./", "../")) or any(c in value for c in "\n\r\0"):
        raise InvalidField("path", "must be a one-line path relative to the top")
    return value


def paths_in_tree(path: Path, commit: str, paths: list[str]) -> list[str]:
    """Which of `paths` (relative to the top) the tree of `commit` holds, in git's order."""
    _ref(commit)
    found = run_git(["ls-tree", "-r", "--name-only", commit, "--", *paths], _abs(path))
    return [line for line in found.splitlines() if line]


def is_ancestor(path: Path, ancestor: str, descendant: str = "HEAD") -> bool:
    """True if `ancestor` is contained in `descendant` (the branch is up to date with it)."""
    _ref(ancestor)
    _ref(descendant)
    return run_git_result(["merge-base", "--is-ancestor", ancestor, descendant], path).ok


def rebase(
    worktree: Path,
    onto: str,
    *,
    author_name: str = "Conveyor",
    author_email: str = "conveyor@conveyor.local",
) -> list[str] | None:
    """Rebase the checked-out branch onto `onto`: None when it applied.

    Otherwise abort it and return the paths in conflict where it stopped (the first
    commit that does not apply), sorted; empty when it stopped for another reason,
    such as local changes in the way.
    """
    _ref(onto)
    result = run_git_result(
        [*identity(author_name, author_email), "rebase", "--quiet", onto], worktree
    )
    if result.ok:
        return None
    unmerged = run_git_result(["diff", "--name-only", "--diff-filter=U"], worktree)
    run_git_result(["rebase", "--abort"], worktree)
    conflicts = sorted({line for line in unmerged.text.splitlines() if line})
    log.info("git.rebase_conflicted", worktree=str(worktree), onto=onto, conflicts=conflicts)
    return conflicts
