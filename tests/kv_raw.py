"""Raw KV access for tests that write what no Conveyor version would, and alert counting."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import msgspec

from bus.bridge import Bus
from bus.messages import Alert, encode
from tests.harness import wait_until


def put_raw(bus: Bus, bucket: str, key: str, data: bytes) -> int:
    """Store `data` at `key` as it is, bypassing every typed store; its revision."""

    async def _put() -> int:
        kv = await bus.js.key_value(bucket)
        return int(await kv.put(key, data))

    return bus.call(_put())


def put_many(bus: Bus, bucket: str, records: Mapping[str, msgspec.Struct]) -> None:
    """Store `records` straight into `bucket` (many puts in flight): a long history, fast."""

    async def _put() -> None:
        kv = await bus.js.key_value(bucket)
        items = list(records.items())
        for start in range(0, len(items), 500):
            batch = items[start : start + 500]
            await asyncio.gather(*(kv.put(key, encode(value)) for key, value in batch))

    bus.call(_put(), timeout_s=600.0)


def get_raw(bus: Bus, bucket: str, key: str) -> bytes | None:
    """The bytes stored at `key`, undecoded."""

    async def _get() -> bytes | None:
        kv = await bus.js.key_value(bucket)
        return (await kv.get(key)).value

    return bus.call(_get())


def settled_alerts(bus: Bus, captured: Any, kind: str) -> list[Alert]:
    """The alerts of `kind` in `captured` once everything published before now arrived.

    `captured` is a `tests.actors.conftest.Captured` on `conveyor.alerts`. A marker
    alert published now arrives after every earlier one, so counting after it
    sees any late duplicate too.
    """
    marker = f"marker-{len(captured.messages)}"
    bus.emit(Alert(level="info", text=marker, kind="marker"), msg_id=marker)
    wait_until(
        lambda: any(isinstance(a, Alert) and a.text == marker for a in captured.messages),
        what="the marker alert",
    )
    return [a for a in captured.messages if isinstance(a, Alert) and a.kind == kind]


def api_requests(bus: Bus, api: str, bucket: str) -> list[Any]:
    """Every `$JS.API.<api>` request on `bucket`'s stream from now on (e.g. `STREAM.MSG.GET`).

    Flush the bus before reading the list: requests sent before are then counted.
    """
    seen: list[Any] = []
    bus.subscribe_core(f"$JS.API.{api}.KV_{bucket}", msgspec.json.Decoder(Any), seen.append)
    flush(bus)
    return seen


def flush(bus: Bus) -> None:
    """A round trip to the server: what was sent before has arrived and been answered."""
    bus.call(bus.nc.flush())
