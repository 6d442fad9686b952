"""One JetStream message handed to an actor, and how it is settled."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from nats.aio.msg import Msg

from bus.inflight import InFlight
from bus.loop import LoopThread

T = TypeVar("T")

MSG_ID = "Nats-Msg-Id"


class Carrier(Protocol):
    """What a delivery settles through: the bus's loop and its in-flight keeper."""

    @property
    def inflight(self) -> InFlight: ...

    @property
    def loop(self) -> LoopThread: ...


class Delivery(Generic[T]):
    """One JetStream message handed to an actor; ack only after its effect is stored."""

    def __init__(self, bus: Carrier, msg: Msg, body: T) -> None:
        self._bus = bus
        self._msg = msg
        self.body = body
        self.subject: str = msg.subject
        headers = msg.headers or {}
        self.msg_id: str = headers.get(MSG_ID, "")
        try:
            self.num_delivered: int = int(msg.metadata.num_delivered)
            self.stream_seq: int = int(msg.metadata.sequence.stream)
        except (AttributeError, TypeError, ValueError):
            self.num_delivered, self.stream_seq = 1, 0
        if not self.msg_id:
            self.msg_id = f"seq{self.stream_seq}"

    def ack(self) -> None:
        """Acknowledge: the message's effect is durable."""
        self._bus.inflight.settled(self._msg)
        self._bus.loop.submit(self._msg.ack())

    def nak(self, delay_s: float = 1.0) -> None:
        """Ask for redelivery after `delay_s`."""
        self._bus.inflight.settled(self._msg)
        self._bus.loop.submit(self._msg.nak(delay=delay_s))

    def term(self) -> None:
        """Never redeliver (the message is invalid)."""
        self._bus.inflight.settled(self._msg)
        self._bus.loop.submit(self._msg.term())
