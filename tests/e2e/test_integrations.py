"""Plane drives a work item to done through the gateway, with Gitea running CI.

Everything external is a local HTTP server speaking the recorded APIs (Gitea,
Plane) and sending signed webhooks to Conveyor's real gateway; nothing is mocked.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.harness import wait_until
from tests.integrations_env import World, world

pytestmark = pytest.mark.e2e


def _awaiting_approval(env: World, task_id: str) -> bool:
    try:
        task = env.harness.task(task_id)
    except Exception:
        return False
    return task.get("stage") == "analysis" and "awaiting approval" in task.get("last_reason", "")


def _assert_delivered_once(env: World, task_id: str, plane_id: str) -> None:
    task = env.harness.task(task_id)
    assert task["stage"] == "done"
    assert task["external_id"] == plane_id
    # One pull request, merged once, on Gitea.
    assert len(env.gitea.effects_of("pr_opened")) == 1
    assert len(env.gitea.effects_of("pr_merged")) == 1
    # Every stage entered once, in order.
    stages = [entry["new"] for entry in task["history"]]
    assert len(stages) == len(set(stages)), stages
    # Plane shows the outcome, and no comment was posted twice.
    wait_until(lambda: env.plane.state_of(plane_id) == "Done", what="Plane item Done")
    texts = [c["comment_html"] for c in env.plane.comments[plane_id]]
    assert any("Conveyor accepted this work item" in t for t in texts)
    repeated = [t for t, n in Counter(texts).items() if n > 1]
    assert not repeated, repeated


def test_a_plane_item_reaches_done_through_the_gateway_with_gitea_ci(
    tmp_path: Path, nats_url: str
) -> None:
    with world(tmp_path, nats_url) as env:
        # Given a human moving a new Plane work item to In Progress
        task_id, plane_id = env.start_item("Add a greeting")

        # When the analysis waits for approval and the human moves the card to Approved
        wait_until(lambda: _awaiting_approval(env, task_id), what="analysis awaiting approval")
        env.plane.move(plane_id, "Approved")

        # Then the item goes through every stage to done, CI statuses coming from Gitea
        env.harness.wait_stage(task_id, "done", approve=False, deadline_s=180)
        _assert_delivered_once(env, task_id, plane_id)
        statuses = [d for d in env.gitea.deliveries if d.get("event") == "status"]
        assert statuses, "Gitea sent no status webhooks"
        intake = env.harness.client.request("conveyor.status.intake")
        assert intake["routed"] >= 3


def test_a_comment_or_an_unknown_state_never_moves_a_task(tmp_path: Path, nats_url: str) -> None:
    with world(tmp_path, nats_url) as env:
        task_id, plane_id = env.start_item("Only status moves it")
        wait_until(lambda: _awaiting_approval(env, task_id), what="analysis awaiting approval")

        # A board state Conveyor does not act on changes nothing.
        env.plane.move(plane_id, "Backlog")

        def _seen() -> bool:
            return env.harness.task(task_id).get("tracker_state") == "other"

        wait_until(_seen, what="the Backlog move recorded")
        task = env.harness.task(task_id)
        assert task["stage"] == "analysis"
        assert not task["approved"]


def test_blocked_holds_a_task_and_in_progress_releases_it(tmp_path: Path, nats_url: str) -> None:
    with world(tmp_path, nats_url) as env:
        task_id, plane_id = env.start_item("Held by a human")
        wait_until(lambda: _awaiting_approval(env, task_id), what="analysis awaiting approval")

        env.plane.move(plane_id, "Blocked")
        wait_until(lambda: env.harness.task(task_id).get("hold") == "blocked", what="held")
        env.plane.move(plane_id, "Approved")
        env.harness.wait_stage(task_id, "done", approve=False, deadline_s=180)
        _assert_delivered_once(env, task_id, plane_id)


def test_with_30_percent_of_webhooks_lost_the_reconciler_completes_the_item(
    tmp_path: Path, nats_url: str
) -> None:
    reconciler = {"interval_s": 0.5, "grace_s": 2.0, "plane_poll_s": 1.0}
    with world(tmp_path, nats_url, drop_rate=0.3, seed=7, reconciler=reconciler) as env:
        task_id, plane_id = env.start_item("Survives lost webhooks")
        wait_until(
            lambda: _awaiting_approval(env, task_id),
            what="analysis awaiting approval",
            deadline_s=60,
        )
        env.plane.move(plane_id, "Approved")
        env.harness.wait_stage(task_id, "done", approve=False, deadline_s=240)
        _assert_delivered_once(env, task_id, plane_id)
        dropped = [d for d in env.gitea.deliveries + env.plane.deliveries if d.get("dropped")]
        assert dropped, "the seed dropped no webhook; the test proves nothing"
