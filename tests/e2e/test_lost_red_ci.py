"""A red CI status whose webhook is lost does not strand a task, and nobody is left guessing.

Everything external is a local HTTP server speaking the recorded APIs (Gitea,
Plane); the fake Gitea runs the real check and loses every red status webhook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness import wait_until
from tests.integrations_env import PROJECT, World, world

pytestmark = pytest.mark.e2e


def _lose_red_statuses(env: World) -> list[str]:
    """Make the fake Gitea lose every failure/error status webhook; returns their shas."""
    lost: list[str] = []
    send = env.gitea._queue_hook

    def _lossy(event_type: str, payload: dict[str, Any]) -> None:
        if event_type == "status" and payload.get("state") in ("failure", "error"):
            lost.append(str(payload.get("sha", "")))
            return
        send(event_type, payload)

    env.gitea._queue_hook = _lossy  # type: ignore[method-assign]
    return lost


def _comments(env: World, plane_id: str) -> list[str]:
    return [c["comment_html"] for c in env.plane.call(lambda: env.plane.comments.get(plane_id, []))]


def test_a_lost_red_ci_is_retried_by_the_reconciler_and_said_on_the_card(
    tmp_path: Path, nats_url: str
) -> None:
    reconciler = {"interval_s": 0.5, "grace_s": 2.0, "plane_poll_s": 1.0}
    with world(tmp_path, nats_url, reconciler=reconciler) as env:
        lost = _lose_red_statuses(env)
        # The first development visit writes a feature that fails its test
        item = env.plane.create_item(PROJECT, "Red CI lost", "\ndemo: developer=fail*1\n")
        env.plane.move(item["id"], "In Progress")
        task_id = f"DEMO-{item['sequence_id']}"
        wait_until(
            lambda: "awaiting approval" in env.harness.task(task_id).get("last_reason", ""),
            what="analysis awaiting approval",
            deadline_s=60,
        )
        env.plane.move(item["id"], "Approved")

        done = env.harness.wait_stage(task_id, "done", approve=False, deadline_s=240)

        assert lost, "no red status was lost; the test proves nothing"
        assert done["developer_retries"] == 1
        texts = _comments(env, item["id"])
        failed = [t for t in texts if "development failed" in t]
        assert len(failed) == 1, texts
        assert "attempt 1 of 3" in failed[0]
        claimed = [t for t in texts if "reconciler unblocked" in t]
        assert len(claimed) == 1, texts
        assert "development → development (a lost event" in claimed[0]


def test_an_edit_of_a_card_left_in_rejected_does_not_rerun_the_analysis(
    tmp_path: Path, nats_url: str
) -> None:
    with world(tmp_path, nats_url) as env:
        task_id, plane_id = env.start_item("Edited while rejected")
        first = wait_until(lambda: _awaiting(env, task_id), what="analysis awaiting approval")

        # A real move to Rejected runs the analysis again, once
        env.plane.move(plane_id, "Rejected")
        second = wait_until(
            lambda: (lambda t: t if t and t["job_id"] != first["job_id"] else None)(
                _awaiting(env, task_id)
            ),
            what="the second analysis awaiting approval",
        )

        # Edits of other fields re-send the card, still in Rejected: nothing runs again
        before = _intake(env)
        env.plane.edit(plane_id, "priority", "urgent")
        env.plane.edit(plane_id, "description_html", "<p>One more detail.</p>")
        after = wait_until(
            lambda: (lambda s: s if _handled(s) >= _handled(before) + 2 else None)(_intake(env)),
            what="both edits handled",
        )
        assert after["ignored"] == before["ignored"] + 2
        task = env.harness.task(task_id)
        assert (task["stage"], task["job_id"]) == ("analysis", second["job_id"])
        assert task["tracker_state"] == "rejected"

        # And a real move still acts
        env.plane.move(plane_id, "Approved")
        wait_until(lambda: env.harness.task(task_id)["stage"] != "analysis", what="approved")


def _awaiting(env: World, task_id: str) -> dict[str, Any] | None:
    try:
        task: dict[str, Any] = env.harness.task(task_id)
    except Exception:
        return None
    reason = task.get("last_reason", "")
    ready = task.get("stage") == "analysis" and "awaiting approval" in reason
    return task if ready else None


def _handled(status: dict[str, Any]) -> int:
    return int(status["routed"]) + int(status["ignored"])


def _intake(env: World) -> dict[str, Any]:
    found: dict[str, Any] = env.harness.client.request("conveyor.status.intake")
    return found
