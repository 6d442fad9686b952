"""The merge step's lease client: waits for a merge going on, never loses a release."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, cast

from actors import merge_wait_policy
from actors.jobs.context import JobContext
from actors.jobs.lease_wake import LeaseWaker
from actors.jobs.leases import patiently
from actors.jobs.merge_gate import MergeLease
from bus.messages import LeaseAcquire, LeaseFreed, LeaseRelease, LeaseReply
from conveyor import config
from conveyor.clock import FakeClock

NAME = "merge.demo"
BUSY = LeaseReply(granted=False, reason=merge_wait_policy.refusal("held by DEMO-2", merging=True))


def _ctx(answer: LeaseReply, kept: list[LeaseRelease]) -> JobContext:
    asked: list[Any] = []

    def _lease(subject: str, message: Any) -> LeaseReply:
        asked.append((subject, message))
        return answer

    return cast(JobContext, SimpleNamespace(lease=_lease, release_later=kept.append))


def test_an_unanswered_release_goes_to_the_release_stream_naming_its_revision():
    kept: list[LeaseRelease] = []
    held = MergeLease(name="merge.demo", task_id="DEMO-1", revision=7)
    held.release(_ctx(LeaseReply(granted=False, reason="lease keeper unreachable"), kept))
    assert kept == [LeaseRelease(name="merge.demo", task_id="DEMO-1", revision=7)]


def test_an_answered_release_is_not_sent_again():
    kept: list[LeaseRelease] = []
    held = MergeLease(name="merge.demo", task_id="DEMO-1", revision=7)
    held.release(_ctx(LeaseReply(granted=True, reason="released"), kept))
    assert kept == []


class _Keeper:
    """Refuses the merge lease (a merge going on) until told to free it."""

    def __init__(self, waker: LeaseWaker) -> None:
        self.waker, self.free, self.asked = waker, False, 0

    def __call__(self, subject: str, message: Any) -> LeaseReply:
        self.asked += 1
        return LeaseReply(granted=True, revision=3) if self.free else BUSY


def _waiting(keeper: _Keeper, cancelled: threading.Event) -> tuple[JobContext, list[LeaseReply]]:
    clock = FakeClock()
    ctx = SimpleNamespace(
        lease=keeper,
        lease_waker=keeper.waker,
        clock=clock,  # never moves: only a wake-up or a cancel ends the wait
        cfg=config.load(env={}),
        abandoned=threading.Event(),
        cancelled=cancelled,
    )
    got: list[LeaseReply] = []

    def _ask() -> None:
        got.append(
            patiently(
                cast(JobContext, ctx),
                "DEMO-1.merge",
                NAME,
                ("acquire", LeaseAcquire(name=NAME, holder=cast(Any, None))),
                until=clock.now() + 3600.0,
                wait_if_refused=merge_wait_policy.waits_in_run,
                cancellable=True,
            )
        )

    threading.Thread(target=_ask, daemon=True).start()
    return cast(JobContext, ctx), got


def _until(check: Any) -> None:
    done = threading.Event()
    for _ in range(100):
        if check():
            return
        done.wait(0.05)
    raise AssertionError("condition not met")


def test_a_merge_waiting_for_a_merge_going_on_is_granted_when_it_is_freed():
    keeper = _Keeper(LeaseWaker(FakeClock()))
    _, got = _waiting(keeper, threading.Event())
    _until(lambda: keeper.asked >= 1)
    keeper.free = True
    keeper.waker.notify(LeaseFreed(name=NAME))
    _until(lambda: bool(got))
    assert got[0].granted
    assert keeper.asked == 2


def test_a_cancelled_merge_stops_waiting_and_is_refused():
    keeper = _Keeper(LeaseWaker(FakeClock()))
    cancelled = threading.Event()
    _, got = _waiting(keeper, cancelled)
    _until(lambda: keeper.asked >= 1)
    cancelled.set()
    keeper.waker.notify(LeaseFreed())  # its next try (here: the keeper's return)
    _until(lambda: bool(got))
    assert not got[0].granted
