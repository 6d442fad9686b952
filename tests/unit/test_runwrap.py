"""The exit-code wrapper, run the way the Launcher runs it: a script under `-I -S`."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors import launcher_policy as lp
from conveyor import runwrap


def _wrapped(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    exit_file = tmp_path / "exit_code"
    command = lp.wrap(list(argv), exit_file=str(exit_file), python=sys.executable)
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done, exit_file


def test_the_policy_starts_the_wrapper_file_itself():
    assert Path(lp.RUNWRAP_SCRIPT).samefile(runwrap.SCRIPT)


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        (["sh", "-c", "echo hi >&2; exit 7"], 7, "hi"),
        (["sh", "-c", "kill -9 $$"], 128 + 9, ""),
        (["/nonexistent/agent"], 127, "cannot start"),
    ],
    ids=["exit-code", "signal", "cannot-start"],
)
def test_the_exit_code_is_recorded_and_returned(
    tmp_path: Path, argv: list[str], code: int, stderr: str
):
    done, exit_file = _wrapped(tmp_path, *argv)
    assert done.returncode == code
    assert stderr in done.stderr
    recorded = runwrap.read_exit_file(exit_file)
    assert recorded is not None
    assert recorded[0] == code


def test_the_agent_gets_default_signal_dispositions(tmp_path: Path):
    # SigIgn in /proc/self/status: the mask of ignored signals (bit n-1 = signal n).
    # Python ignores SIGPIPE and SIGXFSZ and the wrapper SIGTERM and SIGINT; the
    # agent must ignore none of them (whatever else the test runner's parent ignores).
    done, _ = _wrapped(tmp_path, "sh", "-c", "grep '^SigIgn' /proc/self/status")
    assert done.returncode == 0
    ignored = int(done.stdout.split()[1], 16)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), signum.name


def test_the_wrapper_loads_no_conveyor_and_no_heavy_modules(tmp_path: Path):
    exit_file = tmp_path / "exit_code"
    command = lp.wrap(["true"], exit_file=str(exit_file), python=sys.executable)
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert imported, done.stderr
    heavy = {"site", "json", "re", "subprocess", "argparse", "pathlib", "typing", "conveyor"}
    assert not heavy & imported


@pytest.mark.parametrize(
    "argv",
    [[], ["--exit-file"], ["--exit-file", "f"], ["--exit-file", "f", "--"], ["true"]],
)
def test_wrong_arguments_are_refused(argv: list[str]):
    assert runwrap.parse(argv) is None


def test_arguments_with_and_without_the_separator():
    assert runwrap.parse(["--exit-file", "f", "--", "a", "-b"]) == ("f", ["a", "-b"])
    assert runwrap.parse(["--exit-file", "f", "a"]) == ("f", ["a"])


def test_a_wrapper_is_known_by_its_command_line_either_way():
    assert runwrap.is_wrapper(lp.wrap(["x"], exit_file="/r/e", python="/py"))
    assert runwrap.is_wrapper(["/py", "-m", "conveyor.runwrap", "--exit-file", "/r/e", "--", "x"])
    assert not runwrap.is_wrapper(["/py", "-m", "conveyor.demo_agent"])
    assert not runwrap.is_wrapper(["/py", "/elsewhere/runwrap.py"])
