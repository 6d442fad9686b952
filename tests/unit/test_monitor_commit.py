"""The monitor's log commits: retried after a pause, given up after a few failures."""

from __future__ import annotations

from typing import Any

from actors.monitor_commit import MAX_TRIES, RETRY_S, Committed, LogCommits, log_path
from conveyor.clock import FakeClock


def commits(clock: FakeClock) -> LogCommits:
    # Neither the committer nor the ledger is reached by `done` and `busy`.
    none: Any = None
    return LogCommits(none, none, clock, lambda _msg: None, name="16-post-deploy-log.md")


def test_a_failed_commit_waits_before_the_next_try_and_a_success_is_stored():
    clock = FakeClock()
    runs = commits(clock)
    assert runs.done(Committed(task_id="SHOP-1", error="forge down")) == ""
    assert runs.busy("SHOP-1")
    clock.advance(RETRY_S)
    assert not runs.busy("SHOP-1")
    assert runs.done(Committed(task_id="SHOP-1", result="abc")) == "abc"
    assert not runs.busy("SHOP-1")


def test_a_commit_that_keeps_failing_is_given_up_with_the_reason():
    clock = FakeClock()
    runs = commits(clock)
    results = []
    for _ in range(MAX_TRIES):
        results.append(runs.done(Committed(task_id="SHOP-2", error="forge down")))
        clock.advance(RETRY_S)
    assert results[:-1] == [""] * (MAX_TRIES - 1)
    assert results[-1] == "not committed: forge down"


def test_the_log_lives_in_the_work_item_directory():
    assert log_path("SHOP-3", "16-post-deploy-log.md") == (
        "docs/work-items/SHOP-3/16-post-deploy-log.md"
    )
