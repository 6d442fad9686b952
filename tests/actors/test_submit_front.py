"""The submit front on the bus loop and the StageEngine that plans for it, on a real nats-server."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from actors.stage_engine import StatusQuery
from actors.submit_front import SubmitFront
from actors.task_policy import Task
from actors.task_submit import PlanSubmit, SubmitPlan
from bus import subjects
from bus.bridge import Bus
from bus.messages import JobRequested, Reply, Submit
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest, Captured
from tests.harness import make_config

pytestmark = pytest.mark.timeout(60)


def _start(tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock) -> ActorUnderTest:
    cfg = make_config(tmp_path / "data", nats_url)
    ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
    return ActorUnderTest(wiring.SPECS["stage_engine"], ctx, clock)


def _plan(engine: ActorUnderTest, command: Submit) -> SubmitPlan | Reply:
    answer: concurrent.futures.Future[SubmitPlan | Reply] = concurrent.futures.Future()
    engine.ref.tell(PlanSubmit(command, answer))
    return answer.result(timeout=ASK_TIMEOUT_S)


def test_plans_not_stored_yet_never_share_an_id(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        # When two submits are planned before either record is stored
        first = _plan(engine, Submit(repo="demo", title="one"))
        second = _plan(engine, Submit(repo="demo", title="two"))

        # Then the second took the next number: the first's was reserved when planned
        assert isinstance(first, SubmitPlan)
        assert isinstance(second, SubmitPlan)
        assert (first.task_id, second.task_id) == ("DEMO-1", "DEMO-2")
        # ... and nothing is stored by planning
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
