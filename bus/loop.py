"""One asyncio event loop on a daemon thread, called into from other threads.

Every process runs one (ADR 0002); a blocking caller submits a coroutine and
waits for its result, and a failure of a fire-and-forget coroutine is logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats.errors

from conveyor.clock import SystemClock
from conveyor.errors import BusUnavailable
from conveyor.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

_GIVE_UP_SLICE_S = 0.1
"""How often a caller that may give up on a call asks whether it should."""
_clock = SystemClock()


class LoopThread:
    """A daemon thread running one asyncio event loop."""

    def __init__(self, name: str = "conveyor-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        timeout_s: float | None = 30.0,
        *,
        give_up: Callable[[], bool] | None = None,
    ) -> T:
        """Run `coro` on the loop and wait for its result from another thread.

        `give_up`: asked while waiting; True ends the wait as a timeout would.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("Bus.call from the loop thread would deadlock")
        with self._lock:
            if self._stopped:
                coro.close()
                raise BusUnavailable("bus is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._waiting.add(future)
        try:
            if give_up is None or timeout_s is None:
                return future.result(timeout_s)
            return _result_unless(future, timeout_s, give_up)
        except concurrent.futures.TimeoutError as err:
            future.cancel()
            raise BusUnavailable(f"bus call timed out after {timeout_s}s") from err
        except concurrent.futures.CancelledError as err:
            # The loop stopped under this call: a caller must not wait out its timeout.
            raise BusUnavailable("bus closed during the call") from err
        finally:
            with self._lock:
                self._waiting.discard(future)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule `coro` without waiting; failures are logged."""
        with self._lock:
            # Checked under the lock `stop` takes: a task scheduled once the loop's last
            # tasks were cancelled would be destroyed pending.
            if self._stopped or not self.loop.is_running():
                # Shutting down: an unacked message is redelivered, which is what we want.
                coro.close()
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                future.cancel()
                return future
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(_log_failure)
        return future

    def stop(self) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""
        with self._lock:
            self._stopped = True
        if self.loop.is_running() and self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(5.0)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        with self._lock:
            for future in self._waiting:
                future.cancel()


def _result_unless(
    future: concurrent.futures.Future[T], timeout_s: float, give_up: Callable[[], bool]
) -> T:
    end = _clock.monotonic() + timeout_s
    while True:
        left = end - _clock.monotonic()
        try:
            return future.result(max(0.0, min(left, _GIVE_UP_SLICE_S)))
        except concurrent.futures.TimeoutError:
            if left <= _GIVE_UP_SLICE_S or give_up():
                raise


async def _cancel_all() -> None:
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if isinstance(exc, nats.errors.ConnectionClosedError):
        # A fire-and-forget publish (a heartbeat) racing the close at shutdown: expected.
        log.debug("bus.background_dropped", error=repr(exc))
    elif exc is not None:
        log.warning("bus.background_failed", error=repr(exc))
