"""A submit is answered once the task is durable; its outbox follows, cleared at the next tick."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.messages import JobRequested, StageChanged, Submit
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest, Captured
from tests.harness import make_config

pytestmark = pytest.mark.timeout(60)


def _start(tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock) -> ActorUnderTest:
    cfg = make_config(tmp_path / "data", nats_url)
    ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
    return ActorUnderTest(wiring.SPECS["stage_engine"], ctx, clock)


def test_a_submits_outbox_is_sent_after_the_reply_and_cleared_once_at_the_tick(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    requests = Captured(bus, subjects.JOBS_REQUESTED, JobRequested)
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        reply = engine.ref.ask(Submit(repo="demo", title="one"), timeout=ASK_TIMEOUT_S)
        assert reply.ok, reply
        task_id = reply.task["id"]
        (request,) = requests.wait_for(JobRequested, what="the submit's job request")
        assert request.task_id == task_id
        # Sent, but still stored with the task until the next tick clears it.
        stored = tasks.get(task_id)
        assert stored is not None
        assert [type(m) for m in stored.value.outbox] == [JobRequested, StageChanged]
        engine.tick(1.0)
        cleared = tasks.get(task_id)
        assert cleared is not None
        assert (cleared.value.outbox, cleared.revision) == ([], tasks.last_seq())
        assert cleared.value.stage == stored.value.stage
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_a_restart_before_the_tick_sends_the_stored_outbox_again_and_clears_it(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        reply = engine.ref.ask(Submit(repo="demo", title="one"), timeout=ASK_TIMEOUT_S)
        assert reply.ok, reply
    finally:
        engine.ref.stop(block=True, timeout=10)
    task_id = reply.task["id"]
    stored = tasks.get(task_id)
    assert stored is not None
    assert stored.value.outbox  # the stop came before any tick

    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        engine.tick(1.0)
        cleared = tasks.get(task_id)
        assert cleared is not None
        assert cleared.value.outbox == []
    finally:
        engine.ref.stop(block=True, timeout=10)
