"""A fenced term's connection drops what it has not sent: reset on close, also after a reconnect."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from bus.abort import discard_unsent, reset_on_close
from bus.bridge import Bus
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    bus = Bus.connect(nats_url)
    yield bus
    bus.close()


def _linger(bus: Bus) -> tuple[int, int]:
    async def _read() -> Any:
        raw = bus.nc._transport._io_writer.transport  # type: ignore[attr-defined]
        return raw.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.calcsize("ii")
        )

    on, seconds = struct.unpack("ii", bus.loop.call(_read()))
    return on, seconds


def _reconnects(bus: Bus) -> int:
    return int(bus.nc.stats["reconnects"])


def test_the_socket_resets_on_close_and_so_does_the_one_after_a_reconnect(bus: Bus) -> None:
    assert _linger(bus) == (0, 0)
    reset_on_close(bus)
    assert _linger(bus) == (1, 0)

    async def _drop() -> None:
        bus.nc._transport._io_writer.transport.abort()  # type: ignore[attr-defined]

    bus.loop.call(_drop())
    wait_until(
        lambda: _reconnects(bus) >= 1 and bus.nc.is_connected, deadline_s=20, what="a reconnect"
    )
    # The client flags itself connected just before it awaits the reconnected callback
    # (nothing else runs on the loop in between); this thread can look in that instant.
    wait_until(lambda: _linger(bus) == (1, 0), deadline_s=5, what="the new socket set to reset")


def test_discarding_clears_the_clients_buffer_and_the_connection_comes_back(bus: Bus) -> None:
    bus.nc._pending.append(b"PUB never.sent 0\r\n\r\n")  # type: ignore[attr-defined]
    bus.nc._pending_data_size += 21  # type: ignore[attr-defined]
    discard_unsent(bus)
    assert bus.nc._pending == []  # type: ignore[attr-defined]
    wait_until(
        lambda: _reconnects(bus) >= 1 and bus.nc.is_connected, deadline_s=20, what="a reconnect"
    )
