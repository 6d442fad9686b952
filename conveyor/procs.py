"""Process control: spawn in a session, wait without polling, kill a tree, run wrapped.

`Popen.wait(timeout)` and `psutil.Process.wait(timeout)` poll with sleeps that
grow to 50 ms, which adds that much latency to every agent and CI run. A pidfd
becomes readable the moment the process exits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from conveyor import runwrap
from conveyor.logs import get_logger

log = get_logger(__name__)


def wait_exit(pid: int, timeout_s: float | None) -> bool:
    """Block until `pid` exits (True) or `timeout_s` passes (False); never reaps it."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return _wait_psutil(pid, timeout_s)
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


def _wait_psutil(pid: int, timeout_s: float | None) -> bool:
    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        return True
    return True


def boot_id() -> str:
    """This machine's boot id: a process recorded under another boot is gone for good."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def host_id(configured: str = "") -> str:
    """The host other processes name this one by: `launcher.host_id`, else the host name."""
    return configured or socket.gethostname()


ALIVE = "alive"
DEAD = "dead"
UNCERTAIN = "uncertain"


def probe(pid: int | None, create_time: float | None) -> str:
    """Whether `pid` is still the process started at `create_time`: ALIVE, DEAD or UNCERTAIN.

    DEAD only on proof: the pid is gone, a zombie, or a process with another start
    time (a reused pid). When the probe cannot tell (permission denied, no start time
    recorded, any other error) the answer is UNCERTAIN, which callers that free
    something (leases, reaps) must treat as alive (SPEC §9).
    """
    if pid is None or pid <= 0:
        return UNCERTAIN
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return DEAD
        if not create_time:
            return UNCERTAIN
        return ALIVE if abs(proc.create_time() - create_time) < 0.01 else DEAD
    except psutil.NoSuchProcess:
        # Also psutil.ZombieProcess: a zombie has exited.
        return DEAD
    except (psutil.Error, OSError):
        return UNCERTAIN


def probe_on_boot(pid: int | None, create_time: float | None, recorded_boot: str) -> str:
    """`probe`, knowing the boot `pid` was recorded under: another boot than this one is DEAD."""
    here = boot_id()
    if recorded_boot and here and recorded_boot != here:
        return DEAD
    return probe(pid, create_time)


def alive(pid: int, create_time: float | None) -> bool:
    """True only if `pid` is provably the process started at `create_time` (see `probe`).

    For a caller about to wait on or kill the process: an uncertain answer is not
    "ours". Callers deciding whether to free something use `probe` instead.
    """
    return probe(pid, create_time) == ALIVE


def kill_tree(pid: int, grace_s: float) -> None:
    """SIGTERM the process, its group and every descendant; SIGKILL what is left after grace."""
    if pid <= 1 or pid == os.getpid() or pid == os.getpgrp():
        log.error("launcher.kill_refused", pid=pid, reason="would kill Conveyor itself")
        return
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive_ones = psutil.wait_procs(tree, timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for proc in alive_ones:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive_ones, timeout=grace_s)


def wait_or_kill(pid: int, timeout_s: float | None, grace_s: float) -> bool:
    """Wait for `pid` to exit (True); past `timeout_s` kill its tree instead (False)."""
    if wait_exit(pid, timeout_s):
        return True
    kill_tree(pid, grace_s)
    return False


def spawn(
    argv: list[str],
    *,
    cwd: Path,
    stdin: Any,
    log_path: str,
    env: dict[str, str],
) -> tuple[subprocess.Popen[bytes], float]:
    """Start `argv` in its own session, output appended to `log_path`; (process, create time).

    A create time of 0.0 means the process was gone before it could be read.
    """
    with Path(log_path).open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        create_time = 0.0
    return proc, create_time


class Wrapped(NamedTuple):
    """How a wrapped process ended: its exit code (None: killed on timeout) and identity."""

    exit_code: int | None
    timed_out: bool
    pid: int
    create_time: float


def run_wrapped(
    argv: list[str],
    *,
    exit_file: Path,
    cwd: Path,
    log_path: str,
    env: dict[str, str],
    timeout_s: float | None,
    kill_grace_s: float,
    stdin_path: Path | None = None,
    on_started: Callable[[int, float], None] | None = None,
) -> Wrapped:
    """Run `argv` (already behind `conveyor.runwrap --exit-file exit_file`) to its end.

    `on_started(pid, create_time)` runs once the process exists, before the wait. On
    timeout the whole tree is killed and there is no exit code. Otherwise the code
    is the one the wrapper recorded, else the wrapper's own.
    """
    with contextlib.ExitStack() as stack:
        stdin: Any = subprocess.DEVNULL
        if stdin_path is not None:
            stdin = stack.enter_context(stdin_path.open("rb"))
        proc, create_time = spawn(argv, cwd=cwd, stdin=stdin, log_path=log_path, env=env)
    if on_started is not None:
        on_started(proc.pid, create_time)
    if not wait_or_kill(proc.pid, timeout_s, kill_grace_s):
        proc.wait()
        return Wrapped(None, True, proc.pid, create_time)
    proc.wait()
    recorded = runwrap.read_exit_file(exit_file)
    exit_code = recorded[0] if recorded is not None else proc.returncode
    return Wrapped(exit_code, False, proc.pid, create_time)
