"""SPEC §8 "Recovery" under chaos: kill -9 a random process every few seconds.

N work items are spread over R demo repositories and driven to `done` by the
Procfile processes `control` and `launcher` (each `conveyor up --parts ...` in
its own subprocess) on an embedded nats-server. A killer thread sends SIGKILL
every uniform(min, max) seconds to one random victim: the control process, the
launcher process, nats-server, or a running agent (its whole process group:
the `conveyor.runwrap` wrapper and the demo agent under it). Killed processes
are started again after a short pause, as a supervisor would; one that exits by
itself is restarted too, and counted.

Measured and printed (never asserted):

- items done, lost (not done by the deadline) and escalated;
- duplicated external effects: per item, more than one `pr_opened` or
  `pr_merged` in the local forge's `effects.jsonl`, and tracker comments posted
  twice (the same key, or a stage comment more often than the task's history
  has that stage change);
- recovery times, against SPEC §8: agent killed -> its job leaves `running`
  (polled in the `conveyor_jobs` KV bucket), target 3 s; control process
  restarted -> the first stage change of any in-flight task (from the stored
  task histories, stamped by the StageEngine), target 5 s. That second figure
  is an upper bound: it includes whatever agent work the next stage change
  waited for. A sample is "disturbed" when another kill landed before it
  resolved; the median and max are given for all samples and undisturbed ones.

    .venv/bin/python bench/chaos.py [--items 50] [--repos 2] [--kill-every 5-15]
                                    [--deadline-s 900] [--seed N] [--agent-s 1.0]
                                    [--workdir DIR] [--keep]

The agents are the demo agent, made to work `--agent-s` seconds per job so that
an agent kill finds one running. Everything started is stopped on exit, also
after Ctrl-C or an error, and a last sweep kills any process whose command line
or working directory is inside the scratch directory.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from actors.queue_policy import RUNNING, Job
from actors.stage_policy import DONE, Task
from bus import subjects
from bus.server import EmbeddedNats
from conveyor.app.client import Client
from conveyor.clock import SystemClock
from gateways.tracker import LocalTracker

CLOCK = SystemClock()

AGENT_TARGET_S = 3.0
"""SPEC §8: agent killed -> its job resolved (retried or failed) within 3 s."""
RESTART_TARGET_S = 5.0
"""SPEC §8: daemon killed and restarted -> in-flight tasks moving again within 5 s."""

VICTIMS = ("control", "launcher", "nats-server", "agent")
PARTS = ("control", "launcher")
RESTART_PAUSE_S = 0.5
AGENT_SEARCH_S = 2.0
READY_TIMEOUT_S = 60.0
SETTLE_S = 20.0
POLL_S = 0.2
PROGRESS_S = 30.0
BRANCH_ITEM = re.compile(r"^feature/([A-Z][A-Z0-9]*-[0-9]+)-")
CHECK_COMMAND = '["{python}", "-m", "unittest", "discover", "-s", "tests", "-t", "."]'

_PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The bench itself could not run (not a finding about Conveyor)."""


# --------------------------------------------------------------------------- the report


@dataclass
class Kill:
    """One SIGKILL the chaos thread sent, and what became of it."""

    at_s: float
    wall: float
    victim: str
    pid: int
    detail: str = ""
    restart_wall: float | None = None
    restart_s: float | None = None
    job_id: str = ""
    attempt: int = 0
    resolved_s: float | None = None
    disturbed: bool = False


@dataclass
class Sample:
    """One recovery measurement."""

    seconds: float
    disturbed: bool


