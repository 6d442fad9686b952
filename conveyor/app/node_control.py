"""The control actors of one epoch of the leader lease, and the ticker that drives actors.

With `control.leader_lease`, a `control` process starts its actors only once it
holds the lease (`actors.leader.Leadership`), each epoch on a connection of its
own whose writes carry the epoch and are refused once the lease may have run
out (`Bus.write_stamp`). Losing the lease stops that term's supervisor, ticker,
connection and actors; winning again starts a fresh term, whose actors load every
record from KV as after a restart and resume the in-flight tasks from there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

from actors.leader import Leadership
from bus.abort import discard_unsent, reset_on_close
from bus.bridge import Bus
from bus.messages import Tick
from conveyor.app.supervisor import Supervisor
from conveyor.app.wiring import CONTROL
from conveyor.clock import Clock
from conveyor.logs import get_logger
from gateways.forge import Forge

if TYPE_CHECKING:
    from conveyor.app.node import Node

log = get_logger(__name__)

STOP_TIMEOUT_S = 10.0


class Ticker:
    """Sends `Tick` to actors every `interval_s` from one thread."""

    def __init__(self, interval_s: float, clock: Clock) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._targets: list[pykka.ActorRef[Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def add(self, ref: pykka.ActorRef[Any]) -> None:
        self._targets.append(ref)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for ref in self._targets:
                if ref.is_alive():
                    ref.tell(Tick(now=self._clock.now()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class _Term:
    """What one epoch started."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.stopping = threading.Event()
        self.bus: Bus | None = None
        self.supervisor: Supervisor | None = None
        self.ticker: Ticker | None = None
        self.refs: dict[str, pykka.ActorRef[Any]] = {}
        self.closers: list[Callable[[], None]] = []
        """Clients its actors opened (a tracker's, Telegram's), closed when it ends."""
        self.thread: threading.Thread | None = None


class ControlTerm:
    """Starts the control actors when the lease is won and stops them when it is lost."""

    def __init__(self, node: Node, forge: Forge) -> None:
        self._node = node
        self._forge = forge
        self.leadership: Leadership | None = None
        self._lock = threading.Lock()
        self._current: _Term | None = None

    def begin(self, epoch: int) -> None:
        """Start the control actors for `epoch` (in a thread: the lease keeps being renewed)."""
        term = _Term(epoch)
        with self._lock:
            self._current = term
        term.thread = threading.Thread(
            target=self._start, args=(term,), name=f"control-{epoch}", daemon=True
        )
        term.thread.start()

    def _start(self, term: _Term) -> None:
        node, leadership = self._node, self.leadership
        if leadership is None:
            return
        try:
            term.bus = bus = node._connect(f"epoch-{term.epoch}")
            bus.write_stamp = leadership.fence_for(term.epoch)
            reset_on_close(bus)
            term.supervisor = Supervisor(bus, node.clock, node.cfg.supervisor)
            term.ticker = Ticker(node.cfg.queue.tick_s, node.clock)
            if term.stopping.is_set():
                return
            node._start_part(
                CONTROL,
                bus,
                self._forge,
                term.supervisor,
                term.refs,
                term.ticker,
                control=leadership.status,
                closers=term.closers,
            )
            term.ticker.start()
            term.supervisor.start()
        except Exception as err:  # a term that cannot start gives the lease up
            log.exception("control.start_failed", epoch=term.epoch)
            leadership.resign(f"the control actors did not start: {err!r}")
            return
        log.info("control.started", epoch=term.epoch, actors=len(term.refs))

    def end(self, reason: str) -> None:
        """Stop the current term's actors (the lease is gone: their writes fail already)."""
        with self._lock:
            term, self._current = self._current, None
        if term is None:
            return
        term.stopping.set()
        if term.bus is not None:
            # The lease is gone: what the term has not sent yet must never arrive.
            discard_unsent(term.bus)
        if term.thread is not None and term.thread is not threading.current_thread():
            term.thread.join(timeout=60)
        if term.supervisor is not None:
            term.supervisor.stop()
        if term.ticker is not None:
            term.ticker.stop()
        if term.bus is not None:
            term.bus.close()
        for ref in term.refs.values():
            if ref.is_alive():
                ref.stop(block=True, timeout=STOP_TIMEOUT_S)
        for close in term.closers:
            try:
                close()
            except Exception:
                log.exception("control.close_failed", epoch=term.epoch)
        log.info("control.stopped", epoch=term.epoch, reason=reason)
