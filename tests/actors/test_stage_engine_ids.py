"""StageEngine alone on a real nats-server: new ids and healing come from its indexes."""

from __future__ import annotations

from pathlib import Path

from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.messages import Submit
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest
from tests.harness import make_config


def _done(task_id: str) -> Task:
    return Task(
        id=task_id,
        repo="demo",
        title="t",
        branch=f"feature/{task_id}-t",
        stage="done",
        created_at=1.0,
        updated_at=1.0,
    )


def test_a_new_id_follows_the_highest_stored_number_of_its_prefix(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    store = bus.store(subjects.BUCKET_TASKS, Task)
    # Out of order, with a gap, and another prefix's higher number beside them.
    for task_id in ("DEMO-9", "DEMO-2", "DEMOX-40"):
        store.create(task_id, _done(task_id))
    cfg = make_config(tmp_path / "data", nats_url)
    # No gate is read here: a stand-in forge that nothing calls.
    ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
    engine = ActorUnderTest(wiring.SPECS["stage_engine"], ctx, clock)
    try:
        first = engine.ref.ask(Submit(repo="demo", title="one"), timeout=ASK_TIMEOUT_S)
        second = engine.ref.ask(Submit(repo="demo", title="two"), timeout=ASK_TIMEOUT_S)
        assert first.ok, first
        assert second.ok, second
        assert (first.task["id"], second.task["id"]) == ("DEMO-10", "DEMO-11")
    finally:
        engine.ref.stop(block=True, timeout=10)
