"""The actor <-> bus bridge against a real nats-server: stores, consumers, dedup."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus, Delivery, KeyExists
from bus.messages import Alert, JobInput, JobRequested, JobsCancelled
from conveyor.errors import BusUnavailable, Fenced


class Record(msgspec.Struct, frozen=True):
    name: str
    count: int = 0


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    bus = Bus.connect(nats_url)
    bus.setup()
    yield bus
    bus.close()


def _request(job_id: str) -> JobRequested:
    return JobRequested(
        job_id=job_id,
        task_id="DEMO-1",
        repo="demo",
        stage="analysis",
        role="analyst",
        visit=1,
        branch="feature/DEMO-1-x",
        title="x",
    )


def test_setup_is_idempotent(bus: Bus) -> None:
    bus.setup()
    bus.setup()


def test_create_is_exclusive_and_update_is_a_compare_and_swap(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_TASKS, Record)
    rev = store.create("DEMO-1", Record(name="a"))
    with pytest.raises(KeyExists):
        store.create("DEMO-1", Record(name="b"))
    rev2 = store.update("DEMO-1", Record(name="a", count=1), expect=rev)
    # A writer holding the old revision is fenced: its write changes nothing.
    with pytest.raises(Fenced):
        store.update("DEMO-1", Record(name="stale"), expect=rev)
    entry = store.get("DEMO-1")
    assert entry is not None
    assert entry.value == Record(name="a", count=1)
    assert entry.revision == rev2


def test_load_all_returns_the_latest_value_of_every_key(bus: Bus) -> None:
    store = bus.store(subjects.BUCKET_JOBS, Record)
    for i in range(300):
        rev = store.create(f"job.{i}", Record(name=str(i)))
        store.update(f"job.{i}", Record(name=str(i), count=1), expect=rev)
    loaded = store.load_all()
    assert len(loaded) == 300
    assert all(entry.value.count == 1 for entry in loaded.values())


def test_load_all_of_an_empty_bucket_is_empty(bus: Bus) -> None:
    assert bus.store(subjects.BUCKET_RUNS, Record).load_all() == {}


def test_a_published_message_id_is_stored_once(bus: Bus) -> None:
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    for _ in range(3):
        bus.publish(subjects.JOBS_REQUESTED, _request("J1"), msg_id="J1:1:0")
    bus.consume(
        subjects.STREAM_JOBS,
        "test_dedup",
        [subjects.JOBS_REQUESTED],
        msgspec.json.Decoder(JobInput),
        got.put,
    )
    first = got.get(timeout=10)
    first.ack()
    assert first.body.job_id == "J1"
    assert first.msg_id == "J1:1:0"
    with pytest.raises(queue.Empty):
        got.get(timeout=1.5)


def test_an_unacked_message_is_redelivered_after_nak(bus: Bus) -> None:
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    bus.publish(subjects.JOBS_CANCELLED, JobsCancelled(task_id="DEMO-2"), msg_id="c1")
    bus.consume(
        subjects.STREAM_JOBS,
        "test_nak",
        [subjects.JOBS_CANCELLED],
        msgspec.json.Decoder(JobInput),
        got.put,
    )
    first = got.get(timeout=10)
    first.nak(delay_s=0.1)
    second = got.get(timeout=10)
    assert second.body == first.body
    assert second.num_delivered == 2
    second.ack()


def test_an_undecodable_message_is_terminated_not_redelivered(bus: Bus) -> None:
    got: queue.Queue[Delivery[Any]] = queue.Queue()

    async def _raw() -> None:
        await bus.js.publish(subjects.JOBS_REQUESTED, b'{"type":"JobRequested","job_id":1}')
        await bus.js.publish(subjects.JOBS_REQUESTED, b"not json")

    bus.call(_raw())
    bus.publish(subjects.JOBS_REQUESTED, _request("J2"), msg_id="J2")
    bus.consume(
        subjects.STREAM_JOBS,
        "test_term",
        [subjects.JOBS_REQUESTED],
        msgspec.json.Decoder(JobInput),
        got.put,
    )
    good = got.get(timeout=10)
    assert good.body.job_id == "J2"
    good.ack()
    with pytest.raises(queue.Empty):
        got.get(timeout=1.5)


def test_core_subscribers_see_messages_published_to_a_stream(bus: Bus) -> None:
    got: queue.Queue[Any] = queue.Queue()
    bus.subscribe_core(subjects.ALERTS, msgspec.json.Decoder(Alert), got.put)
    bus.publish(subjects.ALERTS, Alert(level="info", text="hello"), msg_id="a1")
    assert got.get(timeout=5).text == "hello"


def test_a_request_nobody_answers_is_a_bus_error(bus: Bus) -> None:
    with pytest.raises(BusUnavailable):
        bus.request("conveyor.status.nobody", b"", timeout_s=0.5)


def test_connecting_to_a_dead_server_fails_clearly() -> None:
    with pytest.raises(BusUnavailable, match="cannot connect"):
        Bus.connect("nats://127.0.0.1:1", connect_timeout_s=0.5)
