"""Durable consumers take many messages per pull request, each handed over as it lands."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.msg import Msg
from nats.js import api as js_api

from bus import pull, subjects
from bus.bridge import Bus, Delivery
from bus.messages import JobsCancelled


def _follow(bus: Bus, durable: str, into: queue.Queue[Delivery[Any]]) -> None:
    """Feed `conveyor.jobs.cancelled` through the durable consumer `durable` into `into`."""
    decoder = msgspec.json.Decoder(JobsCancelled)
    bus.consume(subjects.STREAM_JOBS, durable, [subjects.JOBS_CANCELLED], decoder, into.put)


def _cancelled(n: int) -> JobsCancelled:
    return JobsCancelled(task_id=f"DEMO-{n}")


def test_a_busy_consumer_takes_many_messages_per_pull_request(bus: Bus) -> None:
    requests: queue.Queue[Any] = queue.Queue()
    bus.subscribe_core(
        pull.next_subject(subjects.STREAM_JOBS, "test_batched"),
        msgspec.json.Decoder(dict[str, int]),
        requests.put,
    )
    for n in range(200):
        bus.publish(subjects.JOBS_CANCELLED, _cancelled(n), msg_id=f"c{n}")
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    _follow(bus, "test_batched", got)
    seen = []
    for _ in range(200):
        delivery = got.get(timeout=10)
        seen.append(delivery.body.task_id)
        delivery.ack()
    assert seen == [f"DEMO-{n}" for n in range(200)]
    # One request a batch, and one a second once idle (a slow machine may add a few):
    # fetched one at a time, it was one request a message.
    asked = requests.qsize()
    assert 200 / pull.BATCH <= asked <= 20, asked
    first = requests.get_nowait()
    assert first["batch"] == pull.BATCH


def test_a_message_is_handed_over_before_its_batch_fills_or_the_request_expires(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a request open for a minute, only handing each message over as it lands
    # delivers these within the wait below.
    monkeypatch.setattr(pull, "EXPIRES_S", 60.0)
    got: queue.Queue[Delivery[Any]] = queue.Queue()
    _follow(bus, "test_as_it_lands", got)
    for n in range(3):
        bus.publish(subjects.JOBS_CANCELLED, _cancelled(n), msg_id=f"l{n}")
        delivery = got.get(timeout=10)
        assert delivery.body.task_id == f"DEMO-{n}"
        delivery.ack()


def test_a_refused_request_is_asked_again_until_the_consumer_exists(nats_url: str) -> None:
    """No consumer yet (a restored server, a consumer being recreated): the puller waits."""

    async def scenario() -> list[str]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PULLTEST", subjects=["pulltest.>"])
        got: asyncio.Queue[Msg] = asyncio.Queue()
        done = False
        puller = pull.Puller(
            nc, pull.next_subject("PULLTEST", "late"), got.put_nowait, lambda: done
        )
        task = asyncio.ensure_future(puller.run())
        await js.publish("pulltest.a", b"1")
        # Nobody answers requests for a consumer that does not exist: refused, asked again.
        await asyncio.sleep(pull.RETRY_S * 2)
        assert got.empty()
        await js.add_consumer(
            "PULLTEST",
            js_api.ConsumerConfig(durable_name="late", ack_policy=js_api.AckPolicy.EXPLICIT),
        )
        await js.publish("pulltest.b", b"2")
        bodies = []
        for _ in range(2):
            msg = await asyncio.wait_for(got.get(), timeout=10)
            bodies.append(msg.data.decode())
            await msg.ack()
        done = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
        return bodies

    assert asyncio.run(scenario()) == ["1", "2"]


def test_a_stopping_puller_hands_over_nothing_more(nats_url: str) -> None:
    async def scenario() -> int:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name="PULLSTOP", subjects=["pullstop.>"])
        await js.add_consumer(
            "PULLSTOP",
            js_api.ConsumerConfig(durable_name="d", ack_policy=js_api.AckPolicy.EXPLICIT),
        )
        got: list[Msg] = []
        stopping = False
        puller = pull.Puller(nc, pull.next_subject("PULLSTOP", "d"), got.append, lambda: stopping)
        task = asyncio.ensure_future(puller.run())
        await js.publish("pullstop.a", b"1")
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.1)
        stopping = True
        await js.publish("pullstop.b", b"2")
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
        return len(got)

    assert asyncio.run(scenario()) == 1