@dataclass
class Report:
    """Everything a chaos run measured."""

    items: int
    repos: int
    kill_min_s: float
    kill_max_s: float
    deadline_s: float
    seed: int
    agent_s: float
    workdir: str = ""
    elapsed_s: float = 0.0
    timed_out: bool = False
    done: list[str] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    escalated: dict[str, str] = field(default_factory=dict)
    effects: Counter[str] = field(default_factory=Counter)
    duplicated: Counter[str] = field(default_factory=Counter)
    duplicate_details: list[str] = field(default_factory=list)
    duplicated_comments: int = 0
    comment_details: list[str] = field(default_factory=list)
    extra_runs: dict[str, int] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    agent_recovery: list[Sample] = field(default_factory=list)
    agent_unresolved: list[str] = field(default_factory=list)
    control_recovery: list[Sample] = field(default_factory=list)
    control_unmeasured: int = 0
    nats_recovery: list[Sample] = field(default_factory=list)
    nats_unmeasured: int = 0

    @property
    def duplicated_effects(self) -> int:
        """Duplicated forge effects of every kind, summed."""
        return sum(self.duplicated.values())

    def render(self) -> str:
        """The report as text, figures next to their targets."""
        out: list[str] = []
        kills = Counter(k.victim for k in self.kills)
        out.append(
            f"Chaos bench: {self.items} items, {self.repos} repositories, kill -9 every "
            f"{self.kill_min_s:g}-{self.kill_max_s:g} s, seed {self.seed}, agents "
            f"{self.agent_s:g} s/job, deadline {self.deadline_s:g} s"
        )
        state = "deadline reached" if self.timed_out else "every item settled"
        out.append(f"Elapsed {self.elapsed_s:.1f} s ({state}); scratch {self.workdir}")
        out.append(
            f"Kills: {len(self.kills)} ("
            + ", ".join(f"{v} {kills.get(v, 0)}" for v in VICTIMS)
            + f"); processes that exited by themselves: {len(self.exits)}"
        )
        for kill in self.kills:
            extra = f" {kill.detail}" if kill.detail else ""
            if kill.restart_s is not None:
                extra += f" (restarted at {kill.restart_s:.1f} s)"
            if kill.resolved_s is not None:
                extra += f" (job left running after {kill.resolved_s:.2f} s)"
            out.append(f"  [{kill.at_s:7.1f} s] {kill.victim:<11} pid {kill.pid}{extra}")
        for line in self.exits:
            out.append(f"  exited: {line}")
        out.append("")
        out.append("Items")
        out.append(f"  done                          {len(self.done):>4} / {self.items}")
        out.append(
            f"  lost (not done, not escalated){len(self.lost):>4}   target 0   {_pf(not self.lost)}"
        )
        for item, why in sorted(self.lost.items()):
            out.append(f"    {item}: {why}")
        out.append(f"  escalated                     {len(self.escalated):>4}")
        for item, why in sorted(self.escalated.items()):
            out.append(f"    {item}: {why}")
        out.append("Side effects")
        seen = ", ".join(f"{k} {v}" for k, v in sorted(self.effects.items())) or "none"
        out.append(f"  forge effects seen: {seen}")
        dups = ", ".join(f"{k} {self.duplicated.get(k, 0)}" for k in ("pr_opened", "pr_merged"))
        out.append(f"  duplicated effects: {dups}   target 0   {_pf(self.duplicated_effects == 0)}")
        for line in self.duplicate_details:
            out.append(f"    {line}")
        out.append(
            f"  duplicated tracker comments: {self.duplicated_comments}   target 0   "
            f"{_pf(self.duplicated_comments == 0)}"
        )
        for line in self.comment_details:
            out.append(f"    {line}")
        extra = sum(self.extra_runs.values())
        out.append(f"  agent runs beyond one per job, not explained by an agent kill: {extra}")
        for job, count in sorted(self.extra_runs.items()):
            out.append(f"    {job}: {count} extra")
        out.append(f"{'Recovery':<52}{'n':>3}   median      max   target")
        out.extend(
            _recovery_rows("agent killed -> job resolved", self.agent_recovery, AGENT_TARGET_S)
        )
        if self.agent_unresolved:
            out.append(f"    not resolved by the end: {', '.join(self.agent_unresolved)}")
        out.extend(
            _recovery_rows(
                "control restarted -> tasks moving", self.control_recovery, RESTART_TARGET_S
            )
        )
        if self.control_unmeasured:
            out.append(
                f"    {self.control_unmeasured} restart(s) with no task in flight or no "
                "later stage change"
            )
        out.extend(_recovery_rows("nats restarted -> tasks moving", self.nats_recovery, None))
        if self.nats_unmeasured:
            out.append(
                f"    {self.nats_unmeasured} restart(s) with no task in flight or no "
                "later stage change"
            )
        if self.errors:
            out.append("Bench errors (the bench, not Conveyor):")
            out.extend(f"  {e}" for e in self.errors)
        return "\n".join(out)


