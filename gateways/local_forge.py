"""The embedded local forge: bare repositories, real git merges.

`LocalForge` keeps its state in plain files under one root so a control process
and a launcher process can share it: every read-modify-write of a repository's
pull requests or statuses runs under an `fcntl.flock` on that repository's lock
file, every file is replaced atomically, and every side effect is appended once
to `effects.jsonl` so tests can count them.

Layout under the root: `repos/<repo>.git` (bare), `pulls/<repo>/<n>.json`,
`statuses/<repo>/<sha>.json` (context -> latest status), `ci-logs/<repo>/<sha>.log`,
`locks/<repo>.lock`, `tmp/<repo>/` (scratch checkouts) and `effects.jsonl`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import msgspec

from conveyor import procs, validate
from conveyor.clock import Clock, SystemClock
from conveyor.errors import ForgeError, HeadMismatch, InvalidField, MergeConflict
from conveyor.logs import get_logger
from gateways import git
from gateways.forge import (
    MAIN,
    STATE_RANK,
    CommitStatus,
    PullRequest,
    append_line,
    branch_or_main,
    full_sha,
    keep_tail,
    locked,
    read_tail,
    write_atomic,
)

log = get_logger(__name__)

CI_CONTEXT = "conveyor/ci"
"""Status context the local forge's CI writes."""

STATUS_STATES = ("pending", "success", "failure", "error")

MAX_CHECK_LOG_BYTES = 64 * 1024
"""A check's kept output: its last this many bytes (the failure is at the end)."""
_MAX_CONTEXT = 100
_MAX_STATUS_DESCRIPTION = 1000
_MERGE_AUTHOR = ("Conveyor Forge", "forge@conveyor.local")


class LocalForge:
    """A forge on local disk: bare repos, JSON pull requests, CI by running a command."""

    def __init__(
        self,
        root: Path,
        check_commands: Mapping[str, Sequence[str]],
        *,
        check_timeout_s: float = 600.0,
        clock: Clock | None = None,
    ) -> None:
        if check_timeout_s <= 0:
            raise InvalidField("check_timeout_s", "must be > 0")
        for repo, command in check_commands.items():
            validate.repo_name(repo, "check_commands")
            if isinstance(command, str):
                raise InvalidField(f"check_commands.{repo}", "must be an argument list")
        self.root = root.resolve()
        self._checks = {repo: list(cmd) for repo, cmd in check_commands.items()}
        self._check_timeout_s = check_timeout_s
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.effects_path = self.root / "effects.jsonl"

    # -- repositories -------------------------------------------------------

    def repo_path(self, repo: str) -> Path:
        """Path of the bare repository of `repo`."""
        return self.root / "repos" / f"{validate.repo_name(repo)}.git"

    def create_repo(self, repo: str, *, initial_files: Mapping[str, bytes] | None = None) -> None:
        """Create `repo` with one commit on main holding `initial_files`; no-op if it exists."""
        bare = self.repo_path(repo)
        files = {_tree_path(name): data for name, data in (initial_files or {}).items()}
        with self._lock(repo):
            git.init_bare(bare, MAIN)
            if self._resolve(repo, f"refs/heads/{MAIN}") is not None:
                return
            with self._scratch(repo, "create") as scratch:
                work = scratch / "repo"
                git.run_git(["clone", "--quiet", "--", str(bare), str(work)])
                # An empty clone's HEAD follows the local default branch; name it main.
                git.run_git(["symbolic-ref", "HEAD", f"refs/heads/{MAIN}"], work)
                for name, data in files.items():
                    target = work / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                git.run_git(["add", "--all"], work)
                git.run_git(
                    [
                        *git.identity(*_MERGE_AUTHOR),
                        "commit",
                        "--quiet",
                        "--no-verify",
                        "--allow-empty",
                        "-m",
                        "Initial commit",
                    ],
                    work,
                )
                git.run_git(["push", "--quiet", "--no-verify", "origin", MAIN], work)
        log.info("forge.repo_created", repo=repo)

    def clone_url(self, repo: str) -> str:
        return str(self.repo_path(repo))

    def branch_head(self, repo: str, branch: str) -> str | None:
        branch_or_main(branch)
        return self._resolve(repo, f"refs/heads/{branch}")

    def delete_branch(self, repo: str, branch: str, *, expected_sha: str) -> bool:
        if branch_or_main(branch) == MAIN:
            raise InvalidField("branch", f"{MAIN} is never deleted")
        full_sha(expected_sha)
        with self._lock(repo):
            head = self._resolve(repo, f"refs/heads/{branch}")
            if head is None:
                return False
            if head != expected_sha:
                raise HeadMismatch(f"{repo}: {branch} is at {head}, expected {expected_sha}")
            # Compare-and-delete: a push that lands meanwhile (pushes take no forge lock) wins.
            ref = f"refs/heads/{branch}"
            git.run_git(["update-ref", "-d", ref, head], git_dir=self.repo_path(repo))
            self._effect("branch_deleted", repo, branch=branch, sha=head)
        log.info("forge.branch_deleted", repo=repo, branch=branch, sha=head)
        return True

    def read_file(self, repo: str, ref: str, path: str) -> bytes | None:
        rel = _tree_path(path)
        sha = self._resolve_ref(repo, ref)
        if sha is None:
            return None
        bare = self.repo_path(repo)
        spec = f"{sha}:{rel}"
        kind = git.run_git_result(["cat-file", "-t", spec], git_dir=bare)
        if not kind.ok or kind.text != "blob":
            return None
        result = git.run_git_result(["cat-file", "blob", spec], git_dir=bare)
        if not result.ok:
            raise ForgeError(f"cannot read {path} at {ref} in {repo}: {result.stderr.strip()}")
        return result.stdout

    def list_dir(self, repo: str, ref: str, path: str) -> list[str]:
        rel = _tree_path(path, allow_root=True)
        sha = self._resolve_ref(repo, ref)
        if sha is None:
            return []
        spec = f"{sha}:{rel}" if rel else f"{sha}^{{tree}}"
        result = git.run_git_result(
            ["ls-tree", "-z", "--name-only", spec], git_dir=self.repo_path(repo)
        )
        if not result.ok:
            return []
        names = result.stdout.decode("utf-8", "replace").split("\0")
        return sorted(name for name in names if name)

    # -- pull requests ------------------------------------------------------

    def find_pull(self, repo: str, branch: str) -> PullRequest | None:
        validate.branch(branch)
        matches = [pr for pr in self._pulls(repo) if pr.head == branch]
        return self._live(matches[-1]) if matches else None

    def open_pull(self, repo: str, branch: str, title: str, body: str) -> PullRequest:
        validate.branch(branch)
        title = validate.title(title)
        body = validate.description(body, "body")
        with self._lock(repo):
            pulls = self._pulls(repo)
            head = self._resolve(repo, f"refs/heads/{branch}")
            if head is None:
                raise ForgeError(f"{repo}: branch {branch} does not exist")
            for pr in reversed(pulls):
                # A merged PR stands for the head it merged; commits pushed after it
                # (rework after a failed deploy) need a new pull request.
                if pr.head == branch and (
                    pr.state == "open" or (pr.merged and pr.head_sha == head)
                ):
                    return self._live(pr)
            number = pulls[-1].number + 1 if pulls else 1
            pr = PullRequest(
                number=number,
                repo=repo,
                head=branch,
                base=MAIN,
                title=title,
                body=body,
                state="open",
                merged=False,
                head_sha=head,
                created_at=self._clock.now(),
            )
            # The record first, the effect line after: a crash in between loses a
            # log line, never duplicates a pull request.
            self._write_pull(pr)
            self._effect("pr_opened", repo, number=number, head=branch)
        log.info("forge.pr_opened", repo=repo, number=number, branch=branch)
        return pr

    def get_pull(self, repo: str, number: int) -> PullRequest:
        return self._live(self._read_pull(repo, number))

    def merge_pull(self, repo: str, number: int, *, expected_head_sha: str) -> PullRequest:
        if not git.is_sha(expected_head_sha):
            raise InvalidField("expected_head_sha", "must be a full hex sha")
        with self._lock(repo):
            pr = self._read_pull(repo, number)
            if pr.merged:
                log.info("forge.merge_skipped", repo=repo, number=number, reason="already merged")
                return pr
            if pr.state != "open":
                raise ForgeError(f"{repo}#{number} is closed without a merge")
            head = self._resolve(repo, f"refs/heads/{pr.head}")
            if head is None:
                raise ForgeError(f"{repo}#{number}: branch {pr.head} no longer exists")
            if head != expected_head_sha:
                raise HeadMismatch(f"{repo}#{number}: head is {head}, expected {expected_head_sha}")
            main = self._resolve(repo, f"refs/heads/{MAIN}")
            if main is None:
                raise ForgeError(f"{repo}: has no {MAIN} branch")
            merge_commit = self._merged_already(repo, main, head)
            if merge_commit is None:
                merge_commit = self._merge(repo, pr, main, head)
            merged = msgspec.structs.replace(
                pr,
                state="closed",
                merged=True,
                head_sha=head,
                merge_commit=merge_commit,
                merged_at=self._clock.now(),
            )
            self._write_pull(merged)
            self._effect("pr_merged", repo, number=number, sha=merge_commit)
        log.info("forge.pr_merged", repo=repo, number=number, sha=merge_commit)
        return merged

    # -- statuses and CI ----------------------------------------------------

    def commit_status(self, repo: str, sha: str) -> CommitStatus | None:
        statuses = self._statuses(repo, full_sha(sha))
        if not statuses:
            return None
        return min(statuses.values(), key=lambda s: (STATE_RANK[s.state], -s.updated_at))

    def set_status(self, repo: str, sha: str, state: str, context: str, description: str) -> None:
        full_sha(sha)
        if state not in STATUS_STATES:
            raise InvalidField("state", f"must be one of {', '.join(STATUS_STATES)}")
        if not context or len(context) > _MAX_CONTEXT or not context.isprintable():
            raise InvalidField("context", f"must be 1-{_MAX_CONTEXT} printable characters")
        description = validate.description(description)[:_MAX_STATUS_DESCRIPTION]
        with self._lock(repo):
            statuses = self._statuses(repo, sha)
            current = statuses.get(context)
            if current is not None and (current.state, current.description) == (
                state,
                description,
            ):
                return
            statuses[context] = CommitStatus(
                sha=sha,
                state=state,
                context=context,
                description=description,
                updated_at=self._clock.now(),
            )
            path = self.root / "statuses" / repo / f"{sha}.json"
            write_atomic(path, msgspec.json.encode(statuses))
            self._effect("status_set", repo, sha=sha, state=state, context=context)
        log.info("forge.status_set", repo=repo, sha=sha, state=state, context=context)

    def require_pushed(self, repo: str, branch: str, sha: str) -> None:
        """`ForgeError` unless `sha` (a full sha) is in `repo`; `InvalidField` for bad names."""
        branch_or_main(branch)
        full_sha(sha)
        if self._resolve(repo, sha) != sha:
            raise ForgeError(f"{repo}: commit {sha} was not pushed")

    def on_push(self, repo: str, branch: str, sha: str) -> None:
        self.require_pushed(repo, branch, sha)
        command = self._checks.get(repo)
        if not command:
            self.set_status(repo, sha, "success", CI_CONTEXT, "no check command configured")
            return
        self.set_status(repo, sha, "pending", CI_CONTEXT, "check running")
        log.info("forge.ci_started", repo=repo, branch=branch, sha=sha)
        state, description = self._run_check(repo, sha, command)
        self.set_status(repo, sha, state, CI_CONTEXT, description)

    def check_log(self, repo: str, sha: str) -> str:
        path = self.root / "ci-logs" / validate.repo_name(repo) / f"{full_sha(sha)}.log"
        return read_tail(path, MAX_CHECK_LOG_BYTES).decode("utf-8", errors="replace")

    def await_checks(self, repo: str, branch: str, sha: str) -> CommitStatus | None:
        # The local CI runs synchronously in on_push, so its result is there when it returns.
        self.on_push(repo, branch, sha)
        return self.commit_status(repo, sha)

    def _run_check(self, repo: str, sha: str, command: list[str]) -> tuple[str, str]:
        bare = self.repo_path(repo)
        log_path = self.root / "ci-logs" / repo / f"{sha}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._scratch(repo, "ci") as scratch:
            # A clone sharing the bare repository's objects, never a worktree of it:
            # a worktree's HEAD is a ref of the bare repository, and a concurrent
            # push's connectivity check fails on one caught half made.
            checkout = scratch / "checkout"
            git.run_git(["clone", "--quiet", "--shared", "--no-checkout", str(bare), str(checkout)])
            git.run_git(["checkout", "--quiet", "--detach", sha], checkout)
            with log_path.open("w+b") as out:
                result = self._run_command(repo, sha, command, checkout, out)
                keep_tail(out, MAX_CHECK_LOG_BYTES)
                return result

    def _run_command(
        self, repo: str, sha: str, command: list[str], cwd: Path, out: IO[bytes]
    ) -> tuple[str, str]:
        try:
            # Own session, so a timeout can kill everything the check spawned.
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env=git.child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            log.warning("forge.ci_failed_to_start", repo=repo, sha=sha, error=str(err))
            return "error", f"check command could not start: {err}"
        if not procs.wait_exit(proc.pid, self._check_timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.warning("forge.ci_timed_out", repo=repo, sha=sha, timeout_s=self._check_timeout_s)
            return "error", f"check timed out after {self._check_timeout_s}s"
        code = proc.wait()
        log.info("forge.ci_finished", repo=repo, sha=sha, exit_code=code)
        if code == 0:
            return "success", "check passed"
        return "failure", f"check exited {code}"

    # -- internals ----------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, repo: str) -> Iterator[None]:
        with locked(self.root / "locks" / f"{validate.repo_name(repo)}.lock"):
            yield

    @contextlib.contextmanager
    def _scratch(self, repo: str, purpose: str) -> Iterator[Path]:
        parent = self.root / "tmp" / repo
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=parent))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _effect(self, kind: str, repo: str, **fields: object) -> None:
        record = {"kind": kind, "repo": repo, **fields, "ts": self._clock.now()}
        append_line(self.effects_path, msgspec.json.encode(record))

    def _resolve(self, repo: str, ref: str) -> str | None:
        bare = self.repo_path(repo)
        if not bare.is_dir():
            raise ForgeError(f"unknown repository {repo}")
        return git.resolve_commit(bare, ref)

    def _resolve_ref(self, repo: str, ref: str) -> str | None:
        if git.is_sha(ref):
            return self._resolve(repo, ref)
        branch_or_main(ref, "ref")
        return self._resolve(repo, f"refs/heads/{ref}")

    def _pulls(self, repo: str) -> list[PullRequest]:
        folder = self.root / "pulls" / validate.repo_name(repo)
        if not folder.is_dir():
            return []
        numbers = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())
        return [self._read_pull(repo, n) for n in numbers]

    def _read_pull(self, repo: str, number: int) -> PullRequest:
        path = self.root / "pulls" / validate.repo_name(repo) / f"{int(number)}.json"
        try:
            return msgspec.json.decode(path.read_bytes(), type=PullRequest)
        except FileNotFoundError:
            raise ForgeError(f"{repo}#{number} does not exist") from None

    def _write_pull(self, pr: PullRequest) -> None:
        path = self.root / "pulls" / pr.repo / f"{pr.number}.json"
        write_atomic(path, msgspec.json.encode(pr))

    def _live(self, pr: PullRequest) -> PullRequest:
        """Return `pr` with the branch's current head, as a forge reports an open PR."""
        if pr.state != "open":
            return pr
        head = self._resolve(pr.repo, f"refs/heads/{pr.head}")
        if head is None or head == pr.head_sha:
            return pr
        return msgspec.structs.replace(pr, head_sha=head)

    def _statuses(self, repo: str, sha: str) -> dict[str, CommitStatus]:
        path = self.root / "statuses" / validate.repo_name(repo) / f"{sha}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        return msgspec.json.decode(data, type=dict[str, CommitStatus])

    def _merged_already(self, repo: str, main: str, head: str) -> str | None:
        """Find the merge a crash left on main before the record was written."""
        bare = self.repo_path(repo)
        if not git.run_git_result(["merge-base", "--is-ancestor", head, main], git_dir=bare).ok:
            return None
        log_out = git.run_git(
            ["log", "--merges", "--first-parent", "--format=%H %P", main], git_dir=bare
        )
        for line in log_out.splitlines():
            commit, *parents = line.split()
            if len(parents) >= 2 and parents[1] == head:
                return commit
        # Nothing to merge (the branch adds no commit); main already holds the head.
        return main

    def _merge(self, repo: str, pr: PullRequest, main: str, head: str) -> str:
        bare = self.repo_path(repo)
        message = f"Merge pull request #{pr.number} from {pr.head}"
        # Merged in the object store alone (no worktree, no index): nothing a
        # concurrent push could see half made. Exit 1 = conflicts, listed by name.
        merged = git.run_git_result(
            ["merge-tree", "--write-tree", "--name-only", "--no-messages", main, head],
            git_dir=bare,
        )
        lines = merged.text.splitlines()
        if merged.returncode == 1 and lines:
            log.info("forge.merge_conflicted", repo=repo, number=pr.number)
            raise MergeConflict(f"{repo}#{pr.number} conflicts on: {', '.join(lines[1:])}")
        if not merged.ok or not lines or not git.is_sha(lines[0]):
            raise ForgeError(
                f"{repo}#{pr.number}: merge failed (the local forge needs git 2.38 or later): "
                f"{merged.stderr.strip()}"
            )
        tree = lines[0]
        commit = ["commit-tree", tree, "-p", main, "-p", head, "-m", message]
        new = git.run_git([*git.identity(*_MERGE_AUTHOR), *commit], git_dir=bare)
        # Compare-and-swap: main moves only from the commit the merge was built on.
        swapped = git.run_git_result(
            ["update-ref", "-m", message, f"refs/heads/{MAIN}", new, main], git_dir=bare
        )
        if not swapped.ok:
            raise ForgeError(f"{repo}: {MAIN} moved during the merge of #{pr.number}")
        return new


_TREE_PATH_RE = re.compile(r"^[^\0\n\r]+$")


def _tree_path(value: str, *, allow_root: bool = False) -> str:
    """Normalise a repository-relative path; refuse absolute paths and `..`."""
    text = value.strip("/") if isinstance(value, str) else ""
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts:
        if allow_root and isinstance(value, str) and value.strip("/.") == "":
            return ""
        raise InvalidField("path", "must name a file inside the repository")
    rel = "/".join(parts)
    if (
        value.startswith("/")
        or ".." in parts
        or ".git" in parts
        or not _TREE_PATH_RE.fullmatch(rel)
    ):
        raise InvalidField("path", "must be relative, without '..', '.git' or control characters")
    return rel
