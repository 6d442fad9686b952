"""Shared parts of the throughput, recovery and scale benches.

A fleet is the chaos bench's `Cluster` (nats-server plus the Procfile parts, each
`conveyor up --parts ...` in its own process) with a config sized for the bench,
a client that follows stage events and alerts, and the figures every bench needs:
CPU seconds and RSS of the process tree, and a driver that submits items and
approves analyses until every item settled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import statistics
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bus import subjects
from bus.messages import Alert, StageChanged
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from conveyor.pipeline import CANCELLED, DONE

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_cluster import Cluster, repo_sections

CLOCK = SystemClock()
READY_TIMEOUT_S = 60.0
# Never route loopback reads through an http_proxy from the environment.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
POLL_S = 5.0
"""How often the driver also reads every task, in case a stage event was missed."""


def render_config(
    data: Path,
    url: str,
    repos: int,
    *,
    concurrency: int = 4,
    per_repo: int = 1,
    extra: Iterable[str] = (),
) -> str:
    """A Conveyor config: fast queue ticks, `repos` demo repositories repo1..repoN (R1..RN)."""
    lines = [
        f"data_dir = {json.dumps(str(data))}",
        "[nats]",
        f"url = {json.dumps(url)}",
        "[queue]",
        "tick_s = 0.1",
        "backoff_base_s = 0.05",
        "backoff_max_s = 0.2",
        f"max_concurrency = {concurrency}",
        f"per_repo_concurrency = {per_repo}",
        "[launcher]",
        f"slots = {concurrency}",
        "kill_grace_s = 1.0",
        "[gateway]",
        "enabled = false",
        "[log]",
        'level = "info"',
        'format = "json"',
        *extra,
    ]
    return "\n".join([*lines, *repo_sections(repos)]) + "\n"


class Fleet:
    """A cluster started with a given config, and a following client."""

    def __init__(self, workdir: Path) -> None:
        # nats-py logs every failed reconnect with a traceback; the benches kill on purpose.
        logging.getLogger("nats").setLevel(logging.CRITICAL)
        self.cluster = Cluster(workdir)
        self.client: Client | None = None
        self.inbox: queue.Queue[StageChanged | Alert] = queue.Queue()

    @property
    def url(self) -> str:
        return self.cluster.nats.url

    def start(self, parts: Iterable[str], config: Callable[[Path, str], str]) -> Client:
        self.cluster.start_nats()
        self.cluster.config.write_text(config(self.cluster.data, self.url))
        for part in parts:
            self.cluster.spawn(part)
        self.client = Client(self.url, timeout_s=10.0)
        # The streams exist once control is ready; following needs them.
        wait_ready(self.client, self.cluster)
        self.client.follow(self.inbox.put)
        return self.client

    def live_client(self) -> Client:
        if self.client is None:
            raise RuntimeError("fleet not started")
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.cluster.stop()

    def processes(self) -> dict[str, psutil.Process]:
        """The live parts and nats-server by name."""
        found = {}
        for part, proc in self.cluster.procs.items():
            if proc.poll() is None:
                found[part] = psutil.Process(proc.pid)
        pid = self.cluster.nats.pid
        if pid is not None:
            found["nats-server"] = psutil.Process(pid)
        return found

    def cpu_s(self) -> float:
        """CPU seconds of the parts and nats-server, with their reaped children (git, agents)."""
        return sum(self.cpu_split().values())

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds per part and nats-server: its own, and its reaped children's (`NAME+`)."""
        out: dict[str, float] = {}
        for name, proc in self.processes().items():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[name] = t.user + t.system
                out[f"{name}+"] = t.children_user + t.children_system
        return out

    def bus_counts(self) -> dict[str, int]:
        """nats-server's counters: messages in and out, and each stream's writes (last sequence).

        Read from its monitoring endpoint (`/varz`, `/jsz?streams=true`), so reading them
        adds nothing to what is counted.
        """
        base = self.cluster.nats.monitor_url
        out: dict[str, int] = {}
        with _LOCAL.open(f"{base}/varz", timeout=5) as resp:
            varz = json.load(resp)
        out["msgs in"] = int(varz.get("in_msgs", 0))
        out["msgs out"] = int(varz.get("out_msgs", 0))
        with _LOCAL.open(f"{base}/jsz?streams=true", timeout=5) as resp:
            jsz = json.load(resp)
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                out[f"stream {stream['name']}"] = int(stream["state"]["last_seq"])
        return out

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, proc in self.processes().items():
            with contextlib.suppress(psutil.Error):
                out[name] = proc.memory_info().rss / 1e6
        return out

    def log_count(self, needles: Iterable[str]) -> int:
        """Lines of the parts' logs that contain any of `needles`."""
        count = 0
        words = tuple(needles)
        for path in self.cluster.workdir.glob("*.log"):
            with path.open(errors="replace") as fh:
                count += sum(1 for line in fh if any(w in line for w in words))
        return count


