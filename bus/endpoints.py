"""NATS micro service endpoints of a `Bus`: a handler runs in a worker thread or on the loop.

A blocking handler (one that asks an actor and waits) runs in the bus's thread pool,
so the loop never blocks; nats-py hands an endpoint's requests over one at a time,
each after the last was answered. A coroutine function runs on the loop itself, for
a path that only awaits (the submit front: no thread held while a write is in
flight), and each of its requests as a task of its own, so requests in flight
together are handled together.

A handler that cannot answer now raises `NotAnswered`: the requester gets a service
error (503) that `Bus.request` raises as `BusUnavailable`, the same as silence, and
asks again, maybe of another member of the service.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any, cast

from conveyor.errors import BusUnavailable, ConveyorError
from conveyor.logs import get_logger

log = get_logger(__name__)

Handler = Callable[[str, bytes], bytes] | Callable[[str, bytes], Awaitable[bytes]]
"""A service endpoint's handler: (subject, body) -> reply, in a worker thread or on the loop."""

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
UNAVAILABLE = "503"


class NotAnswered(ConveyorError):
    """This member of the service cannot give an answer now; the requester asks again."""


def service_error(subject: str, headers: dict[str, str] | None) -> ConveyorError | None:
    """The error a micro service replied with instead of an answer, or None."""
    code = (headers or {}).get(ERROR_CODE_HEADER)
    if code is None:
        return None
    text = f"{subject} answered {code}: {(headers or {}).get(ERROR_HEADER, '')}"
    return BusUnavailable(text) if code == UNAVAILABLE else ConveyorError(text)


def serving(
    func: Handler, loop: asyncio.AbstractEventLoop, pool: concurrent.futures.Executor
) -> Callable[[Any], Awaitable[None]]:
    """The micro endpoint handler running `func` and always responding."""
    on_loop = asyncio.iscoroutinefunction(func)
    handling: set[asyncio.Task[None]] = set()

    async def _dispatch(req: Any) -> None:
        # Returns at once: nats-py hands over the next request when this returns.
        task = asyncio.ensure_future(_handler(req))
        handling.add(task)
        task.add_done_callback(handling.discard)

    async def _handler(req: Any) -> None:
        try:
            if on_loop:
                body = await cast(Awaitable[bytes], func(req.subject, req.data))
            else:
                call = cast(Callable[[str, bytes], bytes], func)
                body = await loop.run_in_executor(pool, call, req.subject, req.data)
        except NotAnswered as err:
            log.warning("bus.not_answered", subject=req.subject, reason=str(err))
            await req.respond_error(UNAVAILABLE, str(err))
            return
        except Exception as err:
            log.exception("bus.handler_failed", subject=req.subject)
            await req.respond_error("500", str(err))
            return
        await req.respond(body)

    return _dispatch if on_loop else _handler