def _pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _recovery_rows(label: str, samples: list[Sample], target: float | None) -> list[str]:
    rows = []
    for suffix, chosen in (
        ("", samples),
        ("  (undisturbed)", [s for s in samples if not s.disturbed]),
    ):
        name = f"  {label}{suffix}"
        if not chosen:
            rows.append(f"{name:<52}{0:>3}       -       -")
            continue
        values = [s.seconds for s in chosen]
        med, top = statistics.median(values), max(values)
        goal = f"<= {target:g} s  {_pf(top <= target)}" if target is not None else "(none)"
        rows.append(f"{name:<52}{len(values):>3} {med:6.2f} s {top:6.2f} s   {goal}")
    return rows


# --------------------------------------------------------------------------- processes


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
    for n in range(1, repos + 1):
        lines += [
            "[[repos]]",
            f'name = "repo{n}"',
            f'prefix = "R{n}"',
            'template = "demo"',
            f"check_command = {CHECK_COMMAND}",
        ]
    return "\n".join(lines) + "\n"


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
        if "conveyor.runwrap" not in cmd or "conveyor.demo_agent" not in cmd:
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


# --------------------------------------------------------------------------- chaos threads


class Killer(threading.Thread):
    """Every uniform(min, max) s: SIGKILL one random victim, then restart what died."""

    def __init__(
        self,
        cluster: Cluster,
        report: Report,
        rng: random.Random,
        t0: float,
        on_agent_kill: Callable[[Kill], None],
        say: Callable[[str], None],
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.cluster, self.report, self.rng, self.t0 = cluster, report, rng, t0
        self.on_agent_kill = on_agent_kill
        self.say = say
        self.bag: list[str] = []
        self.stopping = threading.Event()

    def _next(self) -> float:
        return CLOCK.monotonic() + self.rng.uniform(self.report.kill_min_s, self.report.kill_max_s)

    def run(self) -> None:
        next_at = self._next()
        while not self.stopping.wait(0.1):
            try:
                self.supervise()
                if CLOCK.monotonic() >= next_at:
                    self.kill_one()
                    next_at = self._next()
            except Exception as err:
                line = f"killer: {err!r}"
                if not self.report.errors or self.report.errors[-1] != line:
                    self.report.errors.append(line)
                    self.say(traceback.format_exc())
                next_at = self._next()

    def supervise(self) -> None:
        """Restart a process that died without being killed by us (and count it)."""
        with self.cluster.lock:
            for part in PARTS:
                proc = self.cluster.procs.get(part)
                if proc is not None and proc.poll() is not None:
                    line = (
                        f"{part} pid {proc.pid} exited with {proc.returncode} at {self._t():.1f} s"
                    )
                    self.report.exits.append(line)
                    self.say(f"[{self._t():7.1f} s] {line}; restarting")
                    self.cluster.spawn(part)
            if not self.cluster.nats.running:
                self.cluster.nats.start()

    def _t(self) -> float:
        return CLOCK.monotonic() - self.t0

    def _draw(self) -> str:
        """The next victim: every kind once per round, in a random order."""
        if not self.bag:
            self.bag = list(VICTIMS)
            self.rng.shuffle(self.bag)
        return self.bag.pop()

    def kill_one(self) -> None:
        victim = self._draw()
        agent: Agent | None = None
        if victim == "agent":
            end = CLOCK.monotonic() + AGENT_SEARCH_S
            while agent is None and CLOCK.monotonic() < end and not self.stopping.is_set():
                agents = find_agents(self.cluster.data)
                if agents:
                    agent = self.rng.choice(agents)
                else:
                    CLOCK.sleep(0.1)
            if agent is None:
                # No agent is running right now: kill something else, an agent next time.
                others = [v for v in self.bag if v != "agent"]
                victim = others[-1] if others else self.rng.choice(VICTIMS[:3])
                if others:
                    self.bag.remove(victim)
                self.bag.append("agent")
        if self.stopping.is_set():
            return
        with self.cluster.lock:
            kill = Kill(at_s=self._t(), wall=CLOCK.now(), victim=victim, pid=0)
            if agent is not None:
                kill.pid, kill.job_id, kill.attempt = agent.pid, agent.job_id, agent.attempt
                kill.detail = f"job {agent.job_id} attempt {agent.attempt}"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.pid, signal.SIGKILL)
                self.report.kills.append(kill)
                self.on_agent_kill(kill)
            elif victim == "nats-server":
                kill.pid = self.cluster.nats.pid or 0
                self.cluster.nats.kill()
                self.report.kills.append(kill)
            else:
                kill.pid = self.cluster.sigkill(victim)
                self.report.kills.append(kill)
            self.say(f"[{kill.at_s:7.1f} s] kill -9 {victim} pid {kill.pid} {kill.detail}")
            if victim == "agent":
                return
            CLOCK.sleep(RESTART_PAUSE_S)
            kill.restart_wall, kill.restart_s = CLOCK.now(), self._t()
            if victim == "nats-server":
                self.cluster.nats.start()
            else:
                self.cluster.spawn(victim)