def wait_ready(client: Client, cluster: Cluster, deadline_s: float = READY_TIMEOUT_S) -> float:
    """Seconds until `conveyor.status` answers healthy; raises past the deadline."""
    start = CLOCK.monotonic()
    end = start + deadline_s
    while CLOCK.monotonic() < end:
        with contextlib.suppress(Exception):
            if client.request(subjects.STATUS).get("healthy"):
                return CLOCK.monotonic() - start
        CLOCK.sleep(0.05)
    raise RuntimeError(f"Conveyor not healthy within {deadline_s:g} s\n{cluster.logs()}")


def task_rows(client: Client, state: str = "all") -> list[dict[str, Any]]:
    """Every task row, from the old reply (a list) or the paged one ({"tasks", "next"})."""
    rows: list[dict[str, Any]] = []
    body: dict[str, Any] = {"state": state, "limit": 500}
    for _ in range(10_000):
        reply = client.request(subjects.STATUS_TASKS, body)
        if isinstance(reply, list):
            return reply
        rows += reply.get("tasks", [])
        cursor = reply.get("next")
        if not cursor:
            return rows
        body = {"state": state, "limit": 500, "cursor": cursor}
    return rows


@dataclass
class Drive:
    """What one drive saw: when each item settled, how it ended."""

    submitted_at: dict[str, float] = field(default_factory=dict)
    settled_at: dict[str, float] = field(default_factory=dict)
    escalated: set[str] = field(default_factory=set)
    refused: int = 0


def drive(
    fleet: Fleet,
    planned: list[tuple[str, str]],
    *,
    in_flight: int,
    deadline_s: float,
    description: str = "Bench item.",
    say: Callable[[str], None] = lambda _l: None,
) -> Drive:
    """Submit `planned` (id, repo) with at most `in_flight` unsettled; approve; until settled."""
    client = fleet.client
    if client is None:
        raise RuntimeError("fleet not started")
    out = Drive()
    pending = list(planned)
    wanted = {item for item, _ in planned}
    end = CLOCK.monotonic() + deadline_s
    next_poll = CLOCK.monotonic() + POLL_S
    while len(out.settled_at) < len(planned) and CLOCK.monotonic() < end:
        while pending and len(out.submitted_at) - len(out.settled_at) < in_flight:
            item, repo = pending[0]
            body = {"repo": repo, "title": f"Bench item {item}", "id": item}
            body["description"] = description
            reply = client.command("submit", body)
            if not reply.get("ok"):
                out.refused += 1
                say(f"submit {item} refused: {reply.get('error')}")
                break
            out.submitted_at[item] = CLOCK.monotonic()
            pending.pop(0)
        try:
            msg = fleet.inbox.get(timeout=0.2)
        except queue.Empty:
            msg = None
        if msg is not None and msg.task_id in wanted and msg.task_id not in out.settled_at:
            if isinstance(msg, Alert) and msg.kind == "awaiting_approval":
                client.command("approve", {"id": msg.task_id})
            elif isinstance(msg, Alert) and msg.kind == "awaiting_confirm":
                # A protected repository's production deploy: confirmed as it asks.
                client.command("confirm-deploy", {"id": msg.task_id})
            elif isinstance(msg, Alert) and msg.kind == "escalated":
                out.escalated.add(msg.task_id)
                out.settled_at[msg.task_id] = CLOCK.monotonic()
            elif isinstance(msg, StageChanged) and msg.new in (DONE, CANCELLED):
                out.settled_at[msg.task_id] = CLOCK.monotonic()
                if len(out.settled_at) % 10 == 0:
                    say(f"  {len(out.settled_at)}/{len(planned)} settled")
        if CLOCK.monotonic() >= next_poll:
            next_poll = CLOCK.monotonic() + POLL_S
            _poll(client, wanted, out)
    return out


def _poll(client: Client, wanted: set[str], out: Drive) -> None:
    """The fallback: settle items the events missed, approve or confirm what waits for it."""
    with contextlib.suppress(Exception):
        for row in task_rows(client):
            item = row.get("id", "")
            if item not in wanted or item in out.settled_at:
                continue
            if row.get("stage") in (DONE, CANCELLED) or row.get("escalated"):
                out.settled_at[item] = CLOCK.monotonic()
                if row.get("escalated"):
                    out.escalated.add(item)
            elif "awaiting approval" in (row.get("reason") or ""):
                client.command("approve", {"id": item})
            elif "Confirm Deploy" in (row.get("reason") or ""):
                client.command("confirm-deploy", {"id": item})


def plan(items: int, repos: int, start: int = 1) -> list[tuple[str, str]]:
    """(item id, repo) for each item, round-robin over repo1..repoN."""
    out = []
    for i in range(items):
        r = i % repos + 1
        out.append((f"R{r}-{start + i // repos}", f"repo{r}"))
    return out


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median_worst(values: list[float]) -> str:
    if not values:
        return "no samples"
    return f"median {statistics.median(values):.2f} s, worst {max(values):.2f} s (n={len(values)})"
