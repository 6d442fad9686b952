"""A small synchronous client of a running Conveyor, used by the CLI and `conveyor run`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import nats.js.api as js_api

from bus import subjects
from bus.bridge import Bus
from bus.messages import Alert, BusMessage, StageChanged
from conveyor.clock import Clock, SystemClock
from conveyor.config import Config
from conveyor.errors import BusUnavailable, ConveyorError

URL_FILE = "nats.url"


class PageRefused(ConveyorError):
    """`conveyor.status.tasks` refused a request (a bad filter, limit or cursor)."""


def discover_url(
    cfg: Config, explicit: str | None = None, *, wait_s: float = 0.0, clock: Clock | None = None
) -> str:
    """Find NATS: --nats-url, then config/env, then NATS_URL, then the url `conveyor up` wrote."""
    if explicit:
        return explicit
    if cfg.nats.url:
        return cfg.nats.url
    if os.environ.get("NATS_URL"):
        return os.environ["NATS_URL"]
    clock = clock or SystemClock()
    path = cfg.data_path / URL_FILE
    deadline = clock.monotonic() + wait_s
    while True:
        if path.exists():
            return path.read_text().strip()
        if clock.monotonic() >= deadline:
            raise BusUnavailable(
                f"no NATS url: set nats.url, pass --nats-url, or start `conveyor up` "
                f"(it writes {path})"
            )
        clock.sleep(0.2)


class Client:
    """Requests and subscriptions against a running Conveyor."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.bus = Bus.connect(
            url,
            name=f"conveyor-cli-{os.getpid()}",
            connect_timeout_s=min(timeout_s, 5.0),
            request_timeout_s=timeout_s,
        )

    def request(self, subject: str, body: dict[str, Any] | None = None) -> Any:
        """Send a JSON request and decode the JSON answer."""
        payload = json.dumps(body).encode() if body is not None else b""
        data = self.bus.request(subject, payload, timeout_s=self.timeout_s)
        try:
            return json.loads(data)
        except ValueError as err:
            raise ConveyorError(f"{subject} answered with non-JSON: {data[:200]!r}") from err

    def pages(self, **query: Any) -> Iterator[dict[str, Any]]:
        """Every page of `conveyor.status.tasks` for `query` (state, stage, repo, limit)."""
        cursor = ""
        while True:
            page = self.request(subjects.STATUS_TASKS, {**query, "cursor": cursor})
            if not isinstance(page, dict) or page.get("ok") is False or "tasks" not in page:
                error = page.get("error") if isinstance(page, dict) else page
                raise PageRefused(f"{subjects.STATUS_TASKS} refused: {error}")
            yield page
            cursor = page.get("next") or ""
            if not cursor:
                return

    def command(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send a `conveyor.cmd.<name>` command; the reply has `ok` and maybe `error`."""
        reply = self.request(subjects.COMMANDS[name], body)
        if not isinstance(reply, dict):
            raise ConveyorError(f"unexpected reply to {name}: {reply!r}")
        return reply

    def follow(
        self, on_message: Callable[[StageChanged | Alert], None], *, history: bool = False
    ) -> None:
        """Call `on_message` for stage changes and alerts (stored ones first with `history`)."""
        decoder: msgspec.json.Decoder[BusMessage] = msgspec.json.Decoder(BusMessage)

        async def _cb(msg: Any) -> None:
            try:
                body = decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return
            if isinstance(body, StageChanged | Alert):
                on_message(body)

        async def _subscribe() -> None:
            policy = js_api.DeliverPolicy.ALL if history else js_api.DeliverPolicy.NEW
            for subject in (subjects.STAGE_ALL, subjects.ALERTS):
                await self.bus.js.subscribe(
                    subject,
                    stream=subjects.STREAM_NOTIFY,
                    cb=_cb,
                    ordered_consumer=True,
                    deliver_policy=policy,
                )

        self.bus.call(_subscribe())

    def close(self) -> None:
        """Close the connection."""
        self.bus.close()
