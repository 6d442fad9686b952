"""TelegramClient against the fake Bot API, and the Notifier on a real nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus
from bus.effects import Effect, Ledger
from bus.messages import Alert
from conveyor.clock import FakeClock
from conveyor.config import TelegramConfig
from conveyor.errors import RemoteError
from gateways.http import HttpOptions, no_jitter
from gateways.telegram import (
    Notifier,
    NotifierStatus,
    Telegram,
    TelegramClient,
    alert_key,
    consume_alerts,
    format_alert,
    level_rank,
)
from tests.fakes.telegram import FakeTelegram
from tests.harness import wait_until

TOKEN = "123456:test-token-secret"
CHAT = "-100200300"


class Sleeps:
    """An injected sleep: records each wait, returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram(TOKEN) as fake:
        yield fake


def config(fake: FakeTelegram, **changes: Any) -> TelegramConfig:
    fields: dict[str, Any] = {
        "enabled": True,
        "bot_token": TOKEN,
        "chat_id": CHAT,
        "api_url": fake.url,
        "timeout_s": 2.0,
        "max_retries": 3,
        **changes,
    }
    return TelegramConfig(**fields)


def send(cfg: TelegramConfig, text: str, sleep: Sleeps | None = None) -> int:
    client = TelegramClient(cfg, http=HttpOptions(sleep=sleep or Sleeps(), jitter=no_jitter))
    try:
        return client.send(text)
    finally:
        client.close()


# --- the client ------------------------------------------------------------------------------


def test_a_message_is_sent_to_the_chat(telegram: FakeTelegram) -> None:
    assert send(config(telegram), "hello") == 1
    assert [(m["chat"]["id"], m["text"]) for m in telegram.messages] == [(CHAT, "hello")]


def test_a_429_waits_retry_after_then_sends(telegram: FakeTelegram) -> None:
    telegram.rate_limit_next(1)
    sleeps = Sleeps()
    send(config(telegram), "after the limit", sleeps)
    assert sleeps.waits == [15.0]
    assert telegram.texts() == ["after the limit"]
    assert telegram.requests == 2


def test_a_long_retry_after_is_capped(telegram: FakeTelegram) -> None:
    telegram.rate_limit_next(1, retry_after=3600)
    sleeps = Sleeps()
    send(config(telegram), "x", sleeps)
    assert sleeps.waits == [60.0]


def test_rate_limited_past_the_retries_is_a_retryable_error(telegram: FakeTelegram) -> None:
    telegram.rate_limit_next(5)
    with pytest.raises(RemoteError) as err:
        send(config(telegram, max_retries=2), "x")
    assert (err.value.status, err.value.retryable) == (429, True)
    assert telegram.messages == []


def test_a_5xx_is_retried_with_back_off(telegram: FakeTelegram) -> None:
    telegram.fail_next(502, count=2)
    sleeps = Sleeps()
    send(config(telegram), "x", sleeps)
    assert sleeps.waits == [0.5, 1.0]
    assert telegram.texts() == ["x"]


def test_a_wrong_token_is_a_permanent_error_that_never_shows_the_token(
    telegram: FakeTelegram,
) -> None:
    with pytest.raises(RemoteError) as err:
        send(config(telegram, bot_token="999:wrong-secret"), "x")
    assert (err.value.status, err.value.retryable) == (401, False)
    assert "wrong-secret" not in str(err.value)
    assert "Unauthorized" in str(err.value)


def test_a_request_that_hangs_is_a_retryable_timeout(telegram: FakeTelegram) -> None:
    telegram.hang_next(2)
    with pytest.raises(RemoteError, match="timed out") as err:
        send(config(telegram, timeout_s=0.3, max_retries=1), "x")
    assert err.value.retryable
    assert TOKEN not in str(err.value)


def test_alerts_format_as_one_line() -> None:
    alert = Alert(level="error", text="merge failed:\nconflict", task_id="DEMO-7")
    assert format_alert(alert) == "[ERROR] DEMO-7: merge failed: conflict"
    assert format_alert(Alert(level="info", text="hi")) == "[INFO] hi"


def test_levels_order_from_debug_to_critical() -> None:
    ranks = [level_rank(x) for x in ("debug", "info", "warning", "error", "critical")]
    assert ranks == sorted(ranks)
    assert level_rank("WARNING") == level_rank("warning")
    assert level_rank("strange") == level_rank("warning")


# --- the Notifier on a real nats-server ------------------------------------------------------


class Node:
    """A bus, a ledger, a Telegram sender and a Notifier fed by a durable consumer."""

    def __init__(self, nats_url: str, cfg: TelegramConfig, durable: str) -> None:
        self.bus = Bus.connect(nats_url)
        self.bus.setup()
        self.ledger = Ledger(self.bus.store(subjects.BUCKET_EFFECTS, Effect), FakeClock(), "t")
        self.sleeps = Sleeps()
        self.sender = Telegram(cfg, http=HttpOptions(sleep=self.sleeps, jitter=no_jitter))
        self.ref = Notifier.start(self.sender.send, self.ledger, cfg, retry_delay_s=0.2)
        if durable == subjects.CONSUMER_NOTIFIER:
            consume_alerts(self.bus, self.ref)
        else:
            self.bus.consume(
                subjects.STREAM_NOTIFY,
                durable,
                [subjects.ALERTS],
                msgspec.json.Decoder(Alert),
                self.ref.tell,
            )

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.ref.ask(NotifierStatus(), timeout=10)
        return result

    def handled(self) -> int:
        s = self.status()
        return int(s["sent"] + s["skipped"] + s["filtered"] + s["dropped"])

    def publish(self, alert: Alert, msg_id: str) -> None:
        self.bus.publish(subjects.ALERTS, alert, msg_id=msg_id)

    def close(self) -> None:
        self.bus.close()
        self.ref.stop()
        self.sender.close()


