"""Process wiring: which actors, consumers and services run in this process.

`conveyor up` runs every part in one process; the Procfile runs `nats`,
`control` (StageEngine, QueueWorker and the other control actors), `launcher`
and `gateway` as separate processes on one NATS. Which actors a part runs, and
what feeds them, is the wiring table's (`conveyor.app.wiring`); which forge and
tracker this node talks to is `conveyor.app.clients`'. Nothing here decides
anything about tasks or jobs. Every actor started runs under the node's
`Supervisor` (`conveyor.app.supervisor`), which restarts it when it stops and
reports it down meanwhile, in `conveyor.status` and the gateway's `/healthz`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pykka

from actors.launch_slots import Slots
from actors.leader import Leadership
from bus import subjects
from bus.bridge import Bus
from bus.server import EmbeddedNats
from conveyor import __version__
from conveyor.app import wiring
from conveyor.app.clients import ensure_repos, make_forge, serve_forge
from conveyor.app.node_control import ControlTerm, Ticker
from conveyor.app.service import ControlService, launcher_drain_handler, launcher_status_handler
from conveyor.app.supervisor import Supervisor
from conveyor.app.wiring import CONTROL, LAUNCHER
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config
from conveyor.layout import Layout
from conveyor.logs import get_logger
from gateways.forge import Forge
from gateways.gateway import Gateway, start_gateway
from gateways.gitea import GiteaForge
from gateways.local_forge_client import ForgeClient

log = get_logger(__name__)

GATEWAY = "gateway"
FORGE = "forge"
"""Owns the local forge's bare repositories and serves them over HTTP (`docs/local-forge.md`)."""
ALL_PARTS = (CONTROL, LAUNCHER)
"""What `Node` runs by default; `conveyor up` adds the gateway when `gateway.enabled`."""
STOP_GRACE_S = 3.0
"""How long stopping actors may use the bus before it closes under them."""


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
        self.supervisor: Supervisor | None = None
        self._closers: list[Callable[[], None]] = []
        self.leadership: Leadership | None = None
        self._control: ControlTerm | None = None

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
            ack_wait_s=self.cfg.nats.ack_wait_s,
            replicas=self.cfg.nats.replicas,
            write_retry_s=self.cfg.nats.write_retry_s,
        )
        self.bus.setup()
        supervisor = self.supervisor = Supervisor(self.bus, self.clock, self.cfg.supervisor)
        if CONTROL in self.parts or LAUNCHER in self.parts or FORGE in self.parts:
            forge = make_forge(self.cfg, self.clock, owner=FORGE in self.parts)
            if isinstance(forge, GiteaForge | ForgeClient):
                self._closers.append(forge.close)
            ensure_repos(self.cfg, forge)
            if FORGE in self.parts:
                # Closed last (closers run after the actors stop): runs may use it until then.
                self._closers.append(serve_forge(self.cfg, forge).stop)
            if CONTROL in self.parts and self.cfg.control.leader_lease:
                self.leadership = self._campaign(forge)
            elif CONTROL in self.parts:
                self._start_part(CONTROL, self.bus, forge, supervisor, self.refs, self._ticker)
            if LAUNCHER in self.parts:
                self._start_part(LAUNCHER, self.bus, forge, supervisor, self.refs, self._ticker)
        if GATEWAY in self.parts:
            self.gateway = start_gateway(self.bus, self.cfg, actors_health=supervisor.problem)
            (self.layout.root / "gateway.url").write_text(self.gateway.url)
            self.bus.add_service(
                subjects.SERVICE_NAME,
                __version__,
                "Conveyor webhook gateway",
                [("gateway", subjects.status_actor("gateway"), self._gateway_status)],
            )
        self._ticker.start()
        supervisor.start()
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

    def _campaign(self, forge: Forge) -> Leadership:
        """Start campaigning for the leader lease; the control actors run while it is held."""
        control = ControlTerm(self, forge)
        leadership = Leadership(
            self._lease_bus(), self.cfg.control, elected=control.begin, deposed=control.end
        )
        control.leadership = leadership
        self._control = control
        leadership.start()
        return leadership

    def _lease_bus(self) -> Bus:
        # Its own connection: the control actors' one is closed when they stop.
        bus = self._connect("lease")
        self._closers.append(bus.close)
        return bus

    def _connect(self, what: str) -> Bus:
        return Bus.connect(
            self.url,
            name=f"conveyor-{'-'.join(self.parts)}-{what}",
            connect_timeout_s=self.cfg.nats.connect_timeout_s,
            request_timeout_s=self.cfg.nats.request_timeout_s,
            ack_wait_s=self.cfg.nats.ack_wait_s,
            replicas=self.cfg.nats.replicas,
            write_retry_s=self.cfg.nats.write_retry_s,
        )

    def _start_part(
        self,
        part: str,
        bus: Bus,
        forge: Forge,
        supervisor: Supervisor,
        refs: dict[str, pykka.ActorRef[Any]],
        ticker: Ticker,
        *,
        control: Callable[[], Any] | None = None,
        closers: list[Callable[[], None]] | None = None,
    ) -> None:
        """Start the part's actors by walking the wiring table, then its status endpoints."""
        closers = self._closers if closers is None else closers
        ctx = wiring.Context(self.cfg, bus, self.clock, forge=forge, refs=refs, closers=closers)
        for spec in wiring.specs_of(part, self.cfg):
            handle = wiring.start_actor(spec, ctx)
            supervisor.watch(handle, functools.partial(wiring.incarnate, spec, ctx))
            if spec.ticks:
                ticker.add(handle)
        statuses = wiring.statuses(ctx, part)
        if part == CONTROL:
            wiring.audit(ctx)
            ControlService(
                bus,
                refs["stage_engine"],
                refs["queue_worker"],
                refs["reaper"],
                refs["lease_keeper"],
                version=__version__,
                request_timeout_s=self.cfg.nats.request_timeout_s,
                statuses=statuses,
                supervised=supervisor.status,
                control=control,
            ).register()
            return
        launcher, query = statuses["launcher"]
        name = self.cfg.launcher.identity()

        def _launcher_status() -> object:
            down = supervisor.status().get("launcher", {})
            if not down.get("healthy", True):
                return down
            return launcher.ask(query, timeout=5)

        bus.add_service(
            subjects.SERVICE_NAME,
            __version__,
            "Conveyor launcher",
            [
                (
                    "launcher",
                    subjects.status_actor("launcher"),
                    launcher_status_handler(_launcher_status),
                ),
                (
                    "drain",
                    subjects.launcher_drain(name),
                    launcher_drain_handler(name, ctx.drain, lambda: _busy(ctx.slots)),
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
        if self.leadership is not None:
            # The control actors stop before the lease is released to a standby.
            self.leadership.stop()
        if self.supervisor is not None:
            # First: an actor stopped below must not be restarted.
            self.supervisor.stop()
        self._ticker.stop()
        if self.gateway is not None:
            self.gateway.stop()
        # Delivery stops first, then the actors finish what they hold while the
        # connection still takes their acks and writes; the bus closes after, or
        # after a grace, which fails fast whatever still waits on it.
        if self.bus is not None:
            self.bus.quiesce()
        stopping = [ref.stop(block=False) for ref in self.refs.values() if ref.is_alive()]
        _wait_all(stopping, STOP_GRACE_S)
        if self.bus is not None:
            self.bus.close()
        _wait_all(stopping, 10.0)
        for close in self._closers:
            try:
                close()
            except Exception:
                log.exception("conveyor.close_failed")
        if self.server is not None:
            self.server.stop()
        log.info("conveyor.stopped", parts=",".join(self.parts))


def _busy(slots: Slots | None) -> int:
    return slots.used if slots is not None else 0


def _wait_all(futures: Sequence[pykka.Future[Any]], timeout_s: float) -> None:
    """Wait for every future up to `timeout_s` in all; a late one is left running."""
    with contextlib.suppress(pykka.Timeout):
        pykka.get_all(futures, timeout=timeout_s)
