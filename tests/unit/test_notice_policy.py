"""What a task's change says to people, and the pure tracker and replay decisions around it."""

from __future__ import annotations

import msgspec
import pytest

from actors import intake_policy as ip
from actors import notice_policy as notice
from actors import reconciler_policy as rp
from actors.gate_policy import GateResult
from actors.task_policy import Decision, Task
from bus.messages import Cancel, TrackerUpdate, WorkItemEvent
from conveyor.config import load

PROJECT = "22b6fc9c-1849-45da-b103-52a3e3a6b4c1"
CFG = load(
    env={},
    overrides={
        "repos": [
            {"name": "widgets", "prefix": "WID", "plane_project": PROJECT, "protected": True}
        ],
        "plane": {"cancel_state": "Won't Do"},
    },
)
TASK = Task(
    id="WID-1",
    repo="widgets",
    title="t",
    branch="feature/WID-1",
    stage="development",
    step="work",
    job_id="WID-1.development.1.work",
    job_status="done",
)


def change(**fields: object) -> Task:
    return msgspec.structs.replace(TASK, **fields)  # type: ignore[arg-type]


# --- notices -------------------------------------------------------------------------------


def test_a_developer_retry_says_what_failed_and_which_attempt_of_how_many():
    after = change(developer_retries=1, last_reason="CI failure for branch head", job_id="j2")
    (alert,) = notice.notices(TASK, after, CFG, now=5.0)
    assert alert.kind == notice.KIND_GATE_FAILED
    assert alert.task_id == "WID-1"
    assert alert.text == (
        "WID-1 development failed: CI failure for branch head; retrying development, attempt 1 of 3"
    )


def test_a_stage_retry_counts_against_the_stage_budget():
    before = change(stage="review")
    after = change(stage="review", stage_retries=2, last_reason="bad front matter")
    (alert,) = notice.notices(before, after, CFG, now=5.0)
    assert "attempt 2 of 3" in alert.text


def test_a_rework_names_where_the_task_goes_back_to():
    before = change(stage="review")
    after = change(stage="development", developer_retries=1, last_reason="changes requested")
    (alert,) = notice.notices(before, after, CFG, now=5.0)
    assert "review failed: changes requested; back to development, attempt 1 of 3" in alert.text


@pytest.mark.parametrize(
    "after",
    [
        change(last_reason="CI pending"),
        change(stage="review", job_id="WID-1.review.1.work"),
        change(developer_retries=4, escalated=True),
    ],
)
def test_a_wait_a_move_on_or_an_escalation_gives_no_failed_gate_notice(after: Task):
    assert notice.notices(TASK, after, CFG, now=5.0) == ()


def test_the_start_of_a_production_deploy_is_announced_once():
    parked = change(stage="deploy", step="confirm", job_id="")
    started = change(stage="deploy", step="work", job_id="WID-1.deploy.2.work")
    (alert,) = notice.notices(parked, started, CFG, now=5.0)
    assert alert.kind == notice.KIND_DEPLOY_STARTED
    assert "production deploy of widgets started (job WID-1.deploy.2.work)" in alert.text
    assert notice.notices(started, started, CFG, now=6.0) == ()
    staging = change(stage="deploy-staging", job_id="WID-1.deploy-staging.1.work")
    assert notice.notices(TASK, staging, CFG, now=5.0) == ()


def test_with_notices_adds_to_the_decisions_emits_and_leaves_no_change_alone():
    after = change(developer_retries=1, last_reason="CI failure")
    decided = notice.with_notices(TASK, Decision(task=after, reason="retrying"), CFG, now=1.0)
    assert [a.kind for a in decided.emit] == [notice.KIND_GATE_FAILED]
    unchanged = Decision(reason="still waiting")
    assert notice.with_notices(TASK, unchanged, CFG, now=1.0) is unchanged


# --- board moves -----------------------------------------------------------------------------


def event(field: str = "state_id", state_id: str = "s-1", **more: object) -> WorkItemEvent:
    fields: dict[str, object] = {
        "delivery_id": "d1",
        "action": "updated",
        "project_id": PROJECT,
        "work_item_id": "w-1",
        "sequence_id": 1,
        "state_id": state_id,
        "state_name": "Rejected",
        "field": field,
    }
    fields.update(more)
    return WorkItemEvent(**fields)  # type: ignore[arg-type]


def test_only_a_state_field_is_a_move():
    assert ip.not_a_move(event("state_id"), None) == ""
    assert ip.not_a_move(event("state"), None) == ""
    assert "labels edited" in ip.not_a_move(event("labels"), None)
    # A creation names no field: the state it shows is taken
    assert ip.not_a_move(event("", action="created"), None) == ""


def test_a_state_already_acted_on_is_not_acted_on_again():
    last = ip.CardState(state_id="s-1", state_name="Rejected", key="plane:d0")
    assert "already acted on" in ip.not_a_move(event(), last)
    assert "already acted on" in ip.not_a_move(event("state", source="poll"), last)
    assert ip.not_a_move(event(state_id="s-2"), last) == ""


def test_a_card_moved_to_the_cancel_state_cancels_its_task():
    route = ip.route_work_item(event(), "Won't Do", key="plane:d1", cfg=CFG)
    assert route.inputs == (Cancel(id="WID-1", reason="moved to Won't Do in Plane"),)
    other = ip.route_work_item(event(), "Rejected", key="plane:d1", cfg=CFG)
    assert isinstance(other.inputs[0], TrackerUpdate)


# --- replays -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "verdict", "acts"),
    [
        ("ci_green", "pass", True),
        ("ci_green", "retry", True),
        ("ci_green", "wait", False),
        ("review_approved", "rework", False),
        ("analysis_complete", "retry", False),
    ],
)
def test_a_replay_acts_on_green_and_on_a_red_ci_only(gate: str, verdict: str, acts: bool):
    assert rp.replay_acts(gate, GateResult(verdict=verdict, reason="r"), CFG) is acts  # type: ignore[arg-type]


def test_a_red_ci_replay_can_be_switched_off():
    cfg = load(env={}, overrides={"reconciler": {"retry_red_ci": False}})
    assert not rp.replay_acts("ci_green", GateResult(verdict="retry", reason="r"), cfg)


def test_a_replay_move_is_a_change_of_stage_step_or_job():
    assert rp.replay_move(TASK, TASK) is None
    assert rp.replay_move(TASK, None) is None
    moved = rp.replay_move(TASK, change(job_id="j2", last_reason="CI failure"))
    assert moved == rp.ReplayMove(
        task_id="WID-1",
        old_stage="development",
        new_stage="development",
        job_id=TASK.job_id,
        reason="CI failure",
    )
    assert rp.unblocked_text(moved) == (
        "reconciler unblocked WID-1: development → development (a lost event: CI failure)"
    )
