"""JetStream writes that outlast a leaderless window: the same write, tried again in time.

After the node leading a stream dies, the stream has no leader for 4-9 s (RAFT election)
and every write to it fails fast with "no responders"; a write whose answer was lost may
also have landed. Both are retried as the very same write: a publish with the same
`Nats-Msg-Id` is stored once (the server answers `duplicate`), and a KV write keeps its
compare-and-swap revision, so a second landing is impossible. `op` gets the try number,
so a KV write can tell that an earlier try may have landed (and re-read, `bus.kv`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from conveyor.errors import BusUnavailable
from conveyor.logs import get_logger
from conveyor.retry import write_retry_delay_s

log = get_logger(__name__)

T = TypeVar("T")

WRITE_RETRY_S = 20.0
"""Default `nats.write_retry_s`: longer than a leader election (4-9 s) plus reconnecting."""

RETRYABLE = (
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
)
"""No answer (yet): the write may be tried again. An answer that says no is not here."""


async def retry_write(
    op: Callable[[int], Awaitable[T]],
    *,
    budget_s: float,
    what: str = "",
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await `op(try_number)` until it answers or `budget_s` passes without an answer."""
    start = monotonic()
    attempt = 0
    while True:
        try:
            result = await op(attempt)
        except RETRYABLE as err:
            delay = write_retry_delay_s(attempt, monotonic() - start, budget_s)
            if delay is None:
                raise BusUnavailable(
                    f"JetStream write {what} unanswered for {budget_s}s: {err!r}"
                ) from err
            if attempt == 0:
                log.info("bus.write_retrying", what=what, error=repr(err))
            await sleep(delay)
            attempt += 1
            continue
        if attempt:
            log.info("bus.write_landed_after_retry", what=what, tries=attempt + 1)
        return result


FORMING_CODES = frozenset({10005, 10008})
"""JetStream's "no suitable peers for placement" and "temporarily unavailable": a cluster
whose nodes are up but not all known to its meta leader yet answers these for a moment."""


def _forming(err: Exception) -> bool:
    """True for an error that says "not yet", not "no"."""
    if isinstance(err, nats.js.errors.NoStreamResponseError):
        return True
    if isinstance(err, nats.js.errors.APIError):
        return err.err_code in FORMING_CODES
    return True


async def retry_js(op: Callable[[], Awaitable[T]], attempts: int = 40) -> T:
    """Retry a JetStream call while the server has no responder (starting, or electing)."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return await op()
        except (
            nats.js.errors.NoStreamResponseError,
            nats.errors.NoRespondersError,
            nats.errors.TimeoutError,
            nats.js.errors.APIError,
        ) as err:
            if not _forming(err):
                raise
            if attempt == attempts - 1:
                raise BusUnavailable(f"JetStream unavailable: {err!r}") from err
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise BusUnavailable("JetStream unavailable")
