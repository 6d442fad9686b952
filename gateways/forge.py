"""The forge interface: what Conveyor asks of a forge, and the types it answers with.

`LocalForge` (`gateways.local_forge`) and `GiteaForge` (`gateways.gitea`)
implement `Forge`. The file helpers at the end are shared by the local forge and
the local tracker, which keep their state in files two processes share.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import msgspec

from conveyor import validate
from conveyor.errors import InvalidField
from gateways import git

MAIN = "main"
"""The only branch pull requests merge into."""

STATE_RANK = {"error": 0, "failure": 1, "pending": 2, "success": 3}
"""Commit status states, worst first: a combined status is as bad as its worst context."""


class PullRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A pull request of `head` into `base`; `state` is "open" or "closed"."""

    number: int
    repo: str
    head: str
    base: str
    title: str
    body: str
    state: str
    merged: bool
    head_sha: str
    merge_commit: str | None = None
    created_at: float
    merged_at: float | None = None


class CommitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A commit status; `state` is "pending", "success", "failure" or "error"."""

    sha: str
    state: str
    context: str
    description: str
    updated_at: float
    target_url: str = ""
    """Where the forge shows the check's details (Gitea); empty when there is none."""


class Forge(Protocol):
    """What Conveyor needs from a forge (the local one, or Gitea)."""

    def clone_url(self, repo: str) -> str:
        """URL `git clone` accepts for `repo`."""
        ...

    def branch_head(self, repo: str, branch: str) -> str | None:
        """Sha of `branch`, or None when it does not exist."""
        ...

    def read_file(self, repo: str, ref: str, path: str) -> bytes | None:
        """Content of `path` at `ref`, or None when missing."""
        ...

    def list_dir(self, repo: str, ref: str, path: str) -> list[str]:
        """Names of the entries of directory `path` at `ref`; empty when missing."""
        ...

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        """Most recent pull request whose head is `branch`, in any state."""
        ...

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        """Open a pull request of `branch` into main; return the open or merged one if any."""
        ...

    def get_pull(self, repo: str, number: int) -> PullRequest:
        """Pull request `number`; raises `ForgeError` when unknown."""
        ...

    def merge_pull(self, repo: str, number: int, *, expected_head_sha: str) -> PullRequest:
        """Merge once; `HeadMismatch` if the head moved, `MergeConflict` if it cannot merge."""
        ...

    def commit_status(self, repo: str, sha: str) -> CommitStatus | None:
        """Combined status of `sha` (its worst context), or None when there is none."""
        ...

    def set_status(self, repo: str, sha: str, state: str, context: str, description: str) -> None:
        """Record a status of `sha` for `context`."""
        ...

    def check_log(self, repo: str, sha: str) -> str:
        """The tail of the output of the check that ran on `sha`; "" when the forge keeps none."""
        ...

    def on_push(self, repo: str, branch: str, sha: str) -> None:
        """React to `branch` having been pushed at `sha` (run CI, for the local forge)."""
        ...

    def await_checks(self, repo: str, branch: str, sha: str) -> CommitStatus | None:
        """Make sure CI runs for the pushed `sha` and return its final combined status.

        Blocks (a job's worker thread, never an actor) until the status is no longer
        pending or the forge's check timeout passes; None when nothing reported.
        """
        ...

    def delete_branch(self, repo: str, branch: str, *, expected_sha: str) -> bool:
        """Delete `branch` if its head is `expected_sha`; False when it is already gone.

        `HeadMismatch` when it points elsewhere (pushed since): it stays. Never `main`.
        """
        ...


def branch_or_main(value: str, field: str = "branch") -> str:
    """`main`, or a valid work-item branch name."""
    if value == MAIN:
        return value
    return validate.branch(value, field)


def full_sha(value: str) -> str:
    """`value` when it is a full lower-case hex sha; `InvalidField` otherwise."""
    if not isinstance(value, str) or not git.is_sha(value):
        raise InvalidField("sha", "must be a full lower-case hex sha")
    return value


# -- shared file helpers (also used by the local tracker) -------------------


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Each open() is its own open file description, so threads exclude each other too.
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> None:
    """Append one line to a JSON-lines file shared between processes."""
    with locked(path.with_name(f".{path.name}.lock")):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.write(line.rstrip(b"\n") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def keep_tail(handle: IO[bytes], limit: int) -> None:
    """Cut an open file to its last `limit` bytes (a log's end is where the failure is)."""
    size = handle.seek(0, os.SEEK_END)
    if size > limit:
        handle.seek(size - limit)
        tail = handle.read()
        handle.seek(0)
        handle.write(tail)
        handle.truncate()


def read_tail(path: Path, limit: int) -> bytes:
    """The last `limit` bytes of `path`; empty when it does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit))
            return handle.read()
    except FileNotFoundError:
        return b""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
