"""Process wiring: which actors, consumers and services run in this process.

`conveyor up` runs every part in one process; the Procfile runs `nats`,
`control` (StageEngine + QueueWorker) and `launcher` as separate processes on
one NATS. Nothing here decides anything about tasks or jobs.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pykka

from actors.intake import Intake, IntakeStatus
from actors.launcher import Launcher, LauncherStatus, Slots
from actors.launcher_policy import Run
from actors.lease_keeper import LeaseKeeper
from actors.lease_policy import Lease
from actors.queue_policy import Job
from actors.queue_worker import QueueStatus, QueueWorker
from actors.reaper import Reaper
from actors.reconciler import Reconciler, ReconcilerStatus
from actors.stage_engine import StageEngine, StatusQuery
from actors.stage_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.effects import Effect, Ledger
from bus.messages import (
    BusMessage,
    JobInput,
    JobOutcome,
    KillJob,
    LaunchOrder,
    RunHeartbeat,
    Tick,
    event_decoder,
)
from bus.server import EmbeddedNats
from conveyor import __version__, demo
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config, python_argv
from conveyor.layout import Layout
from conveyor.logs import get_logger
from conveyor.service import ControlService, launcher_status_handler
from gateways.forge import LocalForge
from gateways.tracker import LocalTracker
from gateways.tracker_sync import TrackerSync

log = get_logger(__name__)

CONTROL = "control"
LAUNCHER = "launcher"
ALL_PARTS = (CONTROL, LAUNCHER)


def make_forge(cfg: Config, clock: Clock) -> LocalForge:
    """The configured forge (only the local one so far)."""
    checks = {
        repo.name: python_argv(repo.check_command) for repo in cfg.repos if repo.check_command
    }
    return LocalForge(
        Layout(cfg.data_path).forge, checks, check_timeout_s=cfg.forge.check_timeout_s, clock=clock
    )


def ensure_repos(cfg: Config, forge: LocalForge) -> None:
    """Create the configured repositories on the local forge if they are missing."""
    for repo in cfg.repos:
        files = (
            demo.create_demo_files()
            if repo.template == "demo"
            else {"README.md": f"# {repo.name}\n".encode()}
        )
        forge.create_repo(repo.name, initial_files=files)


class Ticker:
    """Sends `Tick` to actors every `interval_s` from one thread."""

    def __init__(self, interval_s: float, clock: Clock) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._targets: list[pykka.ActorRef[Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def add(self, ref: pykka.ActorRef[Any]) -> None:
        self._targets.append(ref)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for ref in self._targets:
                if ref.is_alive():
                    ref.tell(Tick(now=self._clock.now()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class Node:
    """One Conveyor process: an optional embedded server, a bus, and some actors."""

    def __init__(
        self,
        cfg: Config,
        *,
        parts: Sequence[str] = ALL_PARTS,
        embedded: bool | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self.parts = tuple(parts)
        self.clock = clock or SystemClock()
        self.layout = Layout(cfg.data_path)
        self.embedded = (cfg.nats.url == "") if embedded is None else embedded
        self.server: EmbeddedNats | None = None
        self.bus: Bus | None = None
        self.refs: dict[str, pykka.ActorRef[Any]] = {}
        self._ticker = Ticker(cfg.queue.tick_s, self.clock)
        self._stopped = False

    @property
    def url(self) -> str:
        """NATS url this node uses."""
        if self.server is not None:
            return self.server.url
        return self.cfg.nats.url

    def start(self) -> Node:
        """Start the server (if embedded), connect, create streams, start the actors."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            self.server = EmbeddedNats(
                self.layout.nats_store,
                host=self.cfg.nats.host,
                port=self.cfg.nats.port,
                monitor_port=self.cfg.nats.monitor_port,
            )
            self.server.start()
            (self.layout.root / "nats.url").write_text(self.server.url)
        self.bus = Bus.connect(
            self.url,
            name=f"conveyor-{'-'.join(self.parts)}",
            connect_timeout_s=self.cfg.nats.connect_timeout_s,
            request_timeout_s=self.cfg.nats.request_timeout_s,
        )
        self.bus.setup()
        forge = make_forge(self.cfg, self.clock)
        ensure_repos(self.cfg, forge)
        if CONTROL in self.parts:
            self._start_control(self.bus, forge)
        if LAUNCHER in self.parts:
            self._start_launcher(self.bus, forge)
        self._ticker.start()
        log.info(
            "conveyor.started",
            parts=",".join(self.parts),
            url=self.url,
            data_dir=str(self.layout.root),
        )
        return self

    def _start_control(self, bus: Bus, forge: LocalForge) -> None:
        engine = StageEngine.start(
            bus, bus.store(subjects.BUCKET_TASKS, Task), forge, self.clock, self.cfg
        )
        worker = QueueWorker.start(
            bus, bus.store(subjects.BUCKET_JOBS, Job), self.clock, self.cfg.queue
        )
        self.refs["stage_engine"] = engine
        self.refs["queue_worker"] = worker
        self._ticker.add(worker)
        self._ticker.add(engine)
        bus.consume(
            subjects.STREAM_JOBS,
            subjects.CONSUMER_STAGE_ENGINE,
            [subjects.JOBS_OUTCOME],
            msgspec.json.Decoder(JobOutcome),
            engine.tell,
        )
        bus.consume(
            subjects.STREAM_JOBS,
            subjects.CONSUMER_QUEUE_WORKER,
            [
                subjects.JOBS_REQUESTED,
                subjects.JOBS_CANCELLED,
                subjects.JOBS_STARTED,
                subjects.JOBS_FINISHED,
                subjects.JOBS_REAP,
            ],
            msgspec.json.Decoder(JobInput),
            worker.tell,
        )
        reaper = Reaper.start(
            bus, worker, bus.store(subjects.BUCKET_RUNS, Run), self.clock, self.cfg.reaper
        )
        self.refs["reaper"] = reaper
        self._ticker.add(reaper)
        bus.subscribe_core(subjects.HEARTBEATS, msgspec.json.Decoder(RunHeartbeat), reaper.tell)
        leases = LeaseKeeper.start(
            bus, bus.store(subjects.BUCKET_LEASES, Lease), self.clock, self.cfg.leases
        )
        self.refs["lease_keeper"] = leases
        self._ticker.add(leases)
        bus.consume(
            subjects.STREAM_NOTIFY,
            subjects.CONSUMER_LEASE_KEEPER,
            [subjects.STAGE_ALL],
            msgspec.json.Decoder(BusMessage),
            leases.tell,
        )
        tracker = TrackerSync.start(LocalTracker(self.layout.tracker, self.clock))
        self.refs["tracker_sync"] = tracker
        bus.consume(
            subjects.STREAM_NOTIFY,
            subjects.CONSUMER_TRACKER,
            [subjects.STAGE_ALL, subjects.ALERTS],
            msgspec.json.Decoder(BusMessage),
            tracker.tell,
        )

        def _tasks() -> list[dict[str, Any]]:
            rows = engine.ask(StatusQuery(kind="tasks"), timeout=10)
            return list(rows)

        intake = Intake.start(engine, self.cfg, tasks=_tasks)
        self.refs["intake"] = intake
        bus.consume(
            subjects.STREAM_EVENTS,
            subjects.CONSUMER_INTAKE,
            [subjects.EVENTS_ALL],
            event_decoder,
            intake.tell,
        )
        reconciler = Reconciler.start(engine, bus, self.clock, self.cfg, tasks=_tasks)
        self.refs["reconciler"] = reconciler
        self._ticker.add(reconciler)
        ControlService(
            bus,
            engine,
            worker,
            reaper,
            leases,
            version=__version__,
            request_timeout_s=self.cfg.nats.request_timeout_s,
            others={
                "intake": (intake, IntakeStatus()),
                "reconciler": (reconciler, ReconcilerStatus()),
            },
        ).register()

    def _start_launcher(self, bus: Bus, forge: LocalForge) -> None:
        slots = Slots(self.cfg.launcher.slots)
        name = self.cfg.launcher.name or socket.gethostname()
        effects = Ledger(bus.store(subjects.BUCKET_EFFECTS, Effect), self.clock, name)
        launcher = Launcher.start(
            bus, bus.store(subjects.BUCKET_RUNS, Run), effects, forge, self.clock, self.cfg, slots
        )
        self.refs["launcher"] = launcher
        self._ticker.add(launcher)

        def _order(delivery: Any) -> None:
            slots.reserve()
            launcher.tell(delivery)

        bus.consume(
            subjects.STREAM_LAUNCH,
            subjects.CONSUMER_LAUNCHERS,
            [subjects.LAUNCH_ORDERS],
            msgspec.json.Decoder(LaunchOrder),
            _order,
            capacity=slots.free,
        )
        bus.subscribe_core(subjects.LAUNCH_KILL, msgspec.json.Decoder(KillJob), launcher.tell)
        bus.add_service(
            subjects.SERVICE_NAME,
            __version__,
            "Conveyor launcher",
            [
                (
                    "launcher",
                    subjects.status_actor("launcher"),
                    launcher_status_handler(lambda: launcher.ask(LauncherStatus(), timeout=5)),
                ),
            ],
        )

    def ask(self, actor: str, message: Any, timeout_s: float = 10.0) -> Any:
        """Ask an actor of this node (tests and the status service)."""
        return self.refs[actor].ask(message, timeout=timeout_s)

    def stop(self) -> None:
        """Stop actors, close the bus, stop the embedded server. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._ticker.stop()
        if self.bus is not None:
            self.bus.close()
        for ref in self.refs.values():
            if ref.is_alive():
                ref.stop(block=True, timeout=10)
        if self.server is not None:
            self.server.stop()
        log.info("conveyor.stopped", parts=",".join(self.parts))


def wait_forever(stop: threading.Event, on_stop: Callable[[], None]) -> None:
    """Block until `stop` is set, then run `on_stop`."""
    try:
        while not stop.wait(1.0):
            pass
    finally:
        on_stop()


def read_url(data_dir: Path) -> str | None:
    """The url a running embedded server wrote for other processes, if any."""
    path = data_dir / "nats.url"
    return path.read_text().strip() if path.exists() else None


def queue_status(node: Node) -> Any:
    """Queue status via the QueueWorker (tests)."""
    return node.ask("queue_worker", QueueStatus())
