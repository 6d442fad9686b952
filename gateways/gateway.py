"""The inbound webhook gateway: HTTP and raw NATS in, durable JetStream events out.

`POST /webhooks/gitea` and `POST /webhooks/plane` (and the core NATS subjects
`conveyor.webhooks.gitea|plane`, queue group `gateway`) go through one function,
`Gateway.handle`: size (413), then `gateways.webhooks` (415, 401, 400, ignored
202), then a JetStream publish to `CONVEYOR_EVENTS` with `Nats-Msg-Id`
`<source>:<delivery>`. A 200 is sent only after the PubAck, so an accepted
webhook is on disk; a bus that does not answer within `gateway.publish_timeout_s`
gives 503 and the sender retries, which the msg id makes harmless.

The HTTP server runs on the bus's own event loop: the publish is then a plain
`await` on the NATS client, with no hop between loops, and the raw NATS path
(whose callbacks run on that loop anyway) shares the code as it is. Request
handling does no blocking I/O; verifying and parsing a body at most
`gateway.max_body_bytes` long is the only CPU work it puts on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import nats.js.errors
from aiohttp import web
from nats.aio.msg import Msg

from bus import subjects
from bus.bridge import DISCONNECTED, MSG_ID, Bus
from bus.messages import encode
from conveyor.config import Config
from conveyor.errors import BusUnavailable, WebhookRejected
from conveyor.logs import get_logger
from gateways import webhooks
from gateways.board import Board
from gateways.webhooks import GITEA, PLANE, Ignored

log = get_logger(__name__)

QUEUE_GROUP = "gateway"
"""Core NATS queue group of the raw webhook subjects: one gateway handles each message."""

HEALTH_TIMEOUT_S = 1.0
"""How long `/healthz` waits for JetStream to answer a stream info."""

MAX_NATS_IN_FLIGHT = 256
"""Raw NATS webhooks handled at once; beyond it the subscription waits (back-pressure)."""

SHUTDOWN_TIMEOUT_S = 5.0
"""How long `stop` lets in-flight HTTP requests finish."""

_RAW_SUBJECTS = ((subjects.WEBHOOKS_GITEA, GITEA), (subjects.WEBHOOKS_PLANE, PLANE))

_UNAVAILABLE = (*DISCONNECTED, nats.js.errors.ServiceUnavailableError, BusUnavailable)
"""Errors that mean the bus did not take the event now; the sender should retry."""


class Outcome(msgspec.Struct, frozen=True):
    """The answer to one webhook: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


