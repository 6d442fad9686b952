"""Retention on a running node: a done task's leftovers go, an active task's stay."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actors.launcher_policy import Run
from bus import subjects
from bus.effects import Effect
from tests.harness import Harness, wait_until

pytestmark = pytest.mark.e2e


def test_with_no_retention_a_done_tasks_worktree_runs_and_records_go_and_an_active_ones_stay(
    harness_factory: Callable[..., Harness],
) -> None:
    # Given retention 0: everything of a settled task goes at the next sweep
    harness = harness_factory(
        retention={"interval_s": 0.2, "worktrees_days": 0.0, "records_days": 0.0}
    )
    done = harness.submit("Finish me")["task"]
    waiting = harness.submit("Wait for approval")["task"]

    # When one task goes all the way (the sweeps run throughout: nothing it needs goes)
    harness.wait_stage(done["id"], "done")
    # and the other waits at analysis for a human
    harness.wait_stage(waiting["id"], "analysis", approve=False)
    wait_until(
        lambda: "awaiting approval" in harness.task(waiting["id"]).get("last_reason", ""),
        what="the second task awaiting approval",
    )

    # Then the done task's worktree, run directories and closed records go
    layout = harness.layout
    runs = harness.client.bus.store(subjects.BUCKET_RUNS, Run)
    effects = harness.client.bus.store(subjects.BUCKET_EFFECTS, Effect)

    def _gone() -> bool:
        return (
            not layout.worktree("demo", done["id"]).exists()
            and not (layout.runs / done["id"]).exists()
            and not [j for j in harness.jobs().values() if j.task_id == done["id"]]
            and not [r for r in runs.load_all().values() if r.value.task_id == done["id"]]
            and not [k for k in effects.load_all() if k.startswith(f"{done['id']}.")]
        )

    wait_until(_gone, what="the done task's leftovers removed")
    # and the active task's stay
    assert layout.worktree("demo", waiting["id"]).is_dir()
    assert (layout.runs / waiting["id"]).is_dir()
    assert [j for j in harness.jobs().values() if j.task_id == waiting["id"]]
    # and the done task's record itself is kept
    assert harness.task(done["id"])["stage"] == "done"
    janitor = harness.client.request(subjects.status_actor("janitor"))
    assert janitor["worktrees_removed"] == 1
    assert janitor["jobs_compacted"] >= 1
