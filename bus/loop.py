"""One asyncio event loop on a daemon thread, called into from other threads.

Every process runs one (ADR 0002); a blocking caller submits a coroutine and
waits for its result, and a failure of a fire-and-forget coroutine is logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats.errors

from conveyor.errors import BusUnavailable
from conveyor.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")


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

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 30.0) -> T:
        """Run `coro` on the loop and wait for its result from another thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Bus.call from the loop thread would deadlock")
        with self._lock:
            if self._stopped:
                coro.close()
                raise BusUnavailable("bus is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._waiting.add(future)
        try:
            return future.result(timeout_s)
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
        if not self.loop.is_running():
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
