"""The chaos threads: the killer (kill -9 a random victim, restart it) and the agent watch."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from actors.queue_policy import RUNNING, Job
from bus import subjects
from conveyor.app.client import Client
from conveyor.clock import SystemClock

# bench/ is a folder of scripts, not a package: its sibling modules import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_cluster import Agent, Cluster, find_agents
from chaos_report import VICTIMS, Kill, Report

CLOCK = SystemClock()

PARTS = ("control", "launcher")
RESTART_PAUSE_S = 0.5
AGENT_SEARCH_S = 2.0


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
