"""Reconciler decisions: which quiet tasks get their gate read again, which Plane states replay."""

from __future__ import annotations

import pytest

from actors import reconciler_policy as rp
from conveyor.config import load

PROJECT = "22b6fc9c-1849-45da-b103-52a3e3a6b4c1"
CFG = load(
    env={},
    overrides={
        "reconciler": {"grace_s": 30.0, "stage_grace_s": {"deploy": 120.0}},
        "repos": [{"name": "widgets", "prefix": "WID", "plane_project": PROJECT}],
    },
)
NOW = 10_000.0


def row(stage: str = "development", **changes: object) -> rp.TaskRow:
    fields: dict[str, object] = {
        "id": "WID-1",
        "repo": "widgets",
        "stage": stage,
        "step": "work",
        "job_id": f"WID-1.{stage}.1.work",
        "job_status": "done",
        "updated_at": NOW - 60,
    }
    fields.update(changes)
    return rp.TaskRow(**fields)  # type: ignore[arg-type]


def test_a_task_quiet_past_its_grace_gets_its_gate_read_again():
    (replay,) = rp.due([row()], now=NOW, replayed_at={}, cfg=CFG)
    assert replay.task_id == "WID-1"
    assert "quiet on development for 60s" in replay.reason


def test_a_task_within_its_grace_is_left_alone():
    assert rp.due([row(updated_at=NOW - 29)], now=NOW, replayed_at={}, cfg=CFG) == []


def test_the_grace_is_per_stage():
    assert rp.grace_for("deploy", CFG) == 120.0
    assert rp.grace_for("review", CFG) == 30.0
    assert rp.due([row("deploy", updated_at=NOW - 100)], now=NOW, replayed_at={}, cfg=CFG) == []


def test_a_replay_happens_at_most_once_per_grace():
    assert rp.due([row()], now=NOW, replayed_at={"WID-1": NOW - 10}, cfg=CFG) == []
    assert len(rp.due([row()], now=NOW, replayed_at={"WID-1": NOW - 31}, cfg=CFG)) == 1


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"stage": "done"}, "task is done"),
        ({"stage": "cancelled"}, "task is cancelled"),
        ({"escalated": True}, "escalated"),
        ({"hold": "blocked"}, "held (blocked)"),
        ({"hold": "needs_input"}, "held (needs_input)"),
        ({"stage": "analysis"}, "waits for a human"),
        ({"job_status": "running"}, "its job is running"),
        ({"job_status": "queued"}, "its job is queued"),
    ],
)
def test_tasks_the_reconciler_never_touches(changes: dict[str, object], why: str):
    task = row(**changes)
    assert why in rp.skip_reason(task, CFG)
    assert rp.due([task], now=NOW, replayed_at={}, cfg=CFG) == []


def test_skipping_held_tasks_can_be_switched_off():
    cfg = load(env={"CONVEYOR_RECONCILER__SKIP_BLOCKED": "false"})
    assert rp.skip_reason(row(hold="blocked"), cfg) == ""


def polled(state: str, seq: int = 1, **changes: object) -> rp.PolledItem:
    fields: dict[str, object] = {
        "project_id": PROJECT,
        "id": f"uuid-{seq}",
        "sequence_id": seq,
        "name": "Add retry",
        "state_id": f"s-{state}",
        "state_name": state,
        "updated_at": "2026-11-30T10:00:00Z",
    }
    fields.update(changes)
    return rp.PolledItem(**fields)  # type: ignore[arg-type]


def test_a_polled_in_progress_item_without_a_task_is_replayed_once():
    ((msg_id, event),) = rp.plane_replays([polled("In Progress")], {}, cfg=CFG)
    assert msg_id == "plane-poll:uuid-1:s-In Progress:none"
    assert (event.sequence_id, event.state_name, event.source) == (1, "In Progress", "poll")


def test_a_state_the_task_already_saw_is_not_replayed():
    rows = {"WID-1": row("analysis", tracker_state="approved")}
    assert rp.plane_replays([polled("Approved")], rows, cfg=CFG) == []


def test_a_state_the_task_never_saw_is_replayed():
    rows = {"WID-1": row("analysis", tracker_state="in_progress")}
    ((msg_id, event),) = rp.plane_replays([polled("Approved")], rows, cfg=CFG)
    assert msg_id.endswith(":in_progress")
    assert event.state_name == "Approved"


@pytest.mark.parametrize("state", ["Confirm Deploy", "Done", "Backlog", "In Review"])
def test_confirm_deploy_and_unknown_states_are_never_replayed(state: str):
    rows = {"WID-1": row("deploy", tracker_state="in_progress")}
    assert rp.plane_replays([polled(state)], rows, cfg=CFG) == []


def test_approved_for_an_item_without_a_task_and_foreign_projects_are_not_replayed():
    assert rp.plane_replays([polled("Approved")], {}, cfg=CFG) == []
    assert rp.plane_replays([polled("In Progress", project_id="other")], {}, cfg=CFG) == []


def test_terminal_tasks_get_no_replays():
    rows = {"WID-1": row("done", tracker_state="in_progress")}
    assert rp.plane_replays([polled("Blocked")], rows, cfg=CFG) == []


def test_the_reconciler_never_starts_a_production_deploy_waiting_for_confirmation():
    waiting = row("deploy", step="confirm", job_id="", job_status="", updated_at=NOW - 9999)
    assert rp.due([waiting], now=NOW, replayed_at={}, cfg=CFG) == []
    assert "Confirm Deploy" in rp.skip_reason(waiting, CFG)


def test_the_first_poll_reads_everything_then_only_what_moved_since() -> None:
    pending = {"item-2": "proj-b", "item-1": "proj-a"}
    assert rp.poll_scope(None, pending, now=100.0, last_full=float("-inf")) == (
        None,
        (("proj-a", "item-1"), ("proj-b", "item-2")),
    )
    since, also = rp.poll_scope(5000.0, {}, now=200.0, last_full=100.0)
    assert since == 5000.0 - rp.RECHECK_S
    assert also == ()


def test_the_whole_list_is_read_again_once_a_full_period_passed() -> None:
    assert rp.poll_scope(5000.0, {}, now=100.0 + rp.FULL_POLL_S, last_full=100.0)[0] is None
    assert rp.poll_scope(5000.0, {}, now=99.0 + rp.FULL_POLL_S, last_full=100.0)[0] is not None
