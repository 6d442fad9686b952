"""Tracker events on the bus drive a work item: In Progress starts it, Approved approves it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bus import subjects
from bus.messages import WorkItemEvent
from tests.harness import ALL_STAGES, Harness, wait_until

pytestmark = pytest.mark.e2e

PROJECT = "0b7c6a8e-5d4f-4e3a-9b2c-1d0e9f8a7b6c"
ITEM = "775c5716-5302-4617-bb9f-2cd843911268"


@pytest.fixture
def planned(harness_factory: Callable[..., Harness]) -> Harness:
    """A harness whose demo repository takes its work items from a Plane project."""
    return harness_factory(
        repos=[
            {
                "name": "demo",
                "prefix": "DEMO",
                "template": "demo",
                "plane_project": PROJECT,
                "check_command": ["{python}", "-m", "unittest", "discover", "-s", "tests"],
            }
        ],
        reconciler={"interval_s": 0.2, "grace_s": 0.5},
    )


def _moved(harness: Harness, delivery: str, state: str, **fields: Any) -> None:
    event = WorkItemEvent(
        delivery_id=delivery,
        action="updated",
        project_id=PROJECT,
        work_item_id=ITEM,
        sequence_id=fields.pop("sequence_id", 42),
        title=fields.pop("title", "Add retry to widget sync"),
        state_id=f"state-{state}",
        state_name=state,
        field="state_id",
    )
    harness.client.bus.publish(subjects.EVENTS_PLANE_WORK_ITEM, event, msg_id=f"plane:{delivery}")


def test_a_plane_item_moved_to_in_progress_is_delivered_after_approved(planned: Harness) -> None:
    # Given a Plane work item moved to In Progress (its webhook delivered twice)
    _moved(planned, "d-1", "In Progress")
    _moved(planned, "d-2", "In Progress")

    # Then one task exists, named after the repository prefix and Plane's sequence id
    task = wait_until(lambda: planned.task("DEMO-42").get("stage") == "analysis", what="analysis")
    tasks = planned.tasks()
    assert [t["id"] for t in tasks] == ["DEMO-42"]
    assert tasks[0]["external_id"] == ITEM
    assert task

    # When analysis waits for a human and the item is moved to Approved (delivered twice)
    wait_until(
        lambda: "awaiting approval" in planned.task("DEMO-42").get("last_reason", ""),
        what="analysis awaiting approval",
    )
    _moved(planned, "d-3", "Approved")
    _moved(planned, "d-3", "Approved")

    # Then it walks every stage once to done
    done = planned.wait_stage("DEMO-42", "done", approve=False)
    assert planned.stages_of("DEMO-42") == ALL_STAGES
    assert done["tracker_state"] == "approved"


def test_blocked_holds_a_task_and_in_progress_releases_it(planned: Harness) -> None:
    _moved(planned, "b-1", "In Progress", sequence_id=7, title="Hold me")
    wait_until(lambda: planned.task("DEMO-7").get("stage") == "analysis", what="analysis")

    _moved(planned, "b-2", "Blocked", sequence_id=7)
    held = wait_until(lambda: planned.task("DEMO-7").get("hold") == "blocked", what="held")
    assert held

    _moved(planned, "b-3", "In Progress", sequence_id=7)
    wait_until(lambda: planned.task("DEMO-7").get("hold") == "", what="released")
    assert len(planned.tasks()) == 1


def test_events_of_an_unknown_project_or_a_bad_title_change_nothing_harmful(
    planned: Harness,
) -> None:
    event = WorkItemEvent(
        delivery_id="x-1",
        action="updated",
        project_id="not-configured",
        work_item_id=ITEM,
        sequence_id=3,
        title="Ignored",
        state_id="s",
        state_name="In Progress",
    )
    planned.client.bus.publish(subjects.EVENTS_PLANE_WORK_ITEM, event, msg_id="plane:x-1")
    # A title with control characters and 300 characters is cleaned, not refused
    _moved(
        planned, "x-2", "In Progress", sequence_id=9, title="Line one\nline\ttwo\x00" + "y" * 300
    )

    task = wait_until(lambda: planned.task("DEMO-9").get("title"), what="DEMO-9 created")
    assert task.startswith("Line one line two")
    assert len(task) <= 200
    assert [t["id"] for t in planned.tasks()] == ["DEMO-9"]
    status = planned.client.request(subjects.status_actor("intake"))
    wait_until(
        lambda: planned.client.request(subjects.status_actor("intake"))["ignored"] >= 1,
        what="the unknown project's event counted as ignored",
    )
    assert status["healthy"]