@pytest.fixture
def nodes(nats_url: str) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.close()


def test_notifier_sends_each_alert_once_and_filters_by_level(
    nats_url: str, telegram: FakeTelegram, nodes: list[Node]
) -> None:
    # Given a Notifier that sends warnings and worse
    cfg = config(telegram, min_level="warning")
    node = Node(nats_url, cfg, subjects.CONSUMER_NOTIFIER)
    nodes.append(node)

    # When four alerts are published, one of them twice with the same msg id
    node.publish(Alert(level="info", text="DEMO-1 is done", task_id="DEMO-1"), "a1")
    node.publish(Alert(level="warning", text="stuck", task_id="DEMO-2"), "a2")
    node.publish(Alert(level="error", text="merge failed", task_id="DEMO-3"), "a3")
    node.publish(Alert(level="error", text="merge failed", task_id="DEMO-3"), "a3")
    node.publish(Alert(level="critical", text="lease lost"), "a4")
    wait_until(lambda: node.handled() == 4, what="four alerts handled")

    # Then the info alert is filtered and the rest are sent once each
    assert telegram.texts() == [
        "[WARNING] DEMO-2: stuck",
        "[ERROR] DEMO-3: merge failed",
        "[CRITICAL] lease lost",
    ]
    assert node.status()["filtered"] == 1


def test_a_replay_after_a_restart_sends_nothing_again(
    nats_url: str, telegram: FakeTelegram, nodes: list[Node]
) -> None:
    # Given three alerts sent by a first Notifier
    cfg = config(telegram, min_level="info")
    first = Node(nats_url, cfg, subjects.CONSUMER_NOTIFIER)
    nodes.append(first)
    for n in range(3):
        first.publish(Alert(level="warning", text=f"alert {n}"), f"r{n}")
    wait_until(lambda: len(telegram.messages) == 3, what="three messages")

    # When the Notifier is restarted and every alert is delivered again
    # (a fresh durable consumer replays the stream from the start)
    first.close()
    nodes.remove(first)
    second = Node(nats_url, cfg, "notifier-replay")
    nodes.append(second)
    wait_until(lambda: second.handled() == 3, what="the replay handled")

    # Then nothing is sent twice
    assert second.status()["skipped"] == 3
    assert len(telegram.messages) == 3


def test_a_retryable_failure_is_redelivered_and_sent_once(
    nats_url: str, telegram: FakeTelegram, nodes: list[Node]
) -> None:
    # Given Telegram answers 502 to the first two attempts and no client retries
    telegram.fail_next(502, count=2)
    node = Node(nats_url, config(telegram, max_retries=0), subjects.CONSUMER_NOTIFIER)
    nodes.append(node)

    # When an alert is published
    node.publish(Alert(level="error", text="boom", task_id="DEMO-9"), "f1")

    # Then JetStream redelivers it until it is sent, exactly once
    wait_until(lambda: len(telegram.messages) == 1, what="the alert sent")
    wait_until(lambda: node.status()["sent"] == 1, what="the sent count")
    assert node.status()["retried"] == 2
    assert telegram.texts() == ["[ERROR] DEMO-9: boom"]
    entry = node.ledger._store.get(alert_key("f1"))
    assert entry is not None
    assert entry.value.status == "done"


def test_a_429_inside_the_notifier_waits_and_sends_once(
    nats_url: str, telegram: FakeTelegram, nodes: list[Node]
) -> None:
    telegram.rate_limit_next(1)
    node = Node(nats_url, config(telegram), subjects.CONSUMER_NOTIFIER)
    nodes.append(node)
    node.publish(Alert(level="warning", text="slow down"), "s1")
    wait_until(lambda: node.status()["sent"] == 1, what="the alert sent")
    assert node.sleeps.waits == [15.0]
    assert telegram.texts() == ["[WARNING] slow down"]


def test_a_permanent_failure_is_logged_and_acked_not_retried(
    nats_url: str, telegram: FakeTelegram, nodes: list[Node]
) -> None:
    # Given a Notifier with a revoked token
    node = Node(nats_url, config(telegram, bot_token="1:revoked"), subjects.CONSUMER_NOTIFIER)
    nodes.append(node)

    # When two alerts arrive
    node.publish(Alert(level="error", text="one"), "p1")
    node.publish(Alert(level="error", text="two"), "p2")

    # Then both are dropped (acked), and the stream is not blocked
    wait_until(lambda: node.status()["dropped"] == 2, what="both dropped")
    assert telegram.messages == []
    assert "401" in node.status()["last_error"]
    assert telegram.requests == 2
