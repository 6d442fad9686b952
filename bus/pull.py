"""A durable pull consumer's messages handed over as they land, many to one request.

nats-py's `fetch` holds what a batch request brings until the batch fills or the
request expires, so the bus used to fetch one message per request: for every
message a `CONSUMER.MSG.NEXT` request (an API call the server answers), a reply
inbox wait with its own timer, and the loop's work around both. Here one pull
request for up to `BATCH` messages stays open for `EXPIRES_S`, each message is
handed over the moment it lands, and the next request goes out as soon as the
server ends the last one (its batch delivered, expired, or cut short by a leader
change) or when it has not been heard of by its expiry (lost with a reconnect).

A consumer that takes no more than it has room for (the Launcher's slots) keeps
fetching one at a time: a batch would take orders another launcher could run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from conveyor.logs import get_logger

log = get_logger(__name__)

BATCH = 64
"""Messages one pull request may bring; they are handed over one by one as they land."""
EXPIRES_S = 1.0
"""How long a pull request stays open: an idle consumer asks again this often."""
GRACE_S = 0.5
"""How long past its expiry a request's end may take to arrive before it counts as lost."""
RETRY_S = 0.5
"""Pause after a request the server refused (not an expiry, a heartbeat or a conflict)."""
STATUS = "Status"
HEARTBEAT = "100"
ENDED = frozenset({"404", "408", "409"})
"""No messages, expired, conflict (leader change, consumer changed): ask again at once."""


def next_subject(stream: str, durable: str, api_prefix: str = "$JS.API") -> str:
    """The subject a pull request for `durable` on `stream` is published to."""
    return f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"


def request_body(batch: int = BATCH, expires_s: float = EXPIRES_S) -> bytes:
    """A pull request: up to `batch` messages, open for `expires_s` (in nanoseconds)."""
    return json.dumps({"batch": batch, "expires": int(expires_s * 1_000_000_000)}).encode()


class Puller:
    """Keeps one pull request open on a durable consumer and hands each message to `deliver`.

    `stopping` is asked before every request and every message: once it is true no
    message is handed over (it is redelivered after `ack_wait`, to whoever consumes
    next).
    """

    def __init__(
        self,
        nc: Client,
        subject: str,
        deliver: Callable[[Msg], None],
        stopping: Callable[[], bool],
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._deliver = deliver
        self._stopping = stopping
        self._ended = asyncio.Event()
        self._left = 0
        self._refused = ""

    async def run(self) -> None:
        """Ask, wait for the request to end, ask again; until cancelled or stopping."""
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=self._on_msg)
        body = request_body()
        try:
            while not self._stopping():
                self._ended.clear()
                self._left, self._refused = BATCH, ""
                try:
                    await self._nc.publish(self._subject, body, reply=inbox)
                except Exception as err:  # noqa: BLE001 - a broken request must not end consumption
                    log.warning("bus.fetch_failed", subject=self._subject, error=repr(err))
                    await asyncio.sleep(RETRY_S)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ended.wait(), EXPIRES_S + GRACE_S)
                if self._refused and not self._stopping():
                    log.warning("bus.fetch_failed", subject=self._subject, error=self._refused)
                    await asyncio.sleep(RETRY_S)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is not None:
            if status == HEARTBEAT:
                return
            if status not in ENDED:
                description = (msg.headers or {}).get("Description", "")
                self._refused = f"{status} {description}".strip()
            self._ended.set()
            return
        self._left -= 1
        if self._left <= 0:
            self._ended.set()
        if not self._stopping():
            self._deliver(msg)
