"""`conveyor top` under a pseudo-terminal against a running node (the demo agent).

The real CLI runs in a child process whose terminal is a pty: it draws the board,
redraws it in place (cursor movements, not a scrolling log), shows a stage change
without being restarted, and ends on Ctrl-C.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Harness, make_config, wait_until

pytestmark = pytest.mark.timeout(90)

CONVEYOR = [sys.executable, "-c", "from conveyor.app.cli import main; main()"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CURSOR_UP = re.compile(r"\x1b\[\d*A")


@pytest.fixture
def harness(tmp_path: Path, nats_url: str) -> Iterator[Harness]:
    running = Harness(make_config(tmp_path / "data", nats_url), nats_url).start()
    try:
        yield running
    finally:
        running.close()


class Terminal:
    """A child process on a pty, 120x60, whose output is collected as it comes."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "60"}
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
        )
        os.close(slave)
        self.raw = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.raw += chunk.decode("utf-8", "replace")

    def output(self) -> str:
        with self._lock:
            return self.raw

    def lines_since(self, mark: int) -> list[str]:
        return ANSI.sub("", self.output()[mark:]).splitlines()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def _row(lines: list[str], stage: str, task: str) -> bool:
    return any(re.search(rf"│\s*{stage}\s*│\s*\d+\s*│.*{task}", line) for line in lines)


def test_top_draws_redraws_in_place_and_follows_a_stage_change(
    harness: Harness, tmp_path: Path
) -> None:
    harness.submit("Add a greeting")
    harness.wait_stage("DEMO-1", "analysis", approve=False)
    wait_until(
        lambda: "awaiting approval" in harness.task("DEMO-1")["last_reason"],
        what="DEMO-1 to await approval",
    )
    once = subprocess.run(
        [*CONVEYOR, "--nats-url", harness.url, "top", "--once"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert _row(once.stdout.splitlines(), "analysis", "DEMO-1")

    term = Terminal([*CONVEYOR, "--nats-url", harness.url, "top", "--interval", "0.3"], tmp_path)
    try:
        wait_until(lambda: _row(term.lines_since(0), "analysis", "DEMO-1"), what="first frame")
        # A second frame overwrites the first: the cursor goes back up.
        wait_until(lambda: CURSOR_UP.search(term.output()), what="a redraw in place")
        mark = len(term.output())
        assert harness.command("approve", "DEMO-1")["ok"]
        moved = "(architecture|development|review|testing|deploy-staging|deploy)"
        wait_until(lambda: _row(term.lines_since(mark), moved, "DEMO-1"), what="DEMO-1 moved")
        assert term.proc.poll() is None
        os.killpg(term.proc.pid, signal.SIGINT)
        assert term.proc.wait(20) == 0
    finally:
        term.close()
