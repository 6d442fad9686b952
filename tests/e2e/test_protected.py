"""Protected repositories: the production deploy starts only on Confirm Deploy, once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from bus import subjects
from tests.harness import DEMO_CHECK, Harness, wait_until

pytestmark = pytest.mark.e2e

PROTECTED_REPO = {
    "name": "demo",
    "prefix": "DEMO",
    "template": "demo",
    "check_command": DEMO_CHECK,
    "protected": True,
}


def _leases(harness: Harness) -> list[dict[str, Any]]:
    leases: list[dict[str, Any]] = harness.client.request(subjects.status_actor("lease_keeper"))[
        "leases"
    ]
    return leases


def _deploy_jobs(harness: Harness, item: str) -> list[str]:
    return sorted(
        j for j in harness.jobs() if j.startswith(f"{item}.deploy.") and "staging" not in j
    )


def test_a_protected_deploy_waits_for_one_confirmation(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(repos=[PROTECTED_REPO])
    item = harness.submit("Change the core")["task"]["id"]

    # Given a task of a protected repository that merged and reached deploy
    task = harness.wait_stage(item, "deploy", deadline_s=120)
    wait_until(
        lambda: harness.task(item).get("step") == "confirm", what="waiting for Confirm Deploy"
    )
    task = harness.task(item)
    assert "Confirm Deploy" in task["last_reason"]
    assert _deploy_jobs(harness, item) == []
    # and holding its merge lease while it waits
    assert [(lease["name"], lease["task_id"]) for lease in _leases(harness)] == [
        ("merge.demo", item)
    ]

    # When an operator approves (not confirms) nothing deploys
    approve = harness.command("approve", item)
    assert not approve["ok"]
    assert _deploy_jobs(harness, item) == []

    # When two confirmations race
    replies: list[dict[str, Any]] = []

    def _confirm() -> None:
        replies.append(harness.command("confirm-deploy", item))

    threads = [threading.Thread(target=_confirm) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then both are answered ok, one deploy runs, and the task ends with its lease freed
    assert all(reply["ok"] for reply in replies), replies
    harness.wait_stage(item, "done", deadline_s=120)
    assert _deploy_jobs(harness, item) == [f"{item}.deploy.1.work"]
    assert [h["new"] for h in harness.task(item)["history"]].count("deploy") == 1
    wait_until(lambda: _leases(harness) == [], what="merge lease released on done")


def test_an_unprotected_repository_deploys_without_confirmation(harness: Harness) -> None:
    item = harness.submit("Change a leaf")["task"]["id"]
    harness.wait_stage(item, "done", deadline_s=120)
    refused = harness.command("confirm-deploy", item)
    assert not refused["ok"]


def test_cancelling_a_task_that_waits_for_confirmation_frees_its_merge_lease(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(repos=[PROTECTED_REPO])
    item = harness.submit("Never confirmed")["task"]["id"]
    harness.wait_stage(item, "deploy", deadline_s=120)
    wait_until(lambda: _leases(harness) != [], what="merge lease kept while waiting")
    assert harness.command("cancel", item)["ok"]
    wait_until(lambda: _leases(harness) == [], what="merge lease released on cancel")
    assert _deploy_jobs(harness, item) == []
