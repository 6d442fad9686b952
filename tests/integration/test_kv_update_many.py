"""Store.update_many: CAS writes in flight together; a moved revision is left out, unwritten."""

from __future__ import annotations

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus

pytestmark = pytest.mark.timeout(30)


class Record(msgspec.Struct, frozen=True):
    name: str
    count: int = 0


def test_update_many_writes_the_current_ones_and_leaves_a_moved_one_out(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_TASKS, Record)
    first = store.create("DEMO-1", Record(name="a"))
    second = store.create("DEMO-2", Record(name="b"))
    moved = store.update("DEMO-2", Record(name="b", count=1), expect=second)

    landed = store.update_many(
        [("DEMO-1", Record(name="a", count=2), first), ("DEMO-2", Record(name="x"), second)]
    )

    assert list(landed) == ["DEMO-1"]
    one, two = store.get("DEMO-1"), store.get("DEMO-2")
    assert one is not None
    assert two is not None
    assert (one.value.count, one.revision) == (2, landed["DEMO-1"])
    assert (two.value, two.revision) == (Record(name="b", count=1), moved)
    assert store.update_many([]) == {}
