"""Launch slots and the drain: a drained launcher pulls nothing and hands back what it got."""

from __future__ import annotations

import threading
from typing import Any

from actors.launch_slots import Slots, reserving


class _Order:
    def __init__(self) -> None:
        self.naks: list[float] = []

    def nak(self, delay_s: float = 1.0) -> None:
        self.naks.append(delay_s)


def test_a_drained_launcher_has_no_free_slot_until_it_resumes() -> None:
    drain = threading.Event()
    slots = Slots(3, drain)
    slots.reserve()
    assert (slots.free(), slots.draining) == (2, False)
    drain.set()
    assert (slots.free(), slots.draining, slots.used) == (0, True, 1)
    drain.clear()
    assert slots.free() == 2


def test_an_order_fetched_before_the_drain_goes_back_without_a_slot() -> None:
    drain = threading.Event()
    slots = Slots(2, drain)
    told: list[Any] = []
    handle, capacity = reserving(lambda: slots, told.append, lambda: True)
    first, second = _Order(), _Order()

    handle(first)
    drain.set()
    handle(second)

    assert told == [first]
    assert (first.naks, second.naks) == ([], [0.0])
    assert (slots.used, capacity()) == (1, 0)


def test_an_order_for_a_launcher_that_is_down_takes_no_slot() -> None:
    slots = Slots(1)
    told: list[Any] = []
    handle, capacity = reserving(lambda: slots, told.append, lambda: False)
    order = _Order()
    handle(order)
    assert told == [order]
    assert (slots.used, capacity()) == (0, 1)
