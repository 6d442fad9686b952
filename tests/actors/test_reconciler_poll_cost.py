"""Reconciler: a Plane poll compares only the cards that moved, not every card ever made.

Plane lists every work item of a project on each poll. The first poll since start
compares them all with their tasks; later ones only those updated since (on Plane's
clock) and those whose replay was published last time, until their task agrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.reconciler import PollDone, Reconciler, ReconcilerStatus
from actors.task_summary import GetTasks
from bus.bridge import Bus
from bus.messages import PolledItem
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, received
from tests.harness import make_config

pytestmark = pytest.mark.timeout(30)

PROJECT = "11111111-2222-4333-8444-555555555555"
OLD = "2025-06-01T00:00:00+00:00"
EARLY = "2026-01-01T00:00:00+00:00"
LATER = "2026-01-01T02:00:00+00:00"


def _item(number: int, state: str = "Backlog", updated_at: str = OLD) -> PolledItem:
    return PolledItem(
        project_id=PROJECT,
        id=f"item-{number}",
        sequence_id=number,
        name=f"card {number}",
        state_id=f"state-{state}",
        state_name=state,
        updated_at=updated_at,
    )


def test_later_polls_compare_only_the_cards_that_moved(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock, stub: Any
):
    cfg = make_config(
        tmp_path / "data",
        nats_url,
        repos=[{"name": "demo", "prefix": "DEMO", "plane_project": PROJECT}],
    )
    tasks: dict[str, dict[str, Any]] = {}

    def _answer(message: Any) -> Any:
        if isinstance(message, GetTasks):
            return {i: tasks[i] for i in message.task_ids if i in tasks}
        return None

    engine = stub(_answer)
    reconciler = Reconciler.start(engine, bus, clock, cfg)
    try:

        def poll(items: list[PolledItem]) -> tuple[str, ...]:
            reconciler.tell(PollDone(items=items))
            reconciler.ask(ReconcilerStatus(), timeout=ASK_TIMEOUT_S)
            return received(engine, GetTasks)[-1].task_ids

        # A year of cards, one of them just put In Progress with no task yet.
        cards = [_item(n) for n in range(1, 301)]
        started = _item(301, "In Progress", updated_at=EARLY)
        assert len(poll([*cards, started])) == 301  # the first poll since start: all

        # Nothing moved but the card whose replay was published: only it is compared.
        assert poll([*cards, started]) == ("DEMO-301",)
        # Its task exists now and agrees. One other card moves: it is compared, and the
        # last one is still within the recheck window of the newest stamp.
        tasks["DEMO-301"] = {"id": "DEMO-301", "repo": "demo", "stage": "analysis"}
        tasks["DEMO-301"]["tracker_state"] = "in_progress"
        moved = [*cards[:6], _item(7, "Approved", updated_at=LATER), *cards[7:], started]
        assert sorted(poll(moved)) == ["DEMO-301", "DEMO-7"]
        # Nothing moved since: only the newest card, however many there are.
        assert poll(moved) == ("DEMO-7",)
        status = reconciler.ask(ReconcilerStatus(), timeout=ASK_TIMEOUT_S)
        assert status["compared_total"] == 301 + 1 + 2 + 1
    finally:
        reconciler.stop(block=True, timeout=10)
