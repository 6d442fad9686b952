"""The Supervisor on a real nats-server with a fake clock: restarts, health, alerts, fences.

Each test drives `Supervisor.check` by hand after advancing the clock, with actors
whose `on_start` fails a given number of times or that are fenced on demand.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import msgspec
import pykka
import pytest

from actors.owner import Owner
from bus import subjects
from bus.bridge import Bus, Delivery
from bus.messages import Alert
from conveyor.app.supervisor import ACTOR_DOWN, Handle, Supervisor
from conveyor.clock import FakeClock
from conveyor.config import SupervisorConfig
from conveyor.errors import Fenced
from tests.actors.conftest import Captured
from tests.harness import wait_until

CFG = SupervisorConfig(restart_base_s=1.0, restart_max_s=8.0, stable_s=60.0)


class Flaky(Owner):
    """Fails its start-up while `failures` lasts; fenced when told "fence"; else answers."""

    name = "flaky"

    def __init__(
        self, failures: Iterator[bool], incarnations: list[int], got: list[tuple[int, str]]
    ) -> None:
        super().__init__()
        self._fail = next(failures)
        incarnations.append(len(incarnations) + 1)
        self._incarnation = len(incarnations)
        self._got = got

    def on_start(self) -> None:
        if self._fail:
            raise RuntimeError("start-up failed")

    def handle(self, message: Any) -> Any:
        if message == "fence":
            raise Fenced("conveyor_tasks/DEMO-1 moved past revision 3")
        if isinstance(message, Delivery):
            self._got.append((self._incarnation, message.body.text))
            message.ack()
            return None
        return ("pong", self._incarnation)


class Fixture:
    def __init__(self, bus: Bus, failures: int) -> None:
        self.clock = FakeClock()
        self.failures = itertools.chain([True] * failures, itertools.repeat(False))
        self.incarnations: list[int] = []
        self.got: list[tuple[int, str]] = []
        self.alerts = Captured(bus, subjects.ALERTS, Alert)
        self.supervisor = Supervisor(bus, self.clock, CFG)
        self.handle = Handle("flaky", self.start())
        self.supervisor.watch(self.handle, self.start)

    def start(self) -> pykka.ActorRef[Any]:
        return Flaky.start(self.failures, self.incarnations, self.got)

    def wait_dead(self) -> None:
        wait_until(lambda: not self.handle.is_alive(), what="the actor to stop")

    def status(self) -> dict[str, Any]:
        return self.supervisor.status()["flaky"]

    def down_alerts(self) -> list[Alert]:
        return [a for a in self.alerts.messages if isinstance(a, Alert) and a.kind == ACTOR_DOWN]


@pytest.fixture
def supervised(bus: Bus) -> Iterator[Any]:
    made: list[Fixture] = []

    def _make(failures: int = 0) -> Fixture:
        fixture = Fixture(bus, failures)
        made.append(fixture)
        return fixture

    yield _make
    for fixture in made:
        fixture.supervisor.stop()
        if fixture.handle.is_alive():
            fixture.handle.stop(block=True, timeout=10)


def test_an_actor_whose_start_up_fails_is_down_then_restarted_with_back_off_and_one_alert(
    supervised: Any,
) -> None:
    f = supervised(failures=2)
    f.wait_dead()
    f.supervisor.check()
    down = f.status()
    assert down["healthy"] is False
    assert down["reason"] == "failed: RuntimeError('start-up failed')"
    assert down["since"] == f.clock.now()
    assert down["restarts"] == 0
    assert f.supervisor.problem() == "actor(s) down: flaky"
    with pytest.raises(pykka.ActorDeadError):
        f.handle.ask("ping", timeout=5)
    f.handle.tell("ping")  # dropped while down, not raised

    f.clock.advance(0.9)
    f.supervisor.check()
    assert len(f.incarnations) == 1  # the back-off is not over
    f.clock.advance(0.1)
    f.supervisor.check()
    assert len(f.incarnations) == 2
    f.wait_dead()  # the second start-up fails too
    f.supervisor.check()
    assert f.status()["healthy"] is False
    assert f.status()["restarts"] == 1

    f.clock.advance(1.9)
    f.supervisor.check()
    assert len(f.incarnations) == 2  # backs off 2 s now
    f.clock.advance(0.1)
    f.supervisor.check()
    assert len(f.incarnations) == 3
    f.supervisor.check()
    assert f.status()["healthy"] is True
    assert f.status()["restarts"] == 2
    assert f.supervisor.problem() == ""
    # The same handle reaches the new incarnation.
    assert f.handle.ask("ping", timeout=5) == ("pong", 3)
    alerts = wait_until(f.down_alerts, what="the actor-down alert")
    assert len(alerts) == 1
    assert "flaky" in alerts[0].text
    assert alerts[0].source == "supervisor"


def test_a_fenced_actor_is_restarted_and_takes_over_until_fences_repeat_then_stays_down(
    supervised: Any,
) -> None:
    f = supervised()
    for incarnation in (1, 2, 3):
        assert f.handle.ask("ping", timeout=5) == ("pong", incarnation)
        f.handle.tell("fence")
        f.wait_dead()
        f.supervisor.check()
        assert f.status()["reason"].startswith("fenced: ")
        f.clock.advance(10.0)
        f.supervisor.check()
    # Fenced three times in a row (max_fenced_restarts = 2): it stays down.
    assert len(f.incarnations) == 3
    status = f.status()
    assert status["healthy"] is False
    assert status["restarting"] is False
    assert status["restarts"] == 2
    texts = [a.text for a in wait_until(lambda: len(f.down_alerts()) >= 2 and f.down_alerts())]
    assert len(texts) == 2
    assert "stays down" in texts[1]
    assert "another process" in texts[1]


def test_a_delivery_that_arrives_while_the_actor_is_down_reaches_its_next_incarnation(
    supervised: Any, bus: Bus
) -> None:
    f = supervised()
    bus.consume(
        subjects.STREAM_NOTIFY,
        "supervised_test",
        [subjects.ALERTS],
        msgspec.json.Decoder(Alert),
        f.handle.tell,
    )
    f.handle.tell("fence")
    f.wait_dead()
    f.supervisor.check()
    bus.emit(Alert(level="info", text="while down"), msg_id="while-down")
    # Nak'ed while down (it comes back every second), never handed to a dead actor.
    assert f.got == []
    f.clock.advance(CFG.restart_base_s)
    f.supervisor.check()
    wait_until(lambda: (2, "while down") in f.got, what="the delivery to reach the restarted actor")
    # (The supervisor's own actor-down alert, published while it was down, too.)
    assert {incarnation for incarnation, _text in f.got} == {2}
