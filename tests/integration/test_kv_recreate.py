"""Creating a key again over its own delete marker is one write, never a read."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus, KeyExists
from conveyor.errors import Fenced


class Record(msgspec.Struct, frozen=True):
    name: str


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    bus = Bus.connect(nats_url)
    bus.setup()
    yield bus
    bus.close()


def _flush(bus: Bus) -> None:
    """A round trip to the server: what was sent before has arrived and been answered."""
    bus.call(bus.nc.flush())


def _reads(bus: Bus, bucket: str) -> queue.Queue[Any]:
    """Every `MSG.GET` request on `bucket`'s stream, as they are made."""
    seen: queue.Queue[Any] = queue.Queue()
    bus.subscribe_core(
        f"$JS.API.STREAM.MSG.GET.KV_{bucket}", msgspec.json.Decoder(dict[str, Any]), seen.put
    )
    _flush(bus)
    return seen


def test_a_create_over_its_known_delete_marker_reads_nothing(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_LEASES, Record)
    reads = _reads(bus, subjects.BUCKET_LEASES)
    first = store.create("task.DEMO-1", Record(name="a"))
    marker = store.delete("task.DEMO-1", expect=first)
    assert marker > first
    again = store.create("task.DEMO-1", Record(name="b"), over=marker)
    assert again > marker
    entry = store.get("task.DEMO-1")
    assert entry is not None
    assert (entry.value, entry.revision) == (Record(name="b"), again)
    _flush(bus)
    # The get above is the only read: the create over the marker made none.
    assert reads.qsize() == 1


def test_a_create_over_an_unknown_marker_still_works(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_LEASES, Record)
    first = store.create("task.DEMO-2", Record(name="a"))
    store.delete("task.DEMO-2", expect=first)
    assert store.create("task.DEMO-2", Record(name="b")) > first


def test_a_stale_marker_falls_back_to_a_plain_create(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_LEASES, Record)
    first = store.create("task.DEMO-3", Record(name="a"))
    marker = store.delete("task.DEMO-3", expect=first)
    # Someone else took the key since: the create is refused as any create would be.
    store.create("task.DEMO-3", Record(name="other"))
    with pytest.raises(KeyExists):
        store.create("task.DEMO-3", Record(name="b"), over=marker)
    # Deleted again by them: a marker we do not know, over which the create still lands.
    taken = store.get("task.DEMO-3")
    assert taken is not None
    store.delete("task.DEMO-3", expect=taken.revision)
    assert store.create("task.DEMO-3", Record(name="b"), over=marker) > taken.revision


def test_a_delete_at_a_moved_revision_is_fenced(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_LEASES, Record)
    first = store.create("task.DEMO-4", Record(name="a"))
    store.update("task.DEMO-4", Record(name="b"), expect=first)
    with pytest.raises(Fenced):
        store.delete("task.DEMO-4", expect=first)
