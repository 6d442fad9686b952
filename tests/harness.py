"""Test harness: a Conveyor node on a fixture nats-server, and a client speaking to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.queue_policy import Job
from bus import subjects
from conveyor import config as config_mod
from conveyor.app.client import Client
from conveyor.app.node import Node
from conveyor.clock import SystemClock
from conveyor.config import Config
from conveyor.layout import Layout

DEADLINE_S = 60.0

ALL_STAGES = [
    "created",
    "analysis",
    "architecture",
    "development",
    "review",
    "testing",
    "deploy-staging",
    "deploy",
    "done",
]
"""Every stage of the default pipeline, in order, as a task's history lists them."""


def make_config(data_dir: Path, nats_url: str, **overrides: Any) -> Config:
    """The embedded defaults, made fast for tests, on a fixture nats-server."""
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "nats": {"url": nats_url},
        "queue": {
            "tick_s": 0.1,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.2,
            "max_concurrency": 4,
            "per_repo_concurrency": 1,
        },
        "launcher": {"kill_grace_s": 1.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return config_mod.load(env={}, overrides=base)


def wait_until(
    predicate: Callable[[], Any], *, deadline_s: float = DEADLINE_S, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after the deadline."""
    clock = SystemClock()
    end = clock.monotonic() + deadline_s
    last: Any = None
    while clock.monotonic() < end:
        last = predicate()
        if last:
            return last
        clock.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


class Harness:
    """A running node plus a client speaking to it over NATS, as an operator would."""

    def __init__(self, cfg: Config, nats_url: str) -> None:
        self.cfg = cfg
        self.url = nats_url
        self.layout = Layout(cfg.data_path)
        self.node: Node | None = None
        self.client = Client(nats_url)

    def start(self) -> Harness:
        self.node = Node(self.cfg).start()
        return self

    def stop_node(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None

    def close(self) -> None:
        self.stop_node()
        self.client.close()

    # --- operator actions ---------------------------------------------------------------

    def submit(
        self, title: str, *, repo: str = "demo", description: str = "", item_id: str = ""
    ) -> dict[str, Any]:
        return self.client.command(
            "submit", {"repo": repo, "title": title, "description": description, "id": item_id}
        )

    def command(self, name: str, item_id: str, **body: Any) -> dict[str, Any]:
        return self.client.command(name, {"id": item_id, **body})

    def task(self, item_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.client.request(subjects.status_task(item_id))
        return record

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, oldest first, from every page of `conveyor.status.tasks`."""
        return [row for page in self.client.pages(state="all") for row in page["tasks"]]

    def wait_stage(
        self, item_id: str, *stages: str, deadline_s: float = DEADLINE_S, approve: bool = True
    ) -> dict[str, Any]:
        """Wait for the task to reach one of `stages`, approving analysis on the way."""

        def _check() -> dict[str, Any] | None:
            task = self.task(item_id)
            if (
                approve
                and task.get("stage") == "analysis"
                and not task.get("approved")
                and "awaiting approval" in task.get("last_reason", "")
            ):
                self.command("approve", item_id)
            if task.get("stage") in stages:
                return task
            if task.get("escalated") and "escalated" in stages:
                return task
            return None

        result: dict[str, Any] = wait_until(
            _check, deadline_s=deadline_s, what=f"{item_id} to reach {stages}"
        )
        return result

    # --- inspection ---------------------------------------------------------------------

    def jobs(self) -> dict[str, Job]:
        bus = self.client.bus
        return {
            key: entry.value
            for key, entry in bus.store(subjects.BUCKET_JOBS, Job).load_all().items()
        }

    def forge_effects(self) -> list[dict[str, Any]]:
        path = self.layout.forge / "effects.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stages_of(self, item_id: str) -> list[str]:
        return [entry["new"] for entry in self.task(item_id)["history"]]


CONFIG = """
data_dir = "{data}"
[nats]
url = "{url}"
[queue]
tick_s = 0.1
backoff_base_s = 0.05
backoff_max_s = 0.2
[launcher]
kill_grace_s = 1.0
[leases]
busy_retry_s = 0.5
[log]
level = "info"
format = "json"
[[repos]]
name = "demo"
prefix = "DEMO"
template = "demo"
check_command = ["{{python}}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
"""


DEMO_CHECK = ["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]
"""The demo repository's CI check, as a `check_command` in a test's config."""


class Processes:
    """Starts `conveyor up --parts ...` processes and kills them like an operator's bad day."""

    def __init__(self, tmp: Path, url: str = "", extra_toml: str = "") -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.config = tmp / "config.toml"
        self.config.write_text(CONFIG.format(data=self.data, url=url) + extra_toml)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, parts: str, *, fault: str = "", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        extra_env = env
        env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"}
        env.update(extra_env or {})
        if fault:
            env["CONVEYOR_FAULT"] = fault
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor.app.cli",
                "--config",
                str(self.config),
                "up",
                "--parts",
                parts,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self.tmp,
            env=env,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.tmp.glob("*.log"))


def wait_ready(client: Client, procs: Processes) -> None:
    def _ready() -> bool:
        try:
            status = client.request(subjects.STATUS)
        except Exception:
            return False
        return bool(status.get("healthy"))

    try:
        wait_until(_ready, what="conveyor healthy", deadline_s=60)
    except AssertionError:
        raise AssertionError(procs.logs()) from None


def drive(client: Client, item: str, *stages: str, deadline_s: float = 90) -> dict:
    def _check() -> dict | None:
        try:
            task = client.request(subjects.status_task(item))
        except Exception:
            return None
        if task.get("stage") == "analysis" and "awaiting approval" in task.get("last_reason", ""):
            client.command("approve", {"id": item})
        return task if task.get("stage") in stages else None

    result: dict = wait_until(_check, what=f"{item} in {stages}", deadline_s=deadline_s)
    return result


def stored_jobs(client: Client) -> list[Job]:
    return [e.value for e in client.bus.store(subjects.BUCKET_JOBS, Job).load_all().values()]
