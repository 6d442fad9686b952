"""Alerts to a Telegram chat: an async Bot API client and the Notifier actor.

The bot token is part of every request URL, so no URL, request or httpx error
text is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pykka

from bus import subjects
from bus.bridge import Bus, Delivery, LoopThread
from bus.effects import Ledger, effect_key
from bus.messages import Alert
from conveyor.config import TelegramConfig
from conveyor.errors import BusUnavailable, RemoteError
from conveyor.logs import get_logger

log = get_logger(__name__)

# httpx logs every request URL at INFO, and a Bot API URL carries the token.
logging.getLogger("httpx").setLevel(logging.WARNING)

SERVICE = "telegram"
RETRY_AFTER_MAX_S = 60.0
"""Longest wait a 429 may impose; Telegram's `retry_after` can be far longer."""
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
MAX_TEXT = 4096
"""Telegram's limit on one message's text."""

LEVELS = ("debug", "info", "warning", "error", "critical")
"""Alert levels, least to most severe."""

Sleep = Callable[[float], Awaitable[None]]


def level_rank(level: str) -> int:
    """Position of `level` in LEVELS; an unknown level counts as a warning, never dropped."""
    try:
        return LEVELS.index(level.lower())
    except ValueError:
        return LEVELS.index("warning")


def format_alert(alert: Alert) -> str:
    """One line: `[LEVEL] task: text` (no task part when the alert names none)."""
    text = " ".join(alert.text.split())
    line = (
        f"[{alert.level.upper()}] {alert.task_id}: {text}"
        if alert.task_id
        else (f"[{alert.level.upper()}] {text}")
    )
    return line[:MAX_TEXT]


class _Reply(msgspec.Struct, frozen=True, kw_only=True):
    """Every Bot API answer: `ok`, then `result` or an error."""

    ok: bool
    result: Any = None
    error_code: int | None = None
    description: str = ""
    parameters: dict[str, Any] | None = None


def _backoff_s(attempt: int) -> float:
    return float(min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S))