class AgentWatch(threading.Thread):
    """Polls the jobs bucket for each killed agent's job until it leaves `running`."""

    def __init__(self, url: str, report: Report, t0: float) -> None:
        super().__init__(name="chaos-agent-watch", daemon=True)
        self.url, self.report, self.t0 = url, report, t0
        self.pending: list[tuple[Kill, float]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def add(self, kill: Kill) -> None:
        with self.lock:
            self.pending.append((kill, CLOCK.monotonic()))

    def run(self) -> None:
        client: Client | None = None
        store = None
        try:
            while not self.stopping.wait(0.05):
                with self.lock:
                    pending = list(self.pending)
                if not pending:
                    continue
                try:
                    if client is None:
                        client = Client(self.url, timeout_s=2.0)
                    if store is None:
                        store = client.bus.store(subjects.BUCKET_JOBS, Job)
                    for kill, since in pending:
                        entry = store.get(kill.job_id)
                        job = entry.value if entry is not None else None
                        if job is None or (job.status == RUNNING and job.attempts <= kill.attempt):
                            continue
                        kill.resolved_s = CLOCK.monotonic() - since
                        with self.lock:
                            self.pending.remove((kill, since))
                except Exception:  # the bus may be down: that is the point of the bench
                    CLOCK.sleep(0.1)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


# --------------------------------------------------------------------------- the run


def plan(items: int, repos: int) -> list[tuple[str, str]]:
    """(item id, repo) for each item, round-robin over the repositories."""
    counters = Counter[int]()
    out = []
    for i in range(items):
        r = i % repos + 1
        counters[r] += 1
        out.append((f"R{r}-{counters[r]}", f"repo{r}"))
    return out


def _description(agent_s: float) -> str:
    if agent_s <= 0:
        return "Chaos bench item."
    roles = ("analyst", "architect", "developer", "reviewer", "tester", "deployer")
    return "Chaos bench item.\n\ndemo: " + " ".join(f"{r}=slow:{agent_s:g}*always" for r in roles)


def _wait_ready(client: Client, cluster: Cluster, deadline_s: float) -> None:
    end = CLOCK.monotonic() + deadline_s
    while CLOCK.monotonic() < end:
        with contextlib.suppress(Exception):
            if client.request(subjects.STATUS).get("healthy"):
                return
        CLOCK.sleep(0.2)
    raise BenchError(f"Conveyor not healthy within {deadline_s:g} s\n{cluster.logs()}")


def run(
    items: int,
    repos: int,
    kill_min_s: float,
    kill_max_s: float,
    deadline_s: float,
    seed: int,
    workdir: Path,
    *,
    agent_s: float = 1.0,
    say: Callable[[str], None] | None = None,
) -> Report:
    """Run the chaos bench in `workdir` (created if missing) and return what it measured."""
    say = say or (lambda _line: None)
    # nats-py logs every failed reconnect with a traceback; nats-server dies on purpose here.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(items, repos, kill_min_s, kill_max_s, deadline_s, seed, agent_s)
    report.workdir = str(workdir)
    rng = random.Random(seed)
    cluster = Cluster(workdir)
    client: Client | None = None
    killer: Killer | None = None
    watch: AgentWatch | None = None
    try:
        cluster.start_nats()
        cluster.config.write_text(render_config(cluster.data, cluster.nats.url, repos))
        for part in PARTS:
            cluster.spawn(part)
        client = Client(cluster.nats.url, timeout_s=5.0)
        _wait_ready(client, cluster, READY_TIMEOUT_S)
        say(f"Conveyor ready; scratch {workdir}")
        t0 = CLOCK.monotonic()
        watch = AgentWatch(cluster.nats.url, report, t0)
        killer = Killer(cluster, report, rng, t0, watch.add, say)
        watch.start()
        killer.start()
        report.timed_out = not _drive(client, plan(items, repos), agent_s, t0 + deadline_s, say)
        report.elapsed_s = CLOCK.monotonic() - t0
        killer.stopping.set()
        killer.join()
        killer = None
        say(f"[{report.elapsed_s:7.1f} s] chaos over; letting the pipeline settle")
        _settle(cluster, client, watch, report)
        watch.stopping.set()
        watch.join()
        watch = None
        _collect(cluster, client, report, [i for i, _ in plan(items, repos)])
    finally:
        for thread in (killer, watch):
            if thread is not None:
                thread.stopping.set()
                thread.join(timeout=30)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        cluster.stop()
    return report


def _drive(
    client: Client,
    planned: list[tuple[str, str]],
    agent_s: float,
    deadline: float,
    say: Callable[[str], None],
) -> bool:
    """Submit every item, approve analyses, until every item settled; False at the deadline."""
    description = _description(agent_s)
    submitted: set[str] = set()
    refused: dict[str, Any] = {}
    approved: dict[str, float] = {}
    settled: set[str] = set()
    next_progress = CLOCK.monotonic() + PROGRESS_S
    while CLOCK.monotonic() < deadline:
        for item, repo in planned:
            if item in submitted:
                continue
            body = {"repo": repo, "title": f"Chaos item {item}", "id": item}
            body["description"] = description
            try:
                reply = client.command("submit", body)
            except Exception:
                break  # the control process or the bus is away: try again next round
            if reply.get("ok"):
                submitted.add(item)
            else:
                if reply.get("error") != refused.get(item):
                    refused[item] = reply.get("error")
                    say(f"submit {item} refused: {reply.get('error')}")
                break
        try:
            rows = client.request(subjects.STATUS_TASKS)
        except Exception:
            rows = None
        if isinstance(rows, list):
            for row in rows:
                item = row.get("id", "")
                if row.get("stage") == DONE or row.get("escalated"):
                    if item not in settled:
                        settled.add(item)
                        say(f"{item}: {'done' if row.get('stage') == DONE else 'escalated'}")
                    continue
                waiting = "awaiting approval" in (row.get("reason") or "")
                # Re-approve only after a while: the first approve may still be in flight.
                recent = CLOCK.monotonic() - approved.get(item, -1e9) < 2.0
                if row.get("stage") == "analysis" and not row.get("approved") and waiting:
                    if recent:
                        continue
                    approved[item] = CLOCK.monotonic()
                    with contextlib.suppress(Exception):
                        client.command("approve", {"id": item})
        if len(submitted) == len(planned) and all(i in settled for i, _ in planned):
            return True
        if isinstance(rows, list) and CLOCK.monotonic() >= next_progress:
            next_progress = CLOCK.monotonic() + PROGRESS_S
            stages = Counter(r.get("stage", "?") for r in rows if r.get("id") not in settled)
            busy = ", ".join(f"{k} {v}" for k, v in sorted(stages.items())) or "-"
            say(f"progress: {len(settled)}/{len(planned)} settled; in flight: {busy}")
        CLOCK.sleep(POLL_S)
    return False


def _settle(cluster: Cluster, client: Client, watch: AgentWatch, report: Report) -> None:
    """With the killer stopped: everything running, healthy, killed jobs resolved."""
    with cluster.lock:
        for part in PARTS:
            proc = cluster.procs.get(part)
            if proc is None or proc.poll() is not None:
                cluster.spawn(part)
        if not cluster.nats.running:
            cluster.nats.start()
    _wait_ready(client, cluster, READY_TIMEOUT_S)
    end = CLOCK.monotonic() + SETTLE_S
    while CLOCK.monotonic() < end:
        with watch.lock:
            if not watch.pending:
                break
        CLOCK.sleep(0.1)
    with watch.lock:
        report.agent_unresolved = [k.job_id for k, _ in watch.pending]


def _collect(cluster: Cluster, client: Client, report: Report, ids: list[str]) -> None:
    store = client.bus.store(subjects.BUCKET_TASKS, Task)
    tasks = {key: entry.value for key, entry in store.load_all().items() if key in ids}
    tracker = LocalTracker(cluster.data / "tracker")
    # The tracker is told by the control process, a little after the stage change.
    end = CLOCK.monotonic() + SETTLE_S
    while CLOCK.monotonic() < end:
        done = [t.id for t in tasks.values() if t.stage == DONE]
        if all(tracker.state(i) == DONE for i in done):
            break
        CLOCK.sleep(0.2)
    for item in ids:
        task = tasks.get(item)
        if task is None:
            report.lost[item] = "no task stored (an acknowledged submit vanished)"
        elif task.stage == DONE:
            report.done.append(item)
        else:
            why = (
                f"stage {task.stage}, step {task.step}, job {task.job_id or '-'} "
                f"{task.job_status or '-'}: {task.last_reason}"
            )
            (report.escalated if task.escalated else report.lost)[item] = why
    _count_effects(cluster.data, report, ids)
    _count_comments(tracker, tasks, report)
    _count_runs(cluster.data, report, ids)
    _recovery(report, tasks)


def _count_effects(data: Path, report: Report, ids: list[str]) -> None:
    forge = data / "forge"
    path = forge / "effects.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    per_item: dict[str, Counter[str]] = {i: Counter() for i in ids}
    for line in lines:
        if not line.strip():
            continue
        effect = json.loads(line)
        kind = effect.get("kind", "?")
        report.effects[kind] += 1
        branch = effect.get("head", "")
        if kind == "pr_merged":
            pull = forge / "pulls" / effect.get("repo", "") / f"{effect.get('number')}.json"
            with contextlib.suppress(OSError, ValueError):
                branch = json.loads(pull.read_text()).get("head", "")
        match = BRANCH_ITEM.match(branch or "")
        if match and match.group(1) in per_item:
            per_item[match.group(1)][kind] += 1
    for item, counts in per_item.items():
        for kind in ("pr_opened", "pr_merged"):
            if counts[kind] > 1:
                report.duplicated[kind] += counts[kind] - 1
                report.duplicate_details.append(f"{item}: {kind} x{counts[kind]}")


def _count_comments(tracker: LocalTracker, tasks: dict[str, Task], report: Report) -> None:
    effects = tracker.effects_path
    lines = effects.read_text().splitlines() if effects.exists() else []
    keys = Counter(
        (e.get("work_item_id"), e.get("key"))
        for e in (json.loads(line) for line in lines if line.strip())
        if e.get("kind") == "comment_posted"
    )
    for (item, key), count in sorted(keys.items()):
        if count > 1:
            report.duplicated_comments += count - 1
            report.comment_details.append(f"{item}: comment key {key} posted x{count}")
    for item, task in sorted(tasks.items()):
        expected = Counter(_history_comment(h.old, h.new, h.cause) for h in task.history)
        posted = Counter(
            c for c in tracker.comments(item) if c.startswith(("Stage ", "Conveyor accepted"))
        )
        for text, count in posted.items():
            if count > expected.get(text, 0):
                report.duplicated_comments += count - expected.get(text, 0)
                report.comment_details.append(
                    f"{item}: {text!r} posted x{count}, in history x{expected.get(text, 0)}"
                )


def _history_comment(old: str, new: str, cause: str) -> str:
    if not old:
        return f"Conveyor accepted this work item ({cause})."
    return f"Stage {old} → {new}: {cause}"


def _count_runs(data: Path, report: Report, ids: list[str]) -> None:
    """Agent attempts per job beyond the first that no agent kill of ours explains."""
    killed = Counter(k.job_id for k in report.kills if k.victim == "agent")
    for item in ids:
        attempts: Counter[str] = Counter()
        for log in (data / "runs" / item).glob("*/output.log"):
            rest = log.parent.name.rsplit(".", 1)[0]
            attempts[f"{item}.{rest}"] += 1
        for job, count in attempts.items():
            extra = count - 1 - killed.get(job, 0)
            if extra > 0:
                report.extra_runs[job] = extra


def _recovery(report: Report, tasks: dict[str, Task]) -> None:
    kills = sorted(report.kills, key=lambda k: k.wall)
    for kill in kills:
        if kill.victim == "agent" and kill.resolved_s is not None:
            end = kill.wall + kill.resolved_s
            kill.disturbed = any(
                o is not kill and kill.wall < o.wall < end and o.victim != "agent" for o in kills
            )
            report.agent_recovery.append(Sample(kill.resolved_s, kill.disturbed))
    changes = sorted(h.at for t in tasks.values() for h in t.history)
    for kill in kills:
        if kill.victim not in ("control", "nats-server") or kill.restart_wall is None:
            continue
        start = kill.restart_wall
        in_flight = [t for t in tasks.values() if _in_flight(t, start)]
        later = [at for at in changes if at > start]
        sample_list = report.control_recovery if kill.victim == "control" else report.nats_recovery
        if not in_flight or not later:
            if kill.victim == "control":
                report.control_unmeasured += 1
            else:
                report.nats_unmeasured += 1
            continue
        first = later[0]
        disturbed = any(
            o.victim in ("control", "nats-server", "launcher") and start < o.wall < first
            for o in kills
        )
        sample_list.append(Sample(first - start, disturbed))


def _in_flight(task: Task, at: float) -> bool:
    """The task existed at `at` and was not yet done."""
    before = [h for h in task.history if h.at <= at]
    return bool(before) and before[-1].new != DONE and not task.escalated


# --------------------------------------------------------------------------- command line


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        pair = (float(low), float(high or low))
    except ValueError as err:
        raise argparse.ArgumentTypeError("expected MIN-MAX seconds, e.g. 5-15") from err
    if pair[0] <= 0 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError("expected 0 < MIN <= MAX")
    return pair


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--repos", type=int, default=2)
    parser.add_argument("--kill-every", type=_range, default=(5.0, 15.0), metavar="MIN-MAX")
    parser.add_argument("--deadline-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--agent-s", type=float, default=1.0, help="seconds each agent works")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch dir (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.items < 1 or not 1 <= args.repos <= 9:
        parser.error("--items must be >= 1 and --repos between 1 and 9")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conveyor-chaos-"))
    keep = args.keep or args.workdir is not None
    try:
        report = run(
            args.items,
            args.repos,
            args.kill_every[0],
            args.kill_every[1],
            args.deadline_s,
            seed,
            workdir,
            agent_s=args.agent_s,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        print(f"interrupted; everything stopped; scratch kept: {workdir}", file=sys.stderr)
        return 130
    except BenchError as err:
        print(f"chaos bench failed: {err}\nscratch kept: {workdir}", file=sys.stderr)
        return 1
    print(report.render())
    findings = report.lost or report.duplicated_effects or report.duplicated_comments
    if keep or findings or report.errors or report.timed_out:
        # Findings keep their logs; a clean run leaves nothing behind.
        print(f"\nlogs kept: {workdir}/{{control,launcher,nats-server}}.log")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
