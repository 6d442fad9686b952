"""The submit front on the bus loop and the StageEngine that plans for it, on a real nats-server."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from actors.stage_engine import StatusQuery
from actors.submit_front import SubmitFront
from actors.task_policy import Task
from actors.task_submit import Prepared, RulesQuery, SubmitRules, prepare
from bus import subjects
from bus.bridge import Bus
from bus.messages import JobRequested, Submit
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest, Captured
from tests.harness import make_config

pytestmark = pytest.mark.timeout(60)


def _start(tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock) -> ActorUnderTest:
    cfg = make_config(tmp_path / "data", nats_url)
    ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
    return ActorUnderTest(wiring.SPECS["stage_engine"], ctx, clock)


def test_submits_decided_before_either_is_stored_never_share_an_id(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        answer: concurrent.futures.Future[SubmitRules] = concurrent.futures.Future()
        engine.ref.tell(RulesQuery(answer))
        rules = answer.result(timeout=ASK_TIMEOUT_S)

        # When the front decides submits and the engine one by ask, none of them stored
        first = prepare(Submit(repo="demo", title="one"), rules.cfg, rules.ids, now=1.0)
        second = engine.ref.ask(Submit(repo="demo", title="two"), timeout=ASK_TIMEOUT_S)
        given = Submit(repo="demo", title="three", id="DEMO-7")
        third = prepare(given, rules.cfg, rules.ids, now=1.0)
        fourth = prepare(Submit(repo="demo", title="four"), rules.cfg, rules.ids, now=1.0)

        # Then each has a number of its own: the front's were reserved when decided
        assert isinstance(first, Prepared)
        assert isinstance(third, Prepared)
        assert isinstance(fourth, Prepared)
        assert (first.task_id, second.task["id"]) == ("DEMO-1", "DEMO-2")
        assert (third.task_id, fourth.task_id) == ("DEMO-7", "DEMO-8")
        # ... and nothing is stored by deciding
        assert bus.store(subjects.BUCKET_TASKS, Task).get("DEMO-1") is None
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_an_answered_submit_is_stored_known_to_the_engine_sent_and_cleared_at_the_tick(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    requests = Captured(bus, subjects.JOBS_REQUESTED, JobRequested)
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    engine = _start(tmp_path, nats_url, bus, clock)
    front = SubmitFront(bus, engine.ref, tasks, timeout_s=ASK_TIMEOUT_S)
    try:
        # When a submit is answered by the front
        reply = bus.call(front.submit(Submit(repo="demo", title="one")))

        # Then the record is durable, and the engine answers for it at once
        assert reply.ok, reply
        task_id = reply.task["id"] if reply.task else ""
        stored = tasks.get(task_id)
        assert stored is not None
        assert stored.value.outbox  # stored with its outbox, before the answer
        known = engine.ref.ask(StatusQuery(kind="task", task_id=task_id), timeout=ASK_TIMEOUT_S)
        assert (known["id"], known["revision"]) == (task_id, stored.revision)
        # ... its outbox is sent, and the tick after that clears it (one write)
        (request,) = requests.wait_for(JobRequested, what="the submit's job request")
        assert request.task_id == task_id
        engine.status()  # the engine has handled what the front told it
        engine.tick(1.0)
        cleared = tasks.get(task_id)
        assert cleared is not None
        assert (cleared.value.outbox, cleared.revision) == ([], stored.revision + 1)
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_a_front_whose_engine_is_down_answers_and_stores_nothing(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    engine = _start(tmp_path, nats_url, bus, clock)
    engine.ref.stop(block=True, timeout=10)
    front = SubmitFront(bus, engine.ref, tasks, timeout_s=ASK_TIMEOUT_S)

    reply = bus.call(front.submit(Submit(repo="demo", title="one", id="DEMO-7")))

    assert not reply.ok
    assert "stage engine unavailable" in (reply.error or "")
    assert tasks.get("DEMO-7") is None
