"""The actor <-> bus bridge against a real nats-server: stores, consumers, dedup."""

from __future__ import annotations

import queue
import threading
from typing import Any

import msgspec
import pytest

from actors.owner import flush_outbox
from bus import subjects
from bus.bridge import Bus, Delivery, KeyExists
from bus.messages import Alert, BusMessage, JobInput, JobRequested, JobsCancelled, KillJob
from conveyor.errors import BusUnavailable, Fenced


class Record(msgspec.Struct, frozen=True):
    name: str
    count: int = 0


class Boxed(msgspec.Struct, frozen=True):
    name: str
    outbox: list[BusMessage] = msgspec.field(default_factory=list)


def _follow(bus: Bus, durable: str, subject: str, into: queue.Queue[Delivery[Any]]) -> None:
    """Feed the jobs stream's `subject` through the durable consumer `durable` into `into`."""
    bus.consume(subjects.STREAM_JOBS, durable, [subject], msgspec.json.Decoder(JobInput), into.put)


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
    _follow(bus, "test_dedup", subjects.JOBS_REQUESTED, got)
    first = got.get(timeout=10)
    first.ack()
    assert first.body.job_id == "J1"
    assert first.msg_id == "J1:1:0"
    with pytest.raises(queue.Empty):
        got.get(timeout=1.5)


def test_an_unacked_message_is_redelivered_after_nak(bus: Bus) -> None:
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    bus.publish(subjects.JOBS_CANCELLED, JobsCancelled(task_id="DEMO-2"), msg_id="c1")
    _follow(bus, "test_nak", subjects.JOBS_CANCELLED, got)
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
    _follow(bus, "test_term", subjects.JOBS_REQUESTED, got)
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


def test_emit_publishes_on_the_subject_of_the_message_type(bus: Bus) -> None:
    durable: queue.Queue[Delivery[Any]] = queue.Queue()
    core: queue.Queue[KillJob] = queue.Queue()
    bus.subscribe_core(subjects.LAUNCH_KILL, msgspec.json.Decoder(KillJob), core.put)
    for _ in range(2):
        bus.emit(_request("J3"), msg_id="J3:1:0")
    bus.emit(KillJob(job_id="J3", reason="test"), msg_id="")
    _follow(bus, "test_emit", subjects.JOBS_REQUESTED, durable)
    first = durable.get(timeout=10)
    first.ack()
    assert (first.subject, first.msg_id, first.body.job_id) == (
        subjects.JOBS_REQUESTED,
        "J3:1:0",
        "J3",
    )
    assert core.get(timeout=5).job_id == "J3"
    with pytest.raises(queue.Empty):
        durable.get(timeout=1.5)


def test_a_flushed_outbox_is_published_once_under_its_revision_and_cleared(bus: Bus) -> None:
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    store = bus.store(subjects.BUCKET_JOBS, Boxed)
    boxed = Boxed(name="b", outbox=[JobsCancelled(task_id="DEMO-4", reason="flush")])
    revision = store.create("boxed", boxed)
    stored = store.get("boxed")
    assert stored is not None
    # A crash after publishing and before clearing publishes the same outbox again.
    bus.emit(boxed.outbox[0], msg_id=f"boxed:{revision}:0")
    flushed = flush_outbox(bus, store, "boxed", stored, boxed.outbox, fault="test.flushed")
    assert flushed.value.outbox == []
    again = store.get("boxed")
    assert again is not None
    assert again.revision == flushed.revision
    assert again.value.outbox == []
    _follow(bus, "test_flush", subjects.JOBS_CANCELLED, got)
    first = got.get(timeout=10)
    first.ack()
    assert (first.msg_id, first.body) == (f"boxed:{revision}:0", boxed.outbox[0])
    with pytest.raises(queue.Empty):
        got.get(timeout=1.5)


def test_a_request_nobody_answers_is_a_bus_error(bus: Bus) -> None:
    with pytest.raises(BusUnavailable):
        bus.request("conveyor.status.nobody", b"", timeout_s=0.5)


def test_connecting_to_a_dead_server_fails_clearly() -> None:
    with pytest.raises(BusUnavailable, match="cannot connect"):
        Bus.connect("nats://127.0.0.1:1", connect_timeout_s=0.5)


