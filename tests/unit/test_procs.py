"""Process control on real subprocesses: run_wrapped records, times out and kills a tree."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import psutil

from actors.launcher_policy import wrap
from conveyor import procs, runwrap

PY = sys.executable

# A child that starts a grandchild in the same process group and prints its pid, then both sleep.
TREE = """\
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(grandchild.pid, flush=True)
time.sleep(60)
"""


def _run(
    tmp_path: Path, argv: list[str], timeout_s: float, *, ready: str = ""
) -> tuple[procs.Wrapped, Path]:
    """Run `argv` wrapped; with `ready`, the timeout starts once the log contains it."""
    exit_file = tmp_path / "exit_code"
    log_path = tmp_path / "output.log"
    started: list[tuple[int, float]] = []

    def _started(pid: int, create_time: float) -> None:
        started.append((pid, create_time))
        pause = threading.Event()
        for _ in range(600):
            if ready in (log_path.read_text() if log_path.exists() else ""):
                return
            pause.wait(0.05)

    result = procs.run_wrapped(
        wrap(argv, exit_file=str(exit_file), python=PY),
        exit_file=exit_file,
        cwd=tmp_path,
        log_path=str(log_path),
        env={"PATH": "/usr/bin:/bin"},
        timeout_s=timeout_s,
        kill_grace_s=1.0,
        on_started=_started,
    )
    assert started == [(result.pid, result.create_time)]
    return result, log_path


def test_run_wrapped_returns_the_exit_code_the_wrapper_recorded(tmp_path: Path):
    result, log_path = _run(tmp_path, [PY, "-c", "print('hi'); raise SystemExit(3)"], 30.0)

    assert result.exit_code == 3
    assert not result.timed_out
    assert result.create_time > 0
    assert runwrap.read_exit_file(tmp_path / "exit_code") is not None
    assert "hi" in log_path.read_text()


def test_run_wrapped_feeds_stdin_from_a_file(tmp_path: Path):
    prompt = tmp_path / "prompt.md"
    prompt.write_text("from the prompt\n")
    exit_file = tmp_path / "exit_code"
    log_path = tmp_path / "output.log"
    script = "import sys; print(sys.stdin.read().upper())"

    result = procs.run_wrapped(
        wrap([PY, "-c", script], exit_file=str(exit_file), python=PY),
        exit_file=exit_file,
        cwd=tmp_path,
        log_path=str(log_path),
        env={},
        timeout_s=30.0,
        kill_grace_s=1.0,
        stdin_path=prompt,
    )

    assert result.exit_code == 0
    assert "FROM THE PROMPT" in log_path.read_text()


def test_run_wrapped_kills_the_whole_tree_on_timeout(tmp_path: Path):
    result, log_path = _run(tmp_path, [PY, "-c", TREE], 1.0, ready="\n")

    assert result.timed_out
    assert result.exit_code is None
    grandchild = int(log_path.read_text().split()[0])
    assert not procs.alive(result.pid, result.create_time)
    gone = not psutil.pid_exists(grandchild) or (
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    )
    assert gone


def test_the_exit_file_survives_the_run(tmp_path: Path):
    _run(tmp_path, [PY, "-c", "raise SystemExit(0)"], 30.0)

    recorded = runwrap.read_exit_file(tmp_path / "exit_code")

    assert recorded is not None
    assert recorded[0] == 0


def test_wait_or_kill_waits_for_a_process_that_ends(tmp_path: Path):
    proc, _ = procs.spawn(
        [PY, "-c", "pass"], cwd=tmp_path, stdin=None, log_path=str(tmp_path / "o.log"), env={}
    )

    assert procs.wait_or_kill(proc.pid, 30.0, 1.0)
    proc.wait()
