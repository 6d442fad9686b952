"""The middle tier: one actor started from the wiring table on a real nats-server.

Each test starts one entry of `conveyor.app.wiring.TABLE` with its bucket and its
consumers, on a fixture server, with a `FakeClock`. The actors it talks to in
its process are `Stub`s that answer asks from a function and record what they
were told. Tests publish real messages on the real subjects, send ticks by hand
after advancing the clock, and watch what the actor publishes with `Captured`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from bus.bridge import Bus, Store
from bus.messages import BusMessage, Message, Tick
from conveyor.app import wiring
from conveyor.clock import FakeClock
from conveyor.config import Config
from tests.harness import make_config, wait_until

DEADLINE_S = 20.0
ASK_TIMEOUT_S = 10.0


class Stub(pykka.ThreadingActor):
    """Stands in for an actor the one under test asks or tells: records, then answers."""

    def __init__(self, answer: Callable[[Any], Any] = lambda _message: None) -> None:
        super().__init__()
        self._answer = answer
        self._received: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Received):
            return list(self._received)
        self._received.append(message)
        return self._answer(message)


class _Received(msgspec.Struct, frozen=True):
    """Test -> Stub (ask): what it has received so far."""


def received(stub: pykka.ActorRef[Any], kind: type[Any] | None = None) -> list[Any]:
    """What `stub` was sent so far (only messages of `kind` when given)."""
    found: list[Any] = stub.ask(_Received(), timeout=ASK_TIMEOUT_S)
    return [m for m in found if kind is None or isinstance(m, kind)]


class Captured:
    """Every message published on `subject` (core NATS sees JetStream publishes too)."""

    def __init__(self, bus: Bus, subject: str, message_type: Any = BusMessage) -> None:
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        bus.subscribe_core(subject, msgspec.json.Decoder(message_type), self._add)

    def _add(self, message: Message) -> None:
        with self._lock:
            self._messages.append(message)

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def wait_for(self, kind: type[Any], count: int = 1, *, what: str = "") -> list[Any]:
        """Wait until `count` messages of `kind` arrived; return them."""
        found: list[Any] = wait_until(
            lambda: (lambda seen: seen if len(seen) >= count else None)(self.of(kind)),
            deadline_s=DEADLINE_S,
            what=what or f"{count} {kind.__name__} message(s)",
        )
        return found


class ActorUnderTest:
    """One started entry of the wiring table and what a test does with it."""

    def __init__(self, spec: wiring.ActorSpec, ctx: wiring.Context, clock: FakeClock) -> None:
        self.spec = spec
        self.ctx = ctx
        self.clock = clock
        self.ref = wiring.start_actor(spec, ctx)

    @property
    def bus(self) -> Bus:
        return self.ctx.bus

    def store(self) -> Store[Any]:
        """The actor's KV bucket, read with its value type."""
        assert self.spec.value_type is not None
        return self.bus.store(self.spec.bucket, self.spec.value_type)

    def status(self) -> Any:
        """Ask its status query (this also waits until every earlier message was handled)."""
        assert self.spec.status is not None
        return self.ref.ask(self.spec.status(), timeout=ASK_TIMEOUT_S)

    def tick(self, advance_s: float = 0.0) -> Any:
        """Advance the fake clock, send a `Tick`, and wait until the actor handled it."""
        self.clock.advance(advance_s)
        self.ref.tell(Tick(now=self.clock.now()))
        return self.status()


StartActor = Callable[..., ActorUnderTest]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    connected = Bus.connect(nats_url, name="actor-under-test")
    connected.setup()
    try:
        yield connected
    finally:
        connected.close()


@pytest.fixture
def cfg(tmp_path: Path, nats_url: str) -> Config:
    return make_config(tmp_path / "data", nats_url)


@pytest.fixture
def start_actor(bus: Bus, clock: FakeClock, cfg: Config) -> Iterator[StartActor]:
    """Start one table entry by name; `refs` are the stand-ins for the actors it talks to."""
    refs: list[pykka.ActorRef[Any]] = []

    def _start(
        name: str, *, config: Config | None = None, **stand_ins: pykka.ActorRef[Any]
    ) -> ActorUnderTest:
        ctx = wiring.Context(config or cfg, bus, clock, refs=dict(stand_ins))
        started = ActorUnderTest(wiring.SPECS[name], ctx, clock)
        refs.extend([started.ref, *stand_ins.values()])
        return started

    yield _start
    for ref in refs:
        if ref.is_alive():
            ref.stop(block=True, timeout=10)


@pytest.fixture
def stub() -> Iterator[Callable[..., pykka.ActorRef[Any]]]:
    """Start a `Stub` answering with `answer`."""
    started: list[pykka.ActorRef[Any]] = []

    def _stub(answer: Callable[[Any], Any] = lambda _message: None) -> pykka.ActorRef[Any]:
        ref = Stub.start(answer)
        started.append(ref)
        return ref

    yield _stub
    for ref in started:
        if ref.is_alive():
            ref.stop(block=True, timeout=10)
