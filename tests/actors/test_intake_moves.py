"""Intake on a real nats-server: only a real board move of a Plane card acts, once.

The deliveries are the recorded Plane webhook, re-signed with another field or
state, and verified and normalized by the gateway's parser as in production.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest

from actors.intake_policy import CardState
from bus import subjects
from bus.bridge import Bus
from bus.messages import Cancel, Reply, TrackerUpdate, WorkItemEvent
from conveyor.app import wiring
from conveyor.clock import FakeClock
from conveyor.config import Config
from gateways import webhooks
from tests import webhook_fixtures as fx
from tests.actors.conftest import ActorUnderTest, StartActor, received
from tests.harness import make_config, wait_until

RECORDED = fx.payload("plane-issue-updated")
PROJECT = RECORDED["data"]["project"]
ITEM = RECORDED["data"]["id"]
TASK = f"DEMO-{RECORDED['data']['sequence_id']}"
STATES = {
    "In Review": RECORDED["data"]["state"]["id"],
    "Confirm Deploy": "c0c0c0c0-0000-4000-8000-000000000001",
    "Rejected": "c0c0c0c0-0000-4000-8000-000000000002",
    "Approved": "c0c0c0c0-0000-4000-8000-000000000003",
}


@pytest.fixture
def plane_cfg(tmp_path: Path, nats_url: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        repos=[{"name": "demo", "prefix": "DEMO", "plane_project": PROJECT}],
    )


def delivery(state: str, *, field: str = "state_id", old: str = "In Review") -> WorkItemEvent:
    """A recorded `issue` `updated` delivery: the card in `state`, `field` changed."""
    body = copy.deepcopy(RECORDED)
    body["data"]["state"] = {**body["data"]["state"], "id": STATES[state], "name": state}
    if field in webhooks.PLANE_STATE_FIELDS:
        body["activity"].update(field=field, new_value=STATES[state], old_value=STATES[old])
    else:
        body["activity"].update(field=field, new_value="edited", old_value="")
    headers, raw = fx.resigned("plane-issue-updated", body, delivery=str(uuid.uuid4()))
    result = webhooks.normalize("plane", headers, raw, secret=fx.SECRET)
    assert isinstance(result, webhooks.Normalized)
    assert isinstance(result.event, WorkItemEvent)
    return result.event


def polled(state: str, seen: str) -> tuple[str, WorkItemEvent]:
    """What the Reconciler publishes when a poll finds the card in `state`."""
    msg_id = f"plane-poll:{ITEM}:{STATES[state]}:{seen}"
    event = WorkItemEvent(
        delivery_id=msg_id,
        action="updated",
        project_id=PROJECT,
        work_item_id=ITEM,
        sequence_id=RECORDED["data"]["sequence_id"],
        title=RECORDED["data"]["name"],
        state_id=STATES[state],
        state_name=state,
        field="state",
        source="poll",
    )
    return msg_id, event


class Run:
    """Intake over a stand-in engine that takes every input, first in a process of its own."""

    def __init__(self, start_actor: StartActor, stub: Any, cfg: Config, nats_url: str) -> None:
        self.engine = stub(lambda _m: Reply(ok=True))
        self._start_actor, self.cfg = start_actor, cfg
        # The first Intake has its own connection, so a restart can drop it like a dead process.
        self._own = Bus.connect(nats_url, name="first-intake")
        ctx = wiring.Context(cfg, self._own, FakeClock(), refs={"stage_engine": self.engine})
        self.intake = ActorUnderTest(wiring.SPECS["intake"], ctx, FakeClock())
        self.sent = 0

    def start(self) -> ActorUnderTest:
        return self._start_actor("intake", config=self.cfg, stage_engine=self.engine)

    def send(self, event: WorkItemEvent, msg_id: str = "") -> None:
        self.intake.bus.publish(
            subjects.EVENTS_PLANE_WORK_ITEM, event, msg_id=msg_id or f"plane:{event.delivery_id}"
        )
        self.sent += 1
        wait_until(
            lambda: self._handled(self.intake.status()),
            what=f"{self.sent} event(s) handled",
        )

    def _handled(self, status: dict[str, Any]) -> bool:
        return bool(status["routed"] + status["ignored"] >= self.sent or status["failed"])

    def restart(self) -> None:
        self.intake.ref.stop(block=True, timeout=10)
        self._own.close()
        self.intake = self.start()
        self.sent = 0  # a new actor counts from zero; the durable consumer resumes

    def close(self) -> None:
        self.intake.ref.stop(block=True, timeout=10)
        self._own.close()

    def states(self) -> list[str]:
        return [u.state for u in received(self.engine, TrackerUpdate)]


def test_a_card_left_in_confirm_deploy_is_not_confirmed_by_later_edits(
    start_actor: StartActor, stub: Any, plane_cfg: Config, nats_url: str
):
    run = Run(start_actor, stub, plane_cfg, nats_url)

    run.send(delivery("Confirm Deploy"))
    assert run.states() == ["confirm_deploy"]

    # A label, a description and a priority edit each re-send the card, still in Confirm Deploy
    for field in ("labels", "description_html", "priority"):
        run.send(delivery("Confirm Deploy", field=field))
    # Plane resending the same move under a new delivery id, and a poll seeing it again
    run.send(delivery("Confirm Deploy"))
    run.send(*reversed(polled("Confirm Deploy", "in_progress")))
    assert run.states() == ["confirm_deploy"]
    assert run.intake.status()["ignored"] == 5

    # The state acted on is kept in KV: a restarted Intake does not act on a poll of it either
    card = run.intake.store().get(ITEM)
    assert card is not None
    assert card.value.state_name == "Confirm Deploy"
    run.restart()
    msg_id, event = polled("Confirm Deploy", "other")
    run.send(event, msg_id)
    assert run.states() == ["confirm_deploy"]


def test_a_card_left_in_rejected_does_not_rerun_analysis_on_an_edit_and_a_real_move_acts_once(
    start_actor: StartActor, stub: Any, plane_cfg: Config, nats_url: str
):
    run = Run(start_actor, stub, plane_cfg, nats_url)

    run.send(delivery("Rejected"))
    run.send(delivery("Rejected", field="description_html"))
    run.send(delivery("Rejected", field="labels"))
    assert run.states() == ["rejected"]

    # A real move acts, once, however often it is delivered or polled
    approved = delivery("Approved", old="Rejected")
    run.send(approved)
    # The same delivery again is stored once by its message id, so it is never handled twice
    run.intake.bus.publish(
        subjects.EVENTS_PLANE_WORK_ITEM, approved, msg_id=f"plane:{approved.delivery_id}"
    )
    run.send(*reversed(polled("Approved", "rejected")))
    assert run.states() == ["rejected", "approved"]
    stored = run.intake.store().get(ITEM)
    assert stored is not None
    assert stored.value == CardState(
        state_id=STATES["Approved"],
        state_name="Approved",
        key=f"plane:{approved.delivery_id}",
        at=run.intake.clock.now(),
    )

    # Moving back to Rejected is a real move again
    run.send(delivery("Rejected", old="Approved"))
    assert run.states() == ["rejected", "approved", "rejected"]
    run.close()


def test_an_input_the_engine_refused_is_not_remembered_so_a_poll_retries_it(
    start_actor: StartActor, stub: Any, plane_cfg: Config
):
    engine = stub(lambda m: Reply(ok=False, error="id: no task") if m else None)
    intake = start_actor("intake", config=plane_cfg, stage_engine=engine)
    intake.bus.publish(
        subjects.EVENTS_PLANE_WORK_ITEM, delivery("Approved"), msg_id="plane:refused"
    )
    wait_until(lambda: intake.status()["routed"] >= 1, what="routed")
    assert intake.store().get(ITEM) is None


def test_a_card_moved_to_the_cancel_state_cancels_its_task(
    start_actor: StartActor, stub: Any, tmp_path: Path, nats_url: str
):
    cfg = make_config(
        tmp_path / "data",
        nats_url,
        repos=[{"name": "demo", "prefix": "DEMO", "plane_project": PROJECT}],
        plane={"cancel_state": "Rejected"},
    )
    engine = stub(lambda _m: Reply(ok=True))
    intake = start_actor("intake", config=cfg, stage_engine=engine)
    moved = delivery("Rejected")

    intake.bus.publish(subjects.EVENTS_PLANE_WORK_ITEM, moved, msg_id="plane:cancel")

    wait_until(lambda: intake.status()["routed"] >= 1, what="routed")
    (cancel,) = received(engine, Cancel)
    assert cancel == Cancel(id=TASK, reason="moved to Rejected in Plane")
    assert received(engine, TrackerUpdate) == []
