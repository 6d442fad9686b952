"""The lease endpoints give a verdict only while their process is the active control.

A refusal is final to a holder checking its lease: its run ends. A keeper that
cannot be sure its memory is current (its process's leader lease may have run out,
a paused active just woken) or cannot be asked (stopped, restarting) answers with a
503 service error instead, which the holder takes as no answer and asks again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.jobs import leases
from actors.lease_policy import task_lease
from actors.queue_policy import RUNNING
from bus import subjects
from bus.bridge import Bus
from bus.messages import LeaseAcquire, LeaseRenew, LeaseReply, encode
from conveyor.app import wiring
from conveyor.app.service import ControlService
from conveyor.clock import FakeClock
from conveyor.config import Config
from conveyor.errors import BusUnavailable, ConveyorError, Fenced
from tests.actors.conftest import Stub
from tests.actors.test_host_leases import put_job
from tests.actors.test_hot_jobs import JOB, live_holder

NAME = task_lease("DEMO-1")


class Fence:
    """A leader fence the test runs out by hand, as a pause past the lease would."""

    def __init__(self) -> None:
        self.held = True

    def __call__(self) -> dict[str, str]:
        if not self.held:
            raise Fenced("leader lease of epoch 1 may have run out")
        return {}


@pytest.fixture
def served(
    bus: Bus, clock: FakeClock, cfg: Config, nats_url: str
) -> Iterator[tuple[Bus, Fence, pykka.ActorRef[Any]]]:
    """A control's lease endpoints on a fenced connection; a launcher's connection asking."""
    put_job(bus, JOB, status=RUNNING, attempts=1)
    fence = Fence()
    bus.write_stamp = fence
    ctx = wiring.Context(cfg, bus, clock)
    keeper = wiring.start_actor(wiring.SPECS["lease_keeper"], ctx)
    other = Stub.start()
    ControlService(
        bus, other, other, other, keeper, version="0.0.1", request_timeout_s=5.0, statuses={}
    ).register()
    asker = Bus.connect(nats_url, name="launcher", request_timeout_s=5.0)
    try:
        yield asker, fence, keeper
    finally:
        asker.close()
        for ref in (keeper, other):
            if ref.is_alive():
                ref.stop(block=True, timeout=10)


def _ask(asker: Bus, subject: str, message: Any) -> LeaseReply:
    return leases.request(asker, subject, message)


def test_a_keeper_whose_leader_lease_may_have_run_out_gives_no_verdict(
    served: tuple[Bus, Fence, pykka.ActorRef[Any]], bus: Bus
) -> None:
    # Given a transition lease granted while the process held its leader lease
    asker, fence, _ = served
    granted = _ask(asker, subjects.LEASE_ACQUIRE, LeaseAcquire(name=NAME, holder=live_holder(1)))
    assert granted.granted
    stored = bus.store(subjects.BUCKET_LEASES, Any).get(NAME)
    assert stored is not None

    # When the process can no longer be sure it is the active control
    fence.held = False

    # Then a renewal and an acquire get no answer, not a refusal, and nothing changes
    renew = LeaseRenew(name=NAME, task_id="DEMO-1", revision=granted.revision)
    with pytest.raises(BusUnavailable, match=r"503.*not the active control"):
        asker.request(subjects.LEASE_RENEW, encode(renew))
    unanswered = _ask(asker, subjects.LEASE_RENEW, renew)
    assert isinstance(unanswered, leases.Unanswered)
    again = _ask(asker, subjects.LEASE_ACQUIRE, LeaseAcquire(name=NAME, holder=live_holder(1)))
    assert isinstance(again, leases.Unanswered)
    assert bus.store(subjects.BUCKET_LEASES, Any).get(NAME) == stored

    # And once it holds the lease again, the same renewal is granted
    fence.held = True
    assert _ask(asker, subjects.LEASE_RENEW, renew).granted


def test_a_stopped_keeper_gives_no_verdict_so_a_renewal_is_asked_again(
    served: tuple[Bus, Fence, pykka.ActorRef[Any]],
) -> None:
    asker, _, keeper = served
    granted = _ask(asker, subjects.LEASE_ACQUIRE, LeaseAcquire(name=NAME, holder=live_holder(1)))
    keeper.stop(block=True, timeout=10)
    renew = LeaseRenew(name=NAME, task_id="DEMO-1", revision=granted.revision)
    with pytest.raises(BusUnavailable, match=r"503.*lease keeper unavailable"):
        asker.request(subjects.LEASE_RENEW, encode(renew))
    assert isinstance(_ask(asker, subjects.LEASE_RENEW, renew), leases.Unanswered)


def test_a_handler_that_fails_is_an_error_naming_the_subject_not_a_blank_answer(
    bus: Bus,
) -> None:
    def _broken(_subject: str, _data: bytes) -> bytes:
        raise RuntimeError("boom")

    bus.add_service("broken", "0.0.1", "fails", [("broken", "test.broken", _broken)])
    with pytest.raises(ConveyorError, match=r"test\.broken answered 500: boom") as err:
        bus.request("test.broken", b"")
    assert not isinstance(err.value, BusUnavailable)
