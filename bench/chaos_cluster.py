"""The processes of a chaos run: its config, nats-server and the Procfile parts, its agents.

Every child gets PDEATHSIG so none outlives the bench, and `sweep` kills whatever
is left inside the scratch directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from bus.server import EmbeddedNats
from conveyor import runwrap

CHECK_COMMAND = '["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]'

_PR_SET_PDEATHSIG = 1


def render_config(data: Path, url: str, repos: int) -> str:
    """The Conveyor config of a chaos run: fast ticks, a quick reaper, N demo repositories."""
    lines = [
        f"data_dir = {json.dumps(str(data))}",
        "[nats]",
        f"url = {json.dumps(url)}",
        "[queue]",
        "tick_s = 0.1",
        "backoff_base_s = 0.05",
        "backoff_max_s = 0.2",
        "max_concurrency = 4",
        "per_repo_concurrency = 1",
        "[launcher]",
        "kill_grace_s = 1.0",
        "[reaper]",
        "interval_s = 0.5",
        "dead_ticks = 2",
        "heartbeat_timeout_s = 3.0",
        "[log]",
        'level = "info"',
        'format = "json"',
    ]
    return "\n".join([*lines, *repo_sections(repos)]) + "\n"


def repo_sections(repos: int) -> list[str]:
    """`[[repos]]` tables for demo repositories repo1..repoN, each with the demo CI check."""
    lines: list[str] = []
    for n in range(1, repos + 1):
        lines += [
            "[[repos]]",
            f'name = "repo{n}"',
            f'prefix = "R{n}"',
            'template = "demo"',
            f"check_command = {CHECK_COMMAND}",
        ]
    return lines


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A pre-exec hook: SIGTERM the child when the bench dies, so no daemon outlives it."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass
class Agent:
    """A running agent: its wrapper (the process-group leader) and its job."""

    pid: int
    job_id: str
    attempt: int


def find_agents(data: Path) -> list[Agent]:
    """Running agents of this data directory, by their wrapper's command line."""
    runs = str(data / "runs") + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if not runwrap.is_wrapper(cmd) or "conveyor.demo_agent" not in cmd:
            continue
        try:
            exit_file = cmd[cmd.index("--exit-file") + 1]
        except (ValueError, IndexError):
            continue
        if not exit_file.startswith(runs):
            continue
        run_dir = Path(exit_file).parent
        rest, _, attempt = run_dir.name.rpartition(".")
        if not attempt.isdigit():
            continue
        found.append(Agent(int(proc.info["pid"]), f"{run_dir.parent.name}.{rest}", int(attempt)))
    return found


class Cluster:
    """nats-server and the Procfile processes, started and restarted like a supervisor would."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.config = workdir / "config.toml"
        self.nats = EmbeddedNats(workdir / "nats", log_file=workdir / "nats-server.log")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.RLock()
        # Children get PDEATHSIG from the thread that forked them: fork from one that lives on.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-spawner")

    def start_nats(self) -> None:
        self.nats.start()

    def spawn(self, part: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        argv = [sys.executable, "-m", "conveyor.app.cli", "--config", str(self.config), "up"]
        argv += ["--parts", part]
        with (self.workdir / f"{part}.log").open("ab") as log:
            proc = self._spawner.submit(
                subprocess.Popen,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                preexec_fn=_pdeathsig_preexec(),
            ).result()
        self.procs[part] = proc
        return proc

    def sigkill(self, part: str) -> int:
        proc = self.procs[part]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return proc.pid

    def stop(self) -> None:
        """Stop the processes (SIGTERM, then SIGKILL), nats-server, and sweep leftovers."""
        with self.lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(Exception):
                self.nats.stop()
            sweep(self.workdir)
            self._spawner.shutdown(wait=False)

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def sweep(workdir: Path) -> list[int]:
    """Kill every process whose command line or cwd lies inside `workdir` (not us)."""
    marker = str(workdir)
    spared = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if proc.pid in spared:
            continue
        args = proc.info.get("cmdline") or []
        cwd = proc.info.get("cwd") or ""
        inside = marker in args or any(marker + os.sep in a for a in args)
        if inside or cwd == marker or cwd.startswith(marker + os.sep):
            found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(found, timeout=5)
    return [p.pid for p in found]
