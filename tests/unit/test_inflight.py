"""Deliveries a live process holds are kept alive; one held too long is let go."""

from __future__ import annotations

from typing import Any

from bus.inflight import KEEP_ALIVE_FRACTION, InFlight
from conveyor.clock import FakeClock


class _Msg:
    subject = "conveyor.jobs.finished"


def _held(clock: FakeClock) -> tuple[InFlight, Any, Any]:
    inflight = InFlight(5.0, max_hold_s=60.0, clock=clock)
    first, second = _Msg(), _Msg()
    inflight.hold(first)
    inflight.hold(second)
    return inflight, first, second


def test_held_messages_are_reported_until_settled():
    inflight, first, second = _held(FakeClock())
    assert inflight.due() == [first, second]
    inflight.settled(first)
    assert inflight.due() == [second]
    assert inflight.count() == 1


def test_the_keep_alive_beats_several_times_per_ack_wait():
    inflight = InFlight(5.0, max_hold_s=60.0, clock=FakeClock())
    assert inflight.interval_s == 5.0 / KEEP_ALIVE_FRACTION
    assert inflight.interval_s * 3 < inflight.ack_wait_s


def test_a_message_held_past_the_ceiling_is_let_go_for_redelivery():
    clock = FakeClock()
    inflight, _first, _second = _held(clock)
    clock.advance(30.0)
    third = _Msg()
    inflight.hold(third)
    clock.advance(31.0)
    assert inflight.due() == [third]
    assert inflight.count() == 1
