"""Drop what a connection has not sent yet: the last act of a control term that lost its lease."""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

from bus.bridge import Bus
from conveyor.logs import get_logger

log = get_logger(__name__)

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close drops unsent data


def _socket_of(nc: Any) -> Any:
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    return None if writer is None else writer.transport


def _reset_on_close(raw: Any) -> None:
    sock = None if raw is None else raw.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)


def reset_on_close(bus: Bus) -> None:
    """Make every socket of `bus`'s connection drop its unsent data when it is closed.

    The client closes a connection it finds stale (no pongs) by itself; closed
    gracefully, the kernel would still send what was queued once a cut link is back,
    after the fence that let it be written has closed. Every write that matters waits
    for its acknowledgement and is retried, so dropping unacknowledged data loses
    nothing; `Bus.close` flushes (a ping round trip) before it closes.
    """

    async def _set() -> None:
        nc = bus.nc
        _reset_on_close(_socket_of(nc))
        previous = nc._reconnected_cb

        async def _reconnected() -> None:
            _reset_on_close(_socket_of(nc))
            if previous is not None:
                await previous()

        nc._reconnected_cb = _reconnected

    bus.loop.call(_set(), timeout_s=2.0)


def discard_unsent(bus: Bus) -> None:
    """Abort `bus`'s connection so that nothing still buffered for it reaches the server.

    Writes are fenced when they are sent, not when they arrive. With its link cut, a
    control process can hold writes it made while it still led in the client's buffer
    and the kernel's send queue; a graceful close, or TCP once the link is back, would
    deliver them after a standby has taken over. Clearing the client's buffer and
    closing the socket with a zero linger (a reset) drops them; the caller's own
    retries then meet the closed fence, and the new active re-does what is missing.
    """

    async def _abort() -> None:
        nc = bus.nc
        nc._pending = []
        nc._pending_data_size = 0
        raw = _socket_of(nc)
        if raw is not None:
            _reset_on_close(raw)
            raw.abort()

    try:
        bus.loop.call(_abort(), timeout_s=2.0)
    except Exception as err:  # noqa: BLE001 - a connection already gone has nothing to drop
        log.info("bus.abort_skipped", error=str(err))
