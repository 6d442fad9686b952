"""Settled rows and their segments: what a checkpoint writes and a start reads back."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.task_index import StatusIndex
from actors.task_policy import Task
from actors.task_settled import (
    HEAD_KEY,
    SEGMENT_ROWS,
    IndexStores,
    Segment,
    SettledTasks,
    TasksHead,
    segment_key,
    write_checkpoint,
)


class Segments:
    """A stand-in for the index bucket's segment records (only `put` is used)."""

    def __init__(self) -> None:
        self.records: dict[str, Segment] = {}
        self.puts = 0

    def put(self, key: str, value: Segment) -> int:
        self.records[key] = value
        self.puts += 1
        return self.puts


def _task(number: int, stage: str = "done", title: str = "t") -> Task:
    return Task(
        id=f"DEMO-{number}", repo="demo", title=title, branch="b", stage=stage, created_at=number
    )


def test_rows_fill_segments_in_order_and_only_the_open_one_is_rewritten():
    settled, store = SettledTasks(), Segments()
    for number in range(SEGMENT_ROWS + 5):
        settled.settle(_task(number))
    store_any: Any = store
    settled.flush(store_any, 1 << 20)
    assert sorted(store.records) == [segment_key(0), segment_key(1)]
    assert (len(store.records[segment_key(1)].rows), settled.segments) == (5, 2)
    assert not settled.dirty

    settled.settle(_task(9999))
    settled.flush(store_any, 1 << 20)
    # One more row: the open segment is written again, the full one is left alone.
    assert store.puts == 3
    assert len(store.records[segment_key(1)].rows) == 6

    # Settling a task again unchanged (a read-back for a message) writes nothing.
    settled.settle(_task(9999))
    assert not settled.dirty


def test_segments_stay_under_half_the_max_payload():
    settled, store = SettledTasks(), Segments()
    for number in range(50):
        settled.settle(_task(number, title="x" * 200))
    store_any: Any = store
    settled.flush(store_any, 16 * 1024)
    sizes = [len(msgspec.json.encode(seg)) for seg in store.records.values()]
    assert len(sizes) > 1
    assert max(sizes) <= 8 * 1024
    assert sum(len(seg.rows) for seg in store.records.values()) == 50


def test_a_start_reads_segments_back_with_later_rows_winning_and_hot_ids_left_out():
    first = SettledTasks()
    store = Segments()
    first.settle(_task(1))
    first.settle(_task(2, stage="cancelled"))
    first.settle(_task(1, title="renamed"))  # settled again: appended, the later row wins
    store_any: Any = store
    first.flush(store_any, 1 << 20)

    again = SettledTasks()
    again.load(list(store.records.values()), hot=["DEMO-2"])  # reopened since
    assert (len(again), "DEMO-2" in again) == (1, False)
    assert again.row("DEMO-1")["title"] == "renamed"
    assert again.segments == 1
    # The status index takes kept rows: a settled task counts as finished.
    index = StatusIndex()
    row = again.get("DEMO-1")
    assert row is not None
    index.put_settled(row.id, row.created_at, row.stage, row.repo)
    assert index.counts()["by_state"] == {"active": 0, "finished": 1, "escalated": 0}
    index.drop("DEMO-1")
    assert index.total() == 0


class Puts:
    """A stand-in for one view of the index bucket: what was put, by key."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> int:
        self.records[key] = value
        return len(self.records)


def test_a_head_with_too_many_hot_ids_for_one_message_keeps_them_in_parts():
    heads, hot = Puts(), Puts()
    index: Any = IndexStores(heads, Puts(), hot)  # type: ignore[arg-type]
    ids = [f"DEMO-{n}" for n in range(2000)]
    write_checkpoint(index, TasksHead(seq=7, hot=ids, segments=0), 8 * 1024)
    head = heads.records[HEAD_KEY]
    assert (head.hot, head.seq) == ([], 7)
    assert head.hot_parts == len(hot.records) > 1
    assert [i for key in sorted(hot.records) for i in hot.records[key].ids] == ids
    assert all(len(msgspec.json.encode(p)) <= 4 * 1024 for p in hot.records.values())
