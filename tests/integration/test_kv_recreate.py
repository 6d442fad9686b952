"""Creating a key again over its own delete marker is one write, never a read."""

from __future__ import annotations

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus, KeyExists
from conveyor.errors import Fenced
from tests.kv_raw import api_requests, flush


class Record(msgspec.Struct, frozen=True):
    name: str


def test_a_create_over_its_known_delete_marker_reads_nothing(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_LEASES, Record)
    reads = api_requests(bus, "STREAM.MSG.GET", subjects.BUCKET_LEASES)
    first = store.create("task.DEMO-1", Record(name="a"))
    marker = store.delete("task.DEMO-1", expect=first)
    assert marker > first
    again = store.create("task.DEMO-1", Record(name="b"), over=marker)
    assert again > marker
    entry = store.get("task.DEMO-1")
    assert entry is not None
    assert (entry.value, entry.revision) == (Record(name="b"), again)
    flush(bus)
    # The get above is the only read: the create over the marker made none.
    assert len(reads) == 1


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
