"""Runs waiting for a lease wake on the keeper's word, not on a fixed poll."""

from __future__ import annotations

import threading

from actors.jobs import leases
from actors.jobs.lease_wake import LeaseWaker
from bus.messages import LeaseFreed
from conveyor.clock import FakeClock
from conveyor.errors import BusUnavailable

NAME = "task.DEMO-1"


def test_a_freed_lease_wakes_its_waiter_at_once():
    waker = LeaseWaker(FakeClock())  # the fake clock never moves: only a wake-up ends it
    mark = waker.mark(NAME)
    waker.notify(LeaseFreed(name=NAME))
    assert waker.wait(NAME, mark, 3600.0, threading.Event()) is False


def test_the_keepers_return_wakes_every_waiter():
    waker = LeaseWaker(FakeClock())
    marks = {name: waker.mark(name) for name in (NAME, "task.DEMO-2")}
    waker.notify(LeaseFreed())
    for name, mark in marks.items():
        assert waker.wait(name, mark, 3600.0, threading.Event()) is False


def test_another_leases_release_does_not_wake_and_the_period_still_ends_the_wait():
    clock = FakeClock()
    waker = LeaseWaker(clock)
    mark = waker.mark(NAME)
    waker.notify(LeaseFreed(name="task.DEMO-2"))
    woke = threading.Event()

    def _wait() -> None:
        waker.wait(NAME, mark, 5.0, threading.Event())
        woke.set()

    thread = threading.Thread(target=_wait, daemon=True)
    thread.start()
    assert not woke.wait(0.3)
    clock.advance(5.0)  # the backstop period passes
    assert woke.wait(5.0)


def test_a_wake_up_between_the_mark_and_the_wait_is_not_lost():
    waker = LeaseWaker(FakeClock())
    mark = waker.mark(NAME)
    waker.notify(LeaseFreed(name=NAME))  # lands while the refused request was on its way
    assert waker.wait(NAME, mark, 3600.0, threading.Event()) is False
    assert waker.mark(NAME) != mark


def test_a_stopping_launcher_ends_the_wait_as_abandoned():
    waker = LeaseWaker(FakeClock())
    abandoned = threading.Event()
    abandoned.set()
    assert waker.wait(NAME, waker.mark(NAME), 3600.0, abandoned) is True


class _DeadKeeperBus:
    """A bus whose lease request went to a keeper that died: only giving up ends it."""

    request_timeout_s = 120.0

    def request(self, subject, payload, timeout_s=None, *, give_up=None):
        for _ in range(400):  # 20 s: the test's deadline
            if give_up():
                raise BusUnavailable(f"gave up on {subject}")
            threading.Event().wait(0.05)
        raise AssertionError("the request was never given up")


def test_a_request_to_a_dead_keeper_is_given_up_once_its_successor_announces_itself():
    waker = LeaseWaker()
    threading.Timer(0.2, waker.notify, args=(LeaseFreed(),)).start()  # the new keeper is back

    reply = leases.request(_DeadKeeperBus(), "conveyor.leases.acquire", LeaseFreed(), waker)

    assert isinstance(reply, leases.Unanswered)
    assert not reply.granted
    assert "gave up" in reply.reason
