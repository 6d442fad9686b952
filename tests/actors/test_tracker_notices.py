"""TrackerSync from the wiring table on a real nats-server, over the fake Plane.

Trouble is never silent on the board: each alert becomes exactly one comment (kept
in the effect ledger), trouble kinds move the card to their configured state, and
a cancelled task's card moves to the cancelled state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.notice_policy import KIND_GATE_FAILED
from actors.task_summary import GetTask, TaskSummary
from bus import subjects
from bus.effects import DONE, Effect
from bus.messages import Alert, StageChanged
from conveyor.config import Config
from gateways.tracker_sync import comment_effect
from tests.actors.conftest import ActorUnderTest, StartActor
from tests.fakes.plane import FIXTURE_PROJECT, FakePlane
from tests.harness import make_config, wait_until

KEY = "plane-test-key"
TROUBLE = {
    "escalated": "Needs Attention",
    "awaiting_confirm": "Awaiting Confirm",
    "awaiting_approval": "Awaiting Approval",
    "cancelled": "Dropped",
}


@pytest.fixture
def plane() -> Iterator[FakePlane]:
    with FakePlane(KEY, "acme", webhook_secret="s") as fake:
        for name in TROUBLE.values():
            fake.add_state(FIXTURE_PROJECT, name)
        yield fake


def plane_cfg(tmp_path: Path, nats_url: str, plane: FakePlane, **trouble: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        tracker={"kind": "plane"},
        plane={
            "url": plane.url,
            "api_key": KEY,
            "workspace": "acme",
            "timeout_s": 2.0,
            "trouble_states": trouble,
        },
        repos=[{"name": "demo", "prefix": "DEMO", "plane_project": FIXTURE_PROJECT}],
    )


def summary(external_id: str) -> TaskSummary:
    return TaskSummary(
        id="DEMO-1",
        repo="demo",
        title="t",
        stage="development",
        step="work",
        job_id="",
        job_status="",
        escalated=False,
        approved=False,
        developer_retries=0,
        branch="conveyor/DEMO-1",
        reason="",
        updated_at=0.0,
        head_sha="",
        hold="",
        tracker_state="",
        external_id=external_id,
        cost_usd=0.0,
    )


def start_sync(start_actor: StartActor, stub: Any, cfg: Config, item_id: str) -> ActorUnderTest:
    engine = stub(lambda m: summary(item_id) if isinstance(m, GetTask) else None)
    return start_actor("tracker_sync", config=cfg, stage_engine=engine)


def alert(kind: str, text: str) -> Alert:
    return Alert(level="warning", text=text, task_id="DEMO-1", source="stage_engine", kind=kind)


def texts(plane: FakePlane, item_id: str) -> list[str]:
    return [c["comment_html"] for c in plane.call(lambda: list(plane.comments.get(item_id, [])))]


def test_a_failed_gate_is_one_comment_kept_in_the_ledger(
    start_actor: StartActor, stub: Any, tmp_path: Path, nats_url: str, plane: FakePlane
):
    item = plane.create_item(FIXTURE_PROJECT, "Add retry to widget sync")
    sync = start_sync(start_actor, stub, plane_cfg(tmp_path, nats_url, plane), item["id"])
    failed = alert(KIND_GATE_FAILED, "DEMO-1 development failed: CI failure; attempt 1 of 3")

    sync.bus.emit(failed, msg_id="DEMO-1:7:1")
    sync.bus.emit(failed, msg_id="DEMO-1:7:1")
    found = wait_until(lambda: texts(plane, item["id"]), what="the comment")

    assert len(found) == 1
    assert "attempt 1 of 3" in found[0]
    ledger = sync.bus.store(subjects.BUCKET_EFFECTS, Effect)
    record = wait_until(lambda: ledger.get(comment_effect("DEMO-1:7:1")), what="ledger")
    assert record.value.status == DONE
    # A gate failure is no trouble kind: the card stays where the human put it
    assert plane.state_of(item["id"]) == "Backlog"


def test_trouble_moves_the_card_to_its_configured_state(
    start_actor: StartActor, stub: Any, tmp_path: Path, nats_url: str, plane: FakePlane
):
    item = plane.create_item(FIXTURE_PROJECT, "Add retry to widget sync")
    cfg = plane_cfg(tmp_path, nats_url, plane, **TROUBLE)
    sync = start_sync(start_actor, stub, cfg, item["id"])

    for number, kind in enumerate(("awaiting_approval", "awaiting_confirm", "escalated")):
        sync.bus.emit(alert(kind, f"DEMO-1 {kind}"), msg_id=f"DEMO-1:{number}:0")
        wait_until(lambda k=kind: plane.state_of(item["id"]) == TROUBLE[k], what=kind)

    cancelled = StageChanged(
        task_id="DEMO-1",
        repo="demo",
        old="development",
        new="cancelled",
        cause="cancelled: moved to Won't Do in Plane",
        revision=9,
        at=0.0,
    )
    sync.bus.emit(cancelled, msg_id="DEMO-1:9:0")
    wait_until(lambda: plane.state_of(item["id"]) == "Dropped", what="the card cancelled")
    assert len(texts(plane, item["id"])) == 4


def test_with_no_trouble_states_configured_the_board_is_left_alone(
    start_actor: StartActor, stub: Any, tmp_path: Path, nats_url: str, plane: FakePlane
):
    item = plane.create_item(FIXTURE_PROJECT, "Add retry to widget sync")
    sync = start_sync(start_actor, stub, plane_cfg(tmp_path, nats_url, plane), item["id"])

    sync.bus.emit(alert("escalated", "DEMO-1 escalated"), msg_id="DEMO-1:3:0")
    wait_until(lambda: texts(plane, item["id"]), what="the escalation comment")

    assert plane.state_of(item["id"]) == "Backlog"
