"""What every owner actor does the same way: its failure edge and its outbox flush.

An owner handles each message in `handle`. A `Fenced` write means another
process owns the record now: the actor logs `<name>.fenced` and stops, since
anything it decides from here on would be based on a stale copy. Any other
failure is logged with its trace and the delivery is nak'ed, so it comes back.

Why an owner stopped (fenced, or an exception in `on_start` that pykka ends the
actor for) is recorded under its urn for the node's supervisor, which restarts it
(`conveyor/app/supervisor.py`); `last_words` hands it over once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import msgspec
import pykka

from bus.bridge import Bus, Delivery, Store, Versioned
from bus.messages import Message
from conveyor import faults
from conveyor.errors import Fenced
from conveyor.logs import get_logger

S = TypeVar("S", bound=msgspec.Struct)


class Stopped(msgspec.Struct, frozen=True):
    """Why an actor stopped, as it said itself."""

    reason: str
    fenced: bool = False


_last_words: dict[str, Stopped] = {}
_last_words_lock = threading.Lock()


def record_stop(urn: str, stopped: Stopped) -> None:
    """Leave why the actor `urn` stops, for whoever restarts it."""
    with _last_words_lock:
        _last_words[urn] = stopped


def last_words(urn: str) -> Stopped | None:
    """Why the actor `urn` stopped, once (None: it said nothing)."""
    with _last_words_lock:
        return _last_words.pop(urn, None)


class Owner(pykka.ThreadingActor):
    """A pykka actor whose `on_receive` is the shared edge around `handle`."""

    name: ClassVar[str]
    """Prefix of the actor's log events."""
    failed_event: ClassVar[str] = "handle_failed"
    stops_when_fenced: ClassVar[bool] = True
    """False: a `Fenced` is just another failure (actors that write nothing fenced)."""
    nak_delay_s: ClassVar[float] = 2.0

    fenced = False

    def handle(self, message: Any) -> Any:
        """Handle one message; the answer of an ask is returned."""
        raise NotImplementedError

    def on_receive(self, message: Any) -> Any:
        try:
            return self.handle(message)
        except Fenced as err:
            if self.stops_when_fenced:
                return self.on_fenced(err)
            return self.on_failed(message, err)
        except Exception as err:  # noqa: BLE001 - one message must never end the actor
            return self.on_failed(message, err)

    def on_fenced(self, err: Fenced) -> Any:
        """Stop: another process wrote a record this actor owns."""
        event = f"{self.name}.fenced"
        get_logger(type(self).__module__).error(event, error=str(err))
        self.fenced = True
        record_stop(self.actor_urn, Stopped(f"fenced: {err}", fenced=True))
        self.stop()
        return None

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # pykka ends the actor here for an exception in `on_start` (and in a told
        # message outside `on_receive`'s edge); the reason is kept before it does.
        record_stop(self.actor_urn, Stopped(f"failed: {exception_value!r}"))
        super()._handle_failure(exception_type, exception_value, traceback)

    def on_failed(self, message: Any, err: Exception) -> Any:
        """Log the failure with its trace and ask for the delivery again; called in `except`."""
        event = f"{self.name}.{self.failed_event}"
        get_logger(type(self).__module__).exception(event, kind=type(message).__name__)
        if isinstance(message, Delivery):
            message.nak(delay_s=self.nak_delay_s)
        return None


def flush_outbox(
    bus: Bus,
    store: Store[S],
    key: str,
    entry: Versioned[S],
    outbox: Sequence[Message],
    *,
    fault: str,
) -> Versioned[S]:
    """Publish a record's stored outbox, then store the record with it cleared.

    Message ids are stable per revision (`<key>:<revision>:<index>`), so publishing
    the same outbox again after a crash is deduplicated by the stream.
    """
    if not outbox:
        return entry
    for index, msg in enumerate(outbox):
        bus.emit(msg, msg_id=f"{key}:{entry.revision}:{index}")
    faults.point(fault)
    cleared = msgspec.structs.replace(entry.value, outbox=[])
    return Versioned(cleared, store.update(key, cleared, expect=entry.revision))
