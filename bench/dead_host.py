"""Time to resolve the jobs of a dead launcher host (issue 14: launchers on many hosts).

One control process and two launchers with distinct `launcher.host_id`s
(`host-a`, `host-b`) share one embedded nats-server on this machine. `jobs`
work items are driven until their developers run on host-a, then host-a dies
whole: its launcher and every agent under it get SIGKILL. Nothing on the
control's host can probe host-a's pids, so its jobs are resolved only by
host-a's silence (`launcher.host_silence_s`): reaped as dead, then retried on
host-b. Printed (never asserted), from the kill:

- `reaped`: every job of host-a has left its attempt 1 (the Reaper's verdict);
- `rerun`: every one of them runs again on host-b.

The floor is `silence_s` plus `reaper.dead_ticks` passes; the rest is the
QueueWorker's retry and host-b's launch.

    .venv/bin/python bench/dead_host.py [--jobs 3] [--silence-s 5] [--workdir DIR]

`measure_dead_host(workdir, ...)` is what `bench/cluster.py` calls; it returns
the figures it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from actors.queue_policy import Job
from bus import subjects
from bus.server import EmbeddedNats
from conveyor.app.client import Client
from conveyor.clock import SystemClock

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_cluster import sweep

T = TypeVar("T")
CLOCK = SystemClock()
DEADLINE_S = 120.0
REAPER_INTERVAL_S = 0.5


def _config(data: Path, url: str, jobs: int) -> str:
    return "\n".join(
        [
            f"data_dir = {json.dumps(str(data))}",
            "[nats]",
            f"url = {json.dumps(url)}",
            "[queue]",
            "tick_s = 0.1",
            "backoff_base_s = 0.05",
            "backoff_max_s = 0.2",
            f"max_concurrency = {jobs}",
            f"per_repo_concurrency = {jobs}",
            "[reaper]",
            f"interval_s = {REAPER_INTERVAL_S}",
            "dead_ticks = 2",
            "heartbeat_timeout_s = 2.0",
            "[gateway]",
            "enabled = false",
            "[log]",
            'level = "info"',
            'format = "json"',
            "[[repos]]",
            'name = "demo"',
            'prefix = "DEMO"',
            'template = "demo"',
            'check_command = ["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]',
        ]
    )


class _Procs:
    def __init__(self, workdir: Path, config: Path, silence_s: float) -> None:
        self.workdir, self.config, self.silence_s = workdir, config, silence_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, parts: str, host: str = "") -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env["CONVEYOR_LAUNCHER__HOST_SILENCE_S"] = str(self.silence_s)
        env["CONVEYOR_LAUNCHER__SLOTS"] = "8"
        if host:
            env["CONVEYOR_LAUNCHER__NAME"] = name
            env["CONVEYOR_LAUNCHER__HOST_ID"] = host
        argv = [sys.executable, "-m", "conveyor.app.cli", "--config", str(self.config)]
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*argv, "up", "--parts", parts],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(check: Callable[[], T | None], what: str, deadline_s: float = DEADLINE_S) -> T:
    until = CLOCK.monotonic() + deadline_s
    while CLOCK.monotonic() < until:
        with contextlib.suppress(Exception):
            found = check()
            if found:
                return found
        CLOCK.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _developers(client: Client) -> list[Job]:
    jobs = client.bus.store(subjects.BUCKET_JOBS, Job).load_all().values()
    return [e.value for e in jobs if e.value.role == "developer"]


def _approve_all(client: Client, ids: list[str]) -> None:
    for task_id in ids:
        task = client.request(subjects.status_task(task_id))
        if task.get("stage") == "analysis" and "awaiting approval" in task.get("last_reason", ""):
            client.command("approve", {"id": task_id})


def measure_dead_host(workdir: Path, *, jobs: int = 3, silence_s: float = 5.0) -> dict[str, float]:
    """Kill -9 a launcher host running `jobs` developers; seconds until resolved and rerun."""
    nats = EmbeddedNats(workdir / "nats", log_file=workdir / "nats-server.log")
    nats.start()
    config = workdir / "config.toml"
    config.write_text(_config(workdir / "data", nats.url, jobs))
    procs = _Procs(workdir, config, silence_s)
    client: Client | None = None
    try:
        procs.start("control", "control")
        procs.start("la", "launcher", host="host-a")
        client = Client(nats.url, timeout_s=10.0)
        live = client
        _wait(lambda: live.request(subjects.STATUS).get("healthy"), "conveyor healthy")
        ids = [
            live.command(
                "submit",
                {
                    "repo": "demo",
                    "title": f"Dead host {i}",
                    "description": "demo: developer=slow:60",
                },
            )["task"]["id"]
            for i in range(jobs)
        ]

        def _all_on_a() -> list[Job] | None:
            _approve_all(live, ids)
            found = [j for j in _developers(live) if j.host == "host-a" and j.pid is not None]
            return found if len(found) == jobs else None

        on_a = _wait(_all_on_a, f"{jobs} developers running on host-a")
        procs.start("lb", "launcher", host="host-b")
        _wait(lambda: "launcher.started" in (workdir / "lb.log").read_text(), "host-b up")

        killed_at = CLOCK.monotonic()
        for job in on_a:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid or 0, signal.SIGKILL)
        procs.kill("la")
        ours = {j.id for j in on_a}

        def _moved(test: Callable[[Job], object]) -> float | None:
            found = [j for j in _developers(live) if j.id in ours and test(j)]
            return CLOCK.monotonic() - killed_at if len(found) == jobs else None

        reaped = _wait(lambda: _moved(lambda j: j.attempts >= 2 or j.status != "running"), "reap")
        rerun = _wait(
            lambda: _moved(lambda j: j.host == "host-b" and j.attempts >= 2 and j.pid), "rerun"
        )
    finally:
        if client is not None:
            client.close()
        procs.stop()
        nats.stop()
        # The agents outlive their launchers on purpose (own sessions): end them here.
        sweep(workdir)
    figures = {"jobs": float(jobs), "silence_s": silence_s, "reaped_s": reaped, "rerun_s": rerun}
    print(
        f"dead host: {jobs} job(s) of a killed host, launcher.host_silence_s={silence_s:g}: "
        f"reaped after {reaped:.2f} s, running again on the other host after {rerun:.2f} s"
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--silence-s", type=float, default=5.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conveyor-dead-host-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        measure_dead_host(workdir, jobs=args.jobs, silence_s=args.silence_s)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
