"""Never silent: a protected production deploy's parking and start are alerted and commented.

A whole node on the local forge and the local tracker, the demo agent, real git.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actors.notice_policy import KIND_DEPLOY_STARTED
from bus import subjects
from bus.messages import Alert
from gateways.tracker import LocalTracker
from tests.actors.conftest import Captured
from tests.harness import DEMO_CHECK, Harness, wait_until

pytestmark = pytest.mark.e2e

PROTECTED_REPO = {
    "name": "demo",
    "prefix": "DEMO",
    "template": "demo",
    "check_command": DEMO_CHECK,
    "protected": True,
}


def test_a_protected_deploy_is_announced_when_parked_and_when_it_starts(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(repos=[PROTECTED_REPO])
    alerts = Captured(harness.client.bus, subjects.ALERTS, Alert)
    tracker = LocalTracker(harness.layout.tracker)
    item = harness.submit("Change the core")["task"]["id"]

    harness.wait_stage(item, "deploy", deadline_s=90)
    wait_until(lambda: harness.task(item).get("step") == "confirm", what="parked")
    parked = wait_until(
        lambda: [a for a in alerts.of(Alert) if a.kind == "awaiting_confirm"], what="parked alert"
    )
    assert len(parked) == 1
    assert not [a for a in alerts.of(Alert) if a.kind == KIND_DEPLOY_STARTED]

    assert harness.command("confirm-deploy", item)["ok"]
    harness.wait_stage(item, "done", approve=False, deadline_s=60)

    started = [a for a in alerts.of(Alert) if a.kind == KIND_DEPLOY_STARTED]
    assert len(started) == 1
    assert f"{item}: production deploy of demo started" in started[0].text
    comments = wait_until(
        lambda: (
            lambda cs: cs if any("production deploy of demo started" in c for c in cs) else None
        )(tracker.comments(item)),
        what="the deploy's start commented",
    )
    assert sum("production deploy of demo started" in c for c in comments) == 1
    assert sum("ready for its production deploy" in c for c in comments) == 1