class TelegramClient:
    """Async client for `sendMessage` to one chat; one instance per event loop."""

    def __init__(
        self,
        cfg: TelegramConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cfg = cfg
        self._sleep = sleep
        self._url = f"{cfg.api_url.rstrip('/')}/bot{cfg.bot_token}/sendMessage"
        self._http = httpx.AsyncClient(timeout=cfg.timeout_s, transport=transport)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def send(self, text: str, *, disable_notification: bool = False) -> int:
        """Send `text` to the chat; return Telegram's message id.

        429 waits `retry_after` (capped); 5xx, timeouts and lost connections back
        off; both up to `max_retries` times. Refusals raise at once.
        """
        body: dict[str, Any] = {"chat_id": self._cfg.chat_id, "text": text[:MAX_TEXT]}
        if disable_notification:
            body["disable_notification"] = True
        attempts = 1 + self._cfg.max_retries
        for attempt in range(attempts):
            try:
                return await self._attempt(body, attempt)
            except _Retry as retry:
                if attempt + 1 == attempts:
                    raise retry.error from None
                log.info(
                    "telegram.retrying",
                    attempt=attempt + 1,
                    delay_s=retry.wait_s,
                    reason=retry.error.reason,
                )
                await self._sleep(retry.wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, body: dict[str, Any], attempt: int) -> int:
        """One POST: the message id, `_Retry`, or a RemoteError that retrying cannot fix."""
        try:
            response = await self._http.post(self._url, json=body)
        except httpx.TimeoutException:
            # No `from err`: httpx's message may name the URL, and with it the token.
            raise _Retry(_error("timed out", None, True), _backoff_s(attempt)) from None
        except httpx.TransportError as err:
            reason = f"no answer ({type(err).__name__})"
            raise _Retry(_error(reason, None, True), _backoff_s(attempt)) from None
        status = response.status_code
        try:
            reply = msgspec.json.decode(response.content, type=_Reply)
        except (msgspec.DecodeError, msgspec.ValidationError):
            if status >= 500:
                error = _error(f"server error {status}", status, True)
                raise _Retry(error, _backoff_s(attempt)) from None
            raise _error(f"unexpected answer (HTTP {status})", status, False) from None
        if reply.ok and status < 300:
            message_id = reply.result.get("message_id") if isinstance(reply.result, dict) else None
            return message_id if isinstance(message_id, int) else 0
        code = reply.error_code or status
        reason = f"{code}: {reply.description[:200]}" if reply.description else f"HTTP {code}"
        if code == 429:
            retry_after = (reply.parameters or {}).get("retry_after")
            wait = (
                float(retry_after)
                if isinstance(retry_after, int | float) and retry_after >= 0
                else _backoff_s(attempt)
            )
            raise _Retry(_error(reason, code, True), min(wait, RETRY_AFTER_MAX_S))
        if code >= 500:
            raise _Retry(_error(reason, code, True), _backoff_s(attempt))
        raise _error(reason, code, False)


class _Retry(Exception):
    """Internal: the same request may be sent again after `wait_s`."""

    def __init__(self, error: RemoteError, wait_s: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.wait_s = wait_s


def _error(reason: str, status: int | None, retryable: bool) -> RemoteError:
    return RemoteError(SERVICE, "sendMessage", reason, status=status, retryable=retryable)


class Telegram:
    """Sync sender over `TelegramClient` on an asyncio loop thread (for actors)."""

    def __init__(
        self,
        cfg: TelegramConfig,
        loop: LoopThread | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._own_loop = loop is None
        self._loop = loop if loop is not None else LoopThread(name="telegram-loop")
        self.client = TelegramClient(cfg, sleep=sleep, transport=transport)
        self._timeout_s = (cfg.timeout_s + RETRY_AFTER_MAX_S) * (cfg.max_retries + 1) + 30.0

    def send(self, text: str, *, disable_notification: bool = False) -> int:
        """Send `text`; return the message id."""
        return self._loop.call(
            self.client.send(text, disable_notification=disable_notification),
            timeout_s=self._timeout_s,
        )

    def close(self) -> None:
        """Close the HTTP client, and the loop thread if this sender made it."""
        try:
            self._loop.call(self.client.aclose(), timeout_s=10.0)
        finally:
            if self._own_loop:
                self._loop.stop()


# --- the Notifier actor -------------------------------------------------------------------


class NotifierStatus(msgspec.Struct, frozen=True):
    """Status endpoint -> Notifier (ask): counts and the last failure."""


RETRY_DELAY_S = 5.0
"""Redelivery delay after a retryable failure (Telegram down, rate limited, bus hiccup)."""
MAX_DELIVERIES = 20
"""A message failing this often for an unexpected reason is dropped, not retried forever."""


def alert_key(delivery_id: str) -> str:
    """Effect-ledger key of one alert's Telegram message (KV-safe whatever the msg id holds)."""
    return effect_key("telegram", hashlib.sha256(delivery_id.encode()).hexdigest()[:32])


class Notifier(pykka.ThreadingActor):
    """Sole sender of alerts to Telegram; consumes `conveyor.alerts` (durable `notifier`).

    Each alert is sent at most once per delivery id (the `Nats-Msg-Id`, else the
    stream sequence), recorded in the effect ledger before the ack, so a
    redelivery or a restart never sends it again. An interrupted send (recorded
    started, never done) is sent again: a rare duplicate beats a lost alert.
    """

    def __init__(
        self,
        send: Callable[[str], object],
        effects: Ledger,
        cfg: TelegramConfig,
        *,
        retry_delay_s: float = RETRY_DELAY_S,
    ) -> None:
        super().__init__()
        self._send, self._effects, self._cfg = send, effects, cfg
        self._retry_delay_s = retry_delay_s
        self._min_rank = level_rank(cfg.min_level)
        self._counts = {"sent": 0, "skipped": 0, "filtered": 0, "retried": 0, "dropped": 0}
        self._last_error = ""

    def on_receive(self, message: Any) -> Any:
        match message:
            case Delivery(body=Alert() as alert):
                self._handle(alert, message)
            case NotifierStatus():
                return self._status()
        return None

    def _handle(self, alert: Alert, delivery: Delivery[Any]) -> None:
        if level_rank(alert.level) < self._min_rank:
            self._counts["filtered"] += 1
            delivery.ack()
            return
        key = alert_key(delivery.msg_id)
        sent = False

        def _do() -> str:
            nonlocal sent
            message_id = self._send(format_alert(alert))
            sent = True
            return str(message_id)

        try:
            self._effects.once(key, _do, lambda: None)
        except RemoteError as err:
            self._refused_or_deferred(err, delivery)
            return
        except BusUnavailable as err:
            self._last_error = str(err)
            self._counts["retried"] += 1
            log.warning("notifier.ledger_unavailable", msg_id=delivery.msg_id, error=str(err))
            delivery.nak(delay_s=self._retry_delay_s)
            return
        except Exception as err:
            # One bad alert must not stop the actor, nor block the stream forever.
            self._last_error = f"{type(err).__name__}: {err}"
            log.exception("notifier.failed", msg_id=delivery.msg_id)
            if delivery.num_delivered >= MAX_DELIVERIES:
                self._counts["dropped"] += 1
                delivery.ack()
            else:
                delivery.nak(delay_s=self._retry_delay_s)
            return
        if sent:
            self._counts["sent"] += 1
            log.info("notifier.sent", msg_id=delivery.msg_id, level=alert.level)
        else:
            self._counts["skipped"] += 1
            log.info("notifier.skipped", msg_id=delivery.msg_id, reason="sent before")
        delivery.ack()

    def _refused_or_deferred(self, err: RemoteError, delivery: Delivery[Any]) -> None:
        self._last_error = str(err)
        if err.retryable:
            self._counts["retried"] += 1
            log.warning("notifier.send_deferred", msg_id=delivery.msg_id, reason=err.reason)
            delivery.nak(delay_s=self._retry_delay_s)
            return
        # A refusal (bad token, unknown chat) will not heal by resending this alert.
        self._counts["dropped"] += 1
        log.error("notifier.send_refused", msg_id=delivery.msg_id, reason=err.reason)
        delivery.ack()

    def _status(self) -> dict[str, Any]:
        return {
            "min_level": self._cfg.min_level,
            **self._counts,
            "last_error": self._last_error,
        }


def consume_alerts(bus: Bus, notifier: pykka.ActorRef[Any]) -> None:
    """Feed the durable `notifier` consumer of `conveyor.alerts` to the Notifier."""
    bus.consume(
        subjects.STREAM_NOTIFY,
        subjects.CONSUMER_NOTIFIER,
        [subjects.ALERTS],
        msgspec.json.Decoder(Alert),
        notifier.tell,
    )
