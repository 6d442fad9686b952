"""TrackerSync when the bus goes away under it (a shutdown, NATS down): a warning, not a fault."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from bus.bridge import Delivery
from bus.messages import Alert
from conveyor.errors import BusUnavailable
from gateways.tracker_sync import TrackerSync


class _Delivery(Delivery[Any]):
    def __init__(self, body: Any) -> None:
        msg = SimpleNamespace(subject="conveyor.alerts", headers={"Nats-Msg-Id": "a:1"})
        super().__init__(bus=None, msg=msg, body=body)  # type: ignore[arg-type]
        self.settled: list[str] = []

    def ack(self) -> None:
        self.settled.append("ack")

    def nak(self, delay_s: float = 1.0) -> None:
        self.settled.append(f"nak {delay_s:g}")


class _Tracker:
    def __init__(self) -> None:
        self.comments: list[str] = []

    def comment(self, work_item_id: str, text: str, *, key: str) -> None:
        self.comments.append(text)


class _ClosedLedger:
    def once(self, *_: Any) -> Any:
        raise BusUnavailable("bus is closed")


def test_a_closed_bus_naks_the_alert_with_a_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
):
    sync = TrackerSync(_Tracker(), ledger=_ClosedLedger())  # type: ignore[arg-type]
    delivery = _Delivery(Alert(level="error", text="boom", task_id="DEMO-1", kind="gate_failed"))
    with caplog.at_level(logging.INFO):
        sync.on_receive(delivery)
    assert delivery.settled == ["nak 5"]
    events = {r.getMessage(): r.levelno for r in caplog.records}
    assert events.get("tracker_sync.bus_unavailable") == logging.WARNING
    assert "tracker_sync.failed" not in events
