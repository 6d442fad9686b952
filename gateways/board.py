"""The operator's web board and `/metrics` on the gateway's HTTP server (read-only).

Routes: `/board` (tasks by stage, queue, leases, alerts, health), `/board/task/<ID>`
(one task's timeline), `/board/api/overview`, `/board/api/task/<ID>` (the JSON
those pages render), `/board/events` (server-sent events from the bus),
`/board/static/*` (one HTML page, one vanilla JS file, one stylesheet; no build
step) and `/metrics` (Prometheus).

Access: nothing is served on an address other than loopback unless
`board.token` (or `board.token_file`) is set, and a set token is always asked
for: `Authorization: Bearer <token>`, or the `conveyor_board` cookie that
`/board?token=<token>` sets (an EventSource cannot send headers). Titles and
descriptions are untrusted: the page renders every value with `textContent`, and
the Content-Security-Policy allows scripts from this server only, so markup in a
title is shown as text and never runs.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from bus import subjects
from bus.bridge import Bus
from bus.messages import BusMessage, StageChanged
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config
from conveyor.config_board import is_loopback
from conveyor.errors import InvalidField
from conveyor.logs import get_logger
from conveyor.pipeline import CANCELLED, CREATED, DONE
from gateways.board_feed import CLOSED, Feed
from gateways.board_status import StatusReader
from gateways.metrics import CONTENT_TYPE, Metrics

log = get_logger(__name__)

COOKIE = "conveyor_board"
KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing an idle event stream."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {
    "board.js": "application/javascript",
    "board.css": "text/css",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static(name: str) -> bytes:
    return resources.files("gateways").joinpath("static", name).read_bytes()


class Board:
    """Serves the board and the metrics of one gateway; `register` adds its routes."""

    def __init__(
        self,
        bus: Bus,
        cfg: Config,
        *,
        webhooks: Callable[[], dict[str, Any]],
        clock: Clock | None = None,
    ) -> None:
        self._cfg = cfg.board
        self._token = cfg.board.secret()
        clock = clock or SystemClock()
        self.reader = StatusReader(bus, clock, cfg.board.refresh_s)
        self.feed = Feed(bus, clock, cfg.board.alerts_kept)
        self.metrics = Metrics(cfg, self.reader.last, webhooks)
        self.feed.listen(self.metrics.observe)
        self.feed.listen(self._on_event)
        self._stages = [CREATED, *(s.name for s in cfg.pipeline.stages), DONE, CANCELLED]
        loopback = is_loopback(cfg.gateway.host)
        self.board_on = cfg.board.enabled and (loopback or bool(self._token))
        self.metrics_on = cfg.board.metrics and (loopback or bool(self._token))
        if (cfg.board.enabled or cfg.board.metrics) and not (self.board_on or self.metrics_on):
            log.warning(
                "board.disabled",
                host=cfg.gateway.host,
                why="not loopback and no board.token: board and /metrics are off",
            )

    def register(self, app: web.Application) -> None:
        if self.board_on:
            app.router.add_get("/board", self._guard(self._page))
            app.router.add_get("/board/task/{id}", self._guard(self._page))
            app.router.add_get("/board/api/overview", self._guard(self._overview))
            app.router.add_get("/board/api/task/{id}", self._guard(self._task))
            app.router.add_get("/board/events", self._guard(self._events))
            app.router.add_get("/board/static/{name}", self._guard(self._file))
        if self.metrics_on:
            app.router.add_get("/metrics", self._guard(self._metrics))

    async def start(self) -> None:
        if self.board_on or self.metrics_on:
            await self.feed.start()
            self.metrics.started(self.feed.started_at)

    async def stop(self) -> None:
        await self.feed.stop()

    def _on_event(self, body: BusMessage) -> None:
        if isinstance(body, StageChanged):
            self.reader.stale()

    # --- access -------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Handler:
        async def _guarded(request: web.Request) -> web.StreamResponse:
            if self._token and not self._allowed(request):
                offered = request.query.get("token", "")
                if request.path == "/board" and hmac.compare_digest(offered, self._token):
                    moved = web.HTTPSeeOther("/board", headers=SECURITY_HEADERS)
                    moved.set_cookie(COOKIE, self._token, httponly=True, samesite="Strict")
                    raise moved
                return _json(401, {"ok": False, "error": "board token required"})
            return await handler(request)

        return _guarded

    def _allowed(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
        cookie = request.cookies.get(COOKIE, "")
        return any(hmac.compare_digest(given, self._token) for given in (bearer, cookie) if given)

    # --- pages and data -----------------------------------------------------------------

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=_static("board.html"), content_type="text/html", headers=SECURITY_HEADERS
        )

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            return _json(404, {"ok": False, "error": "no such file"})
        return web.Response(body=_static(name), content_type=STATIC[name], headers=SECURITY_HEADERS)

    async def _overview(self, _request: web.Request) -> web.Response:
        snap = await self.reader.snapshot()
        return _json(200, {**snap, "stages": self._stages, "alerts": list(self.feed.alerts)})

    async def _task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        try:
            subjects.status_task(task_id)
        except InvalidField as err:
            return _json(400, {"ok": False, "error": str(err)})
        record = await self.reader.task(task_id)
        return _json(404 if record.get("ok") is False else 200, record)

    async def _metrics(self, _request: web.Request) -> web.Response:
        await self.reader.snapshot()
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue = self.feed.attach()
        try:
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item == CLOSED:
                    break
                await response.write(f"data: {item}\n\n".encode())
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self.feed.detach(queue)
        return response


def _json(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers=SECURITY_HEADERS,
    )
