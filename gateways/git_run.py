"""Starting git: argument lists, never a shell; a timeout on every call; a clean environment.

`gateways.git` re-exports these names, so callers keep writing `git.run_git`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import GitError, InvalidField, redact_credentials
from conveyor.logs import get_logger

log = get_logger(__name__)

GIT_TIMEOUT_S = 120.0
"""Default ceiling for one git command."""

# Variables that make git find a different repository than the one `cwd` names;
# inherited from a hook or a parent git process they would silently redirect us.
_REPO_LOCATING_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)

# Hooks are code inside the repository an agent can write to; never run them.
_SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null")


@dataclass(frozen=True)
class GitResult:
    """Outcome of one git command that was allowed to fail."""

    returncode: int
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether git exited 0."""
        return self.returncode == 0

    @property
    def text(self) -> str:
        """Stdout decoded, without the trailing newline."""
        return self.stdout.decode("utf-8", "replace").rstrip("\n")


def git_executable() -> str:
    """Return the path of `git` on PATH, or raise `GitError`."""
    exe = shutil.which("git")
    if exe is None:
        raise GitError(["--version"], 127, "git not found on PATH")
    return exe


def child_env() -> dict[str, str]:
    """Return this process's environment without variables that redirect git, and no prompts."""
    env = {k: v for k, v in os.environ.items() if k not in _REPO_LOCATING_ENV}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment every git child gets: `child_env` in the C locale."""
    env = child_env()
    # Fixed C messages: we read lock reasons and stderr, which gettext would translate.
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def run_git_result(
    args: list[str],
    cwd: Path | None = None,
    *,
    git_dir: Path | None = None,
    timeout_s: float = GIT_TIMEOUT_S,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> GitResult:
    """Run git and return its outcome without raising on a non-zero exit.

    `stdin`: bytes written to git's standard input (a `--batch` query); none by default.
    """
    cmd = [git_executable(), *_SAFE_CONFIG]
    if git_dir is not None:
        cmd.append(f"--git-dir={absolute(git_dir)}")
    cmd.extend(args)
    # A new session lets a timeout kill git's helpers (remote-https, pack-objects) too.
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=str(cwd) if cwd is not None else None,
            env=git_env(env),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as err:
        raise GitError(args, -1, f"could not start git: {err}") from err
    try:
        out, errout = proc.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        log.warning(
            "git.timed_out", args=[redact_credentials(a) for a in args], timeout_s=timeout_s
        )
        raise GitError(args, -1, f"timed out after {timeout_s}s") from None
    return GitResult(proc.returncode, out, errout.decode("utf-8", "replace"))


def run_git(
    args: list[str],
    cwd: Path | None = None,
    *,
    git_dir: Path | None = None,
    timeout_s: float = GIT_TIMEOUT_S,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> str:
    """Run git and return stdout without the trailing newline; raise `GitError` on failure."""
    result = run_git_result(args, cwd, git_dir=git_dir, timeout_s=timeout_s, env=env, stdin=stdin)
    if not result.ok:
        raise GitError(args, result.returncode, result.stderr)
    return result.text


def absolute(path: Path) -> Path:
    """`path` made absolute; git can never read one as an option, since it starts with "/"."""
    text = str(path)
    if "\n" in text or "\0" in text:
        raise InvalidField("path", "must not contain newlines or NUL")
    return path.resolve()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
