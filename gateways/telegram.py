"""Alerts to a Telegram chat: a blocking Bot API client and the Notifier actor.

The bot token is part of every request URL, so no URL, request or httpx error
text is ever logged or put in an error message (`gateways.http` sees to both).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pykka

from bus import subjects
from bus.bridge import Bus, Delivery
from bus.effects import Ledger, effect_key
from bus.messages import Alert
from conveyor import retry
from conveyor.config import TelegramConfig
from conveyor.errors import BusUnavailable, RemoteError
from conveyor.logs import get_logger
from gateways.http import Http, HttpOptions

log = get_logger(__name__)

SERVICE = "telegram"
OPERATION = "sendMessage"
MAX_TEXT = 4096
"""Telegram's limit on one message's text."""

LEVELS = ("debug", "info", "warning", "error", "critical")
"""Alert levels, least to most severe."""


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


class TelegramClient:
    """Blocking client for `sendMessage` to one chat."""

    def __init__(
        self,
        cfg: TelegramConfig,
        *,
        http: HttpOptions | None = None,
    ) -> None:
        self._cfg = cfg
        self._url = f"{cfg.api_url.rstrip('/')}/bot{cfg.bot_token}/sendMessage"
        self._http = Http(
            SERVICE,
            timeout_s=cfg.timeout_s,
            retries=cfg.max_retries,
            describe=_describe,
            wait_hint=_retry_after_hint,
            options=http,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def send(self, text: str, *, disable_notification: bool = False) -> int:
        """Send `text` to the chat; return Telegram's message id.

        429 waits `retry_after` (capped); 5xx, timeouts and lost connections back
        off; both up to `max_retries` times. Refusals raise at once. A send whose
        answer was lost is sent again unread: the Bot API cannot be asked whether
        it landed, and a rare duplicate beats a lost alert.
        """
        body: dict[str, Any] = {"chat_id": self._cfg.chat_id, "text": text[:MAX_TEXT]}
        if disable_notification:
            body["disable_notification"] = True
        response = self._http.request("POST", self._url, OPERATION, json=body)
        status = response.status_code
        reply = _reply(response)
        if reply is None:
            raise _error(f"unexpected answer (HTTP {status})", status, False)
        if reply.ok and status < 300:
            message_id = reply.result.get("message_id") if isinstance(reply.result, dict) else None
            return message_id if isinstance(message_id, int) else 0
        code = reply.error_code or status
        raise _error(_describe(response), code, code == 429 or code >= 500)


def _reply(response: httpx.Response) -> _Reply | None:
    try:
        return msgspec.json.decode(response.content, type=_Reply)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _describe(response: httpx.Response) -> str:
    """`429: Too Many Requests: ...` from the Bot API's answer; the status when it has none."""
    status = response.status_code
    reply = _reply(response)
    if reply is None:
        return f"server error {status}" if status >= 500 else f"HTTP {status}"
    code = reply.error_code or status
    return f"{code}: {reply.description[:200]}" if reply.description else f"HTTP {code}"


def _retry_after_hint(response: httpx.Response, now: float) -> float | None:
    """`Retry-After`, else the Bot API's own `parameters.retry_after` of a 429 body."""
    header = retry.retry_after_s(response.headers.get("Retry-After"), now)
    if header is not None:
        return header
    reply = _reply(response)
    wait = (reply.parameters or {}).get("retry_after") if reply is not None else None
    return float(wait) if isinstance(wait, int | float) and wait >= 0 else None


def _error(reason: str, status: int | None, retryable: bool) -> RemoteError:
    return RemoteError(SERVICE, OPERATION, reason, status=status, retryable=retryable)


Telegram = TelegramClient
"""The sender actors are given; the client is already blocking."""


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