class Gateway:
    """Receives webhooks over HTTP and core NATS and stores them as events on JetStream.

    Not started by the constructor: call `start` (or use `start_gateway`), and
    `stop` before the bus is closed. Both are called from a thread other than the
    bus loop's.
    """

    def __init__(
        self, bus: Bus, cfg: Config, *, actors_health: Callable[[], str] | None = None
    ) -> None:
        self._bus = bus
        self._actors_health = actors_health
        """Why an actor of this process is down ("" when none is): `/healthz` says 503."""
        self._cfg = cfg.gateway
        self._secrets = {GITEA: cfg.gitea.webhook_secret, PLANE: cfg.plane.webhook_secret}
        self._runner: web.AppRunner | None = None
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Binds to the running loop on first use (Python >= 3.10), which is the bus loop.
        self._slots = asyncio.Semaphore(MAX_NATS_IN_FLIGHT)
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._counts: dict[str, dict[str, Any]] = {
            source: _zero_counts() for source in webhooks.SOURCES
        }
        self.url = ""
        """`http://host:port` once started (the real port when configured as 0)."""
        self.board = Board(bus, cfg, webhooks=self.status)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> Gateway:
        """Listen on `gateway.host:port` and subscribe to the raw webhook subjects."""
        with self._lock:
            if self._started:
                return self
            self._started = True
        self._bus.loop.call(self._start(), timeout_s=30.0)
        log.info(
            "gateway.started",
            url=self.url,
            gitea=bool(self._secrets[GITEA]),
            plane=bool(self._secrets[PLANE]),
            board=self.board.board_on,
            metrics=self.board.metrics_on,
        )
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=self._cfg.max_body_bytes)
        app.router.add_post("/webhooks/gitea", functools.partial(self._http, GITEA))
        app.router.add_post("/webhooks/plane", functools.partial(self._http, PLANE))
        app.router.add_get("/healthz", self._healthz)
        self.board.register(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._cfg.host, self._cfg.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
            for subject, source in _RAW_SUBJECTS:
                cb = functools.partial(self._on_nats, source)
                self._subs.append(await self._bus.nc.subscribe(subject, queue=QUEUE_GROUP, cb=cb))
            await self.board.start()
        except BaseException:
            await self.board.stop()
            await self._close_subs()
            await runner.cleanup()
            raise
        self._runner = runner

    def stop(self) -> None:
        """Stop listening and subscribing; in-flight requests get a moment. Idempotent."""
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        # A bus already closed took its loop, and with it the server, along.
        with contextlib.suppress(BusUnavailable):
            self._bus.loop.call(self._stop(), timeout_s=SHUTDOWN_TIMEOUT_S + 5.0)
        log.info("gateway.stopped", url=self.url)

    async def _stop(self) -> None:
        await self.board.stop()
        await self._close_subs()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _close_subs(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    # --- the one path every webhook takes -----------------------------------------------

    async def handle(
        self, source: str, headers: Mapping[str, str], body: bytes, *, transport: str = "http"
    ) -> Outcome:
        """Verify, normalize and durably publish one webhook; never raises."""
        try:
            if len(body) > self._cfg.max_body_bytes:
                raise WebhookRejected(413, self._too_large())
            result = webhooks.normalize(source, headers, body, secret=self._secrets[source])
        except WebhookRejected as err:
            return self._rejected(source, err, transport)
        except Exception:  # a bug in one request must not take the server down
            log.exception("gateway.failed", source=source, transport=transport, step="parse")
            return self._count(source, "failed", Outcome(500, _error("internal error")))
        if isinstance(result, Ignored):
            log.debug("gateway.ignored", source=source, transport=transport, why=result.reason)
            return self._count(
                source, "ignored", Outcome(202, {"ok": True, "ignored": result.reason})
            )
        timeout_s = self._cfg.publish_timeout_s
        try:
            # The JetStream request has its own timeout; wait_for also bounds a publish
            # stuck behind a reconnect, so the sender hears 503 in time either way.
            ack = await asyncio.wait_for(
                self._bus.js.publish(
                    result.subject,
                    encode(result.event),
                    timeout=timeout_s,
                    stream=subjects.STREAM_EVENTS,
                    headers={MSG_ID: result.msg_id},
                ),
                timeout_s,
            )
        except _UNAVAILABLE as err:
            log.warning("gateway.unavailable", source=source, msg_id=result.msg_id, error=repr(err))
            return self._count(source, "unavailable", Outcome(503, _error("event bus unavailable")))
        except nats.js.errors.APIError as err:
            # JetStream answered no (storage full, stream limits): retrying later may work.
            log.warning("gateway.refused", source=source, msg_id=result.msg_id, error=repr(err))
            return self._count(source, "unavailable", Outcome(503, _error("event store refused")))
        except Exception:  # a bug in one request must not take the server down
            log.exception("gateway.failed", source=source, msg_id=result.msg_id, step="publish")
            return self._count(source, "failed", Outcome(500, _error("internal error")))
        duplicate = bool(ack.duplicate)
        log.info(
            "gateway.accepted",
            source=source,
            transport=transport,
            msg_id=result.msg_id,
            subject=result.subject,
            seq=ack.seq,
            duplicate=duplicate,
        )
        outcome = Outcome(200, {"ok": True, "duplicate": duplicate})
        return self._count(source, "duplicate" if duplicate else "accepted", outcome)

    def _rejected(self, source: str, err: WebhookRejected, transport: str) -> Outcome:
        log.info(
            "gateway.rejected",
            source=source,
            transport=transport,
            status=err.status,
            reason=err.reason,
        )
        with self._lock:
            rejected = self._counts.setdefault(source, _zero_counts())["rejected"]
            rejected[str(err.status)] = rejected.get(str(err.status), 0) + 1
        return Outcome(err.status, _error(err.reason))

    def _count(self, source: str, outcome: str, result: Outcome) -> Outcome:
        with self._lock:
            self._counts.setdefault(source, _zero_counts())[outcome] += 1
        return result

    def _too_large(self) -> str:
        return f"body: larger than {self._cfg.max_body_bytes} bytes"

    # --- HTTP ---------------------------------------------------------------------------

    async def _http(self, source: str, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > self._cfg.max_body_bytes:
            # Refused before reading: a huge body never reaches memory.
            outcome = self._rejected(source, WebhookRejected(413, self._too_large()), "http")
        else:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                outcome = self._rejected(source, WebhookRejected(413, self._too_large()), "http")
            else:
                outcome = await self.handle(source, request.headers, body, transport="http")
        return _json(outcome.status, outcome.body)

    async def _healthz(self, _request: web.Request) -> web.Response:
        problem = await self.health()
        if problem:
            return _json(503, _error(problem))
        return _json(200, {"ok": True})

    async def health(self) -> str:
        """Why the gateway cannot take webhooks now, or an actor of its process is down.

        Empty when neither.
        """
        if not self._bus.nc.is_connected:
            return "nats not connected"
        try:
            await asyncio.wait_for(
                self._bus.js.stream_info(subjects.STREAM_EVENTS), HEALTH_TIMEOUT_S
            )
        except _UNAVAILABLE as err:
            return f"jetstream did not answer: {type(err).__name__}"
        except nats.js.errors.APIError as err:
            return f"jetstream: {err.description or type(err).__name__}"
        # A supervised actor of this process that is down (`conveyor up`: all of them).
        return self._actors_health() if self._actors_health is not None else ""

    # --- raw NATS -----------------------------------------------------------------------

    async def _on_nats(self, source: str, msg: Msg) -> None:
        # nats-py runs one subscription's callbacks one after another; a task per message
        # lets publishes overlap, and the semaphore keeps their number bounded.
        await self._slots.acquire()
        task = asyncio.ensure_future(self._serve_nats(source, msg))
        self._tasks.add(task)
        task.add_done_callback(self._nats_done)

    def _nats_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve_nats(self, source: str, msg: Msg) -> None:
        outcome = await self.handle(source, msg.headers or {}, msg.data, transport="nats")
        if not msg.reply:
            return
        reply = {"ok": outcome.body.get("ok", False), "status": outcome.status, **outcome.body}
        try:
            await msg.respond(msgspec.json.encode(reply))
        except Exception as err:  # noqa: BLE001 - the requester may be gone; the event is stored
            log.warning("gateway.reply_failed", source=source, error=repr(err))

    # --- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts by source and outcome (`rejected` by HTTP status), for `conveyor.status.*`."""
        with self._lock:
            counts = {
                source: {**c, "rejected": dict(c["rejected"])} for source, c in self._counts.items()
            }
            running = self._started and not self._stopped
        return {"running": running, "url": self.url, "sources": counts}


def start_gateway(
    bus: Bus, cfg: Config, *, actors_health: Callable[[], str] | None = None
) -> Gateway:
    """Start a gateway for `cfg` on `bus`'s loop; the caller stops it before closing the bus."""
    return Gateway(bus, cfg, actors_health=actors_health).start()


def _zero_counts() -> dict[str, Any]:
    return {
        "accepted": 0,
        "duplicate": 0,
        "ignored": 0,
        "unavailable": 0,
        "failed": 0,
        "rejected": {},
    }


def _error(reason: str) -> dict[str, Any]:
    return {"ok": False, "error": reason}


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )
