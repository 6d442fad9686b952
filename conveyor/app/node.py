"""Process wiring: which actors, consumers and services run in this process.

`conveyor up` runs every part in one process; the Procfile runs `nats`,
`control` (StageEngine, QueueWorker and the other control actors), `launcher`
and `gateway` as separate processes on one NATS. This is also where the
configured forge (local or Gitea), tracker (local or Plane) and notifier
(Telegram) are chosen. Nothing here decides anything about tasks or jobs.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import pykka

from actors.intake import Intake, IntakeStatus
from actors.launcher import Launcher, LauncherStatus, Slots
from actors.launcher_policy import Run
from actors.lease_keeper import LeaseKeeper
from actors.lease_policy import Lease, merged_stages
from actors.monitor import MonitorStatus, PostDeployMonitor
from actors.monitor_policy import Watch
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
    Annotate,
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
from conveyor import __version__
from conveyor.agents import demo_repo as demo
from conveyor.app.service import ControlService, launcher_status_handler
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config, python_argv
from conveyor.layout import Layout
from conveyor.logs import get_logger
from gateways.forge import Forge
from gateways.gateway import Gateway, start_gateway
from gateways.gitea import GiteaForge
from gateways.local_forge import LocalForge
from gateways.plane import PlaneTracker
from gateways.telegram import Notifier, NotifierStatus, Telegram, consume_alerts
from gateways.tracker import LocalTracker
from gateways.tracker_sync import TrackerSync

log = get_logger(__name__)

CONTROL = "control"
LAUNCHER = "launcher"
GATEWAY = "gateway"
ALL_PARTS = (CONTROL, LAUNCHER)
"""What `Node` runs by default; `conveyor up` adds the gateway when `gateway.enabled`."""


def make_forge(cfg: Config, clock: Clock) -> Forge:
    """The configured forge: bare repositories on disk, or a Gitea server."""
    if cfg.forge.kind == "gitea":
        return GiteaForge(cfg, clock=clock)
    checks = {
        repo.name: python_argv(repo.check_command) for repo in cfg.repos if repo.check_command
    }
    return LocalForge(
        Layout(cfg.data_path).forge, checks, check_timeout_s=cfg.forge.check_timeout_s, clock=clock
    )


def ensure_repos(cfg: Config, forge: Forge) -> None:
    """Create the configured repositories on the local forge if they are missing.

    On Gitea the repositories are the operator's: Conveyor never creates them.
    """
    if not isinstance(forge, LocalForge):
        return
    for repo in cfg.repos:
        files = (
            demo.create_demo_files()
            if repo.template == "demo"
            else {"README.md": f"# {repo.name}\n".encode()}
        )
        forge.create_repo(repo.name, initial_files=files)


def plane_state_for(cfg: Config) -> Callable[[str], str | None]:
    """The Plane state a stage puts its work item in (None: leave the board as it is).

    Only states that say something to people: the review and the end. Every other
    stage is visible as a comment; moving cards there would fight the humans who
    move them to Approved, Blocked or Confirm Deploy.
    """
    states = cfg.plane.states
    mapping = {"review": states.in_review, "done": states.done}
    return mapping.get


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
        self.gateway: Gateway | None = None
        self._plane: PlaneTracker | None = None
        self._closers: list[Callable[[], None]] = []

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
        if CONTROL in self.parts or LAUNCHER in self.parts:
            forge = make_forge(self.cfg, self.clock)
            if isinstance(forge, GiteaForge):
                self._closers.append(forge.close)
            ensure_repos(self.cfg, forge)
            if CONTROL in self.parts:
                self._start_control(self.bus, forge)
            if LAUNCHER in self.parts:
                self._start_launcher(self.bus, forge)
        if GATEWAY in self.parts:
            self.gateway = start_gateway(self.bus, self.cfg)
            (self.layout.root / "gateway.url").write_text(self.gateway.url)
            self.bus.add_service(
                subjects.SERVICE_NAME,
                __version__,
                "Conveyor webhook gateway",
                [("gateway", subjects.status_actor("gateway"), self._gateway_status)],
            )
        self._ticker.start()
        log.info(
            "conveyor.started",
            parts=",".join(self.parts),
            url=self.url,
            data_dir=str(self.layout.root),
        )
        return self

    def _gateway_status(self, _subject: str, _body: bytes) -> bytes:
        status = self.gateway.status() if self.gateway is not None else {"healthy": False}
        return msgspec.json.encode({"ok": True, **status})

    def _tracker(self, engine: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        """TrackerSync over the configured tracker; for Plane, only tasks from Plane."""
        if self.cfg.tracker.kind != "plane":
            return TrackerSync.start(LocalTracker(self.layout.tracker, self.clock))

        def _refs(task_id: str) -> tuple[str, str] | None:
            task = cast(
                "dict[str, Any] | None",
                engine.ask(StatusQuery(kind="task", task_id=task_id), timeout=10),
            )
            if not task or not task.get("external_id"):
                return None
            project = self.cfg.repo(task["repo"]).plane_project
            return (project, task["external_id"]) if project else None

        plane = PlaneTracker(self.cfg.plane, _refs)
        self._plane = plane
        self._closers.append(plane.close)
        return TrackerSync.start(
            plane,
            state_for=plane_state_for(self.cfg),
            tracked=lambda task_id: _refs(task_id) is not None,
        )

    def _start_control(self, bus: Bus, forge: Forge) -> None:
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
        kept = merged_stages([(s.name, s.merge) for s in self.cfg.pipeline.stages])
        leases = LeaseKeeper.start(
            bus, bus.store(subjects.BUCKET_LEASES, Lease), self.clock, self.cfg.leases, kept=kept
        )
        self.refs["lease_keeper"] = leases
        self._ticker.add(leases)
        bus.consume(
            subjects.STREAM_NOTIFY,
            subjects.CONSUMER_LEASE_KEEPER,
            [subjects.STAGE_ALL, subjects.ALERTS],
            msgspec.json.Decoder(BusMessage),
            leases.tell,
        )
        tracker = self._tracker(engine)
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

        plane = self._plane
        intake = Intake.start(
            engine,
            self.cfg,
            tasks=_tasks,
            resolve_state=plane.resolve_state if plane is not None else None,
        )
        self.refs["intake"] = intake
        bus.consume(
            subjects.STREAM_EVENTS,
            subjects.CONSUMER_INTAKE,
            [subjects.EVENTS_ALL],
            event_decoder,
            intake.tell,
        )
        projects = [r.plane_project for r in self.cfg.repos if r.plane_project]
        reconciler = Reconciler.start(
            engine,
            bus,
            self.clock,
            self.cfg,
            tasks=_tasks,
            poll=plane.poller(projects) if plane is not None and projects else None,
        )
        self.refs["reconciler"] = reconciler
        self._ticker.add(reconciler)
        others: dict[str, tuple[pykka.ActorRef[Any], Any]] = {
            "intake": (intake, IntakeStatus()),
            "reconciler": (reconciler, ReconcilerStatus()),
        }

        def _record(task_id: str, cause: str) -> None:
            key = f"monitor:{hashlib.sha256(cause.encode()).hexdigest()[:16]}"
            engine.tell(Annotate(id=task_id, cause=cause, key=key))

        monitor = PostDeployMonitor.start(
            bus,
            bus.store(subjects.BUCKET_MONITOR, Watch),
            Ledger(bus.store(subjects.BUCKET_EFFECTS, Effect), self.clock, "monitor"),
            self.clock,
            self.cfg,
            data_dir=self.layout.root,
            record=_record,
        )
        self.refs["monitor"] = monitor
        self._ticker.add(monitor)
        bus.consume(
            subjects.STREAM_NOTIFY,
            subjects.CONSUMER_MONITOR,
            [subjects.STAGE_ALL],
            msgspec.json.Decoder(BusMessage),
            monitor.tell,
        )
        others["monitor"] = (monitor, MonitorStatus())
        if self.cfg.telegram.enabled:
            telegram = Telegram(self.cfg.telegram)
            self._closers.append(telegram.close)
            effects = Ledger(bus.store(subjects.BUCKET_EFFECTS, Effect), self.clock, "notifier")
            notifier = Notifier.start(telegram.send, effects, self.cfg.telegram)
            self.refs["notifier"] = notifier
            consume_alerts(bus, notifier)
            others["notifier"] = (notifier, NotifierStatus())
        ControlService(
            bus,
            engine,
            worker,
            reaper,
            leases,
            version=__version__,
            request_timeout_s=self.cfg.nats.request_timeout_s,
            others=others,
        ).register()

    def _start_launcher(self, bus: Bus, forge: Forge) -> None:
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
        if self.gateway is not None:
            self.gateway.stop()
        if self.bus is not None:
            self.bus.close()
        for ref in self.refs.values():
            if ref.is_alive():
                ref.stop(block=True, timeout=10)
        for close in self._closers:
            try:
                close()
            except Exception:
                log.exception("conveyor.close_failed")
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