def test_a_message_fetched_by_a_process_that_died_comes_back_after_a_short_ack_wait(
    nats_url: str,
) -> None:
    # Given a process that fetched a message and died before acking it
    first: queue.Queue[Delivery[Any]] = queue.Queue()
    dead = Bus.connect(nats_url, ack_wait_s=1.0)
    dead.setup()
    dead.publish(subjects.JOBS_CANCELLED, JobsCancelled(task_id="DEMO-5"), msg_id="dead1")
    decoder = msgspec.json.Decoder(JobInput)
    dead.consume(subjects.STREAM_JOBS, "test_dead", [subjects.JOBS_CANCELLED], decoder, first.put)
    assert first.get(timeout=10).body == JobsCancelled(task_id="DEMO-5")
    dead.close()

    # When its successor binds the same consumer, then the message comes back to it
    again: queue.Queue[Delivery[Any]] = queue.Queue()
    successor = Bus.connect(nats_url, ack_wait_s=1.0)
    try:
        successor.consume(
            subjects.STREAM_JOBS, "test_dead", [subjects.JOBS_CANCELLED], decoder, again.put
        )
        back = again.get(timeout=15)  # the old ack_wait (60 s) would run past this
        assert back.body == JobsCancelled(task_id="DEMO-5")
        assert back.num_delivered == 2
        back.ack()
    finally:
        successor.close()


def test_a_live_process_keeps_a_message_it_holds_past_the_ack_wait(nats_url: str) -> None:
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    bus = Bus.connect(nats_url, ack_wait_s=1.0)
    try:
        bus.setup()
        bus.publish(subjects.JOBS_CANCELLED, JobsCancelled(task_id="DEMO-6"), msg_id="live1")
        _follow(bus, "test_live", subjects.JOBS_CANCELLED, got)
        held = got.get(timeout=10)
        assert bus.inflight.count() == 1

        # Held (as in a busy actor's mailbox) for several ack waits: not delivered again
        with pytest.raises(queue.Empty):
            got.get(timeout=4.0)

        held.ack()
        assert bus.inflight.count() == 0
    finally:
        bus.close()


def test_a_request_given_up_on_ends_before_its_timeout(bus: Bus) -> None:
    # Given a responder that takes requests and never answers (a process about to die)
    async def _silent() -> None:
        async def _drop(_msg: Any) -> None:
            return None

        await bus.nc.subscribe("conveyor.test.silent", cb=_drop)

    bus.call(_silent())
    gave_up = threading.Event()
    ended: queue.Queue[BaseException] = queue.Queue()

    def _ask() -> None:
        try:
            bus.request("conveyor.test.silent", b"", timeout_s=120.0, give_up=gave_up.is_set)
        except BusUnavailable as err:
            ended.put(err)

    threading.Thread(target=_ask, daemon=True).start()
    with pytest.raises(queue.Empty):
        ended.get(timeout=0.5)  # still waiting for the answer

    # When the caller gives up, then the wait ends long before the request's timeout
    gave_up.set()
    assert isinstance(ended.get(timeout=10), BusUnavailable)


def test_a_quiesced_bus_delivers_nothing_more_but_still_takes_acks(nats_url: str) -> None:
    bus = Bus.connect(nats_url)
    bus.setup()
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    bus.publish(subjects.JOBS_CANCELLED, JobsCancelled(task_id="DEMO-3"), msg_id="q1")
    _follow(bus, "test_quiesce", subjects.JOBS_CANCELLED, got)
    held = got.get(timeout=10)
    bus.quiesce()
    bus.publish(subjects.JOBS_CANCELLED, JobsCancelled(task_id="DEMO-4"), msg_id="q2")
    held.ack()
    with pytest.raises(queue.Empty):
        got.get(timeout=1.0)
    bus.close()
    # The ack landed before the close: a fresh consumer of the same durable gets only
    # the message published after the quiesce.
    again = Bus.connect(nats_url)
    try:
        later: queue.Queue[Delivery[Any]] = queue.Queue()
        _follow(again, "test_quiesce", subjects.JOBS_CANCELLED, later)
        first = later.get(timeout=10)
        assert first.body == JobsCancelled(task_id="DEMO-4")
        first.ack()
    finally:
        again.close()


def test_settling_after_the_bus_closed_leaves_no_pending_task(nats_url: str) -> None:
    bus = Bus.connect(nats_url)
    bus.setup()
    bus.close()
    ran: list[int] = []

    async def _never() -> None:
        ran.append(1)

    coro = _never()
    future = bus.loop.submit(coro)
    assert future.cancelled()
    # Closed, not merely dropped: a dropped coroutine warns "never awaited".
    assert coro.cr_frame is None
    assert ran == []
