"""The merge gate: one merge at a time per repository, rebase and re-test when behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import msgspec
import psutil
import pytest

from bus import subjects
from bus.messages import LeaseAcquire, LeaseHolder, LeaseRelease, encode
from conveyor import procs
from gateways import git
from tests.harness import Harness, wait_until

pytestmark = pytest.mark.e2e


def test_a_branch_behind_main_is_rebased_retested_and_merged(harness: Harness) -> None:
    # Given two items branched from the same main
    first = harness.submit("First change")["task"]["id"]
    second = harness.submit("Second change")["task"]["id"]

    # When both go through the pipeline (the second merges after the first)
    for item in (first, second):
        harness.wait_stage(item, "done", deadline_s=120)

    # Then main holds both changes, each merged exactly once
    bare = harness.layout.forge / "repos" / "demo.git"
    files = git.run_git(["ls-tree", "-r", "--name-only", "main"], git_dir=bare)
    assert "features/demo_1.py" in files
    assert "features/demo_2.py" in files
    effects = harness.forge_effects()
    assert sum(e["kind"] == "pr_merged" for e in effects) == 2
    # and the one that was behind main was rebased (its merged head descends from the
    # other's merge) and re-tested on that head before merging
    merged = sorted((e for e in effects if e["kind"] == "pr_merged"), key=lambda e: e["ts"])
    later_task = harness.task(second if merged[1]["number"] == 2 else first)
    head = git.run_git(["rev-parse", f"refs/heads/{later_task['branch']}"], git_dir=bare)
    earlier_merge = merged[0]["sha"]
    assert git.run_git_result(["merge-base", "--is-ancestor", earlier_merge, head], git_dir=bare).ok
    status = json.loads((harness.layout.forge / "statuses" / "demo" / f"{head}.json").read_text())
    assert status["conveyor/ci"]["state"] == "success"
    # and no lease is left behind
    assert harness.client.request(subjects.status_actor("lease_keeper"))["leases"] == []


@pytest.fixture
def dead_process() -> tuple[int, float]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, create_time


def _holder(task: str, pid: int, create_time: float) -> LeaseHolder:
    return LeaseHolder(
        task_id=task,
        job_id=f"{task}.deploy-staging.1.merge",
        launcher="test",
        host=socket.gethostname(),
        pid=pid,
        create_time=create_time,
        boot_id=procs.boot_id(),
    )


def _ask(harness: Harness, subject: str, request: object) -> dict[str, object]:
    reply: dict[str, object] = json.loads(harness.client.bus.request(subject, encode(request)))
    return reply


def test_a_lease_held_by_a_live_process_is_never_taken(harness: Harness) -> None:
    me = psutil.Process()
    mine = _holder("DEMO-1", me.pid, me.create_time())
    assert _ask(harness, subjects.LEASE_ACQUIRE, LeaseAcquire(name="merge.demo", holder=mine))[
        "granted"
    ]
    other = _holder("DEMO-2", me.pid, me.create_time())
    busy = _ask(harness, subjects.LEASE_ACQUIRE, LeaseAcquire(name="merge.demo", holder=other))
    assert busy["granted"] is False
    # Release is holder-aware: another task cannot free it, the holder can.
    assert not _ask(
        harness, subjects.LEASE_RELEASE, LeaseRelease(name="merge.demo", task_id="DEMO-2")
    )["granted"]
    assert _ask(harness, subjects.LEASE_RELEASE, LeaseRelease(name="merge.demo", task_id="DEMO-1"))[
        "granted"
    ]


def test_a_lease_held_by_a_dead_process_is_reclaimed(
    harness: Harness, dead_process: tuple[int, float]
) -> None:
    pid, create_time = dead_process
    dead = _holder("DEMO-1", pid, create_time)
    first = _ask(harness, subjects.LEASE_ACQUIRE, LeaseAcquire(name="merge.demo", holder=dead))
    assert first["granted"]
    me = psutil.Process()
    taker = _holder("DEMO-2", me.pid, me.create_time())
    grant = _ask(harness, subjects.LEASE_ACQUIRE, LeaseAcquire(name="merge.demo", holder=taker))
    assert grant["granted"] is True
    assert "dead holder" in str(grant["reason"])
    assert int(grant["revision"]) > int(first["revision"])


def test_a_merge_waits_for_a_busy_lease_and_runs_once_it_is_free(harness_factory) -> None:
    # Given another task holding the repository's merge lease
    harness = harness_factory(leases={"busy_retry_s": 0.3})
    me = psutil.Process()
    other = _holder("DEMO-99", me.pid, me.create_time())
    assert _ask(harness, subjects.LEASE_ACQUIRE, LeaseAcquire(name="merge.demo", holder=other))[
        "granted"
    ]
    item = harness.submit("Waits for the lease")["task"]["id"]

    # When the item reaches its merge step it is deferred, not failed
    harness.wait_stage(item, "deploy-staging")

    def _deferred() -> bool:
        merge = harness.jobs().get(f"{item}.deploy-staging.1.merge")
        if merge is None:
            return False
        # Parked in the queue while a task that is not merging now keeps the lease (no
        # attempt spent); or deferred by its run: an attempt number spent, the budget grown.
        parked = merge.status == "queued" and merge.error.startswith("merge lease:")
        return parked or merge.max_attempts > harness.cfg.queue.max_attempts + 1

    wait_until(_deferred, what="merge deferred on the busy lease", deadline_s=90)
    assert harness.task(item)["stage"] == "deploy-staging"

    # Then, once the holder releases it, the merge runs and the item finishes
    assert _ask(
        harness, subjects.LEASE_RELEASE, LeaseRelease(name="merge.demo", task_id="DEMO-99")
    )["granted"]
    harness.wait_stage(item, "done")
    merge = harness.jobs()[f"{item}.deploy-staging.1.merge"]
    assert merge.status == "done"
    assert sum(e["kind"] == "pr_merged" for e in harness.forge_effects()) == 1


def test_a_task_transition_lease_blocks_a_second_executor_until_released(
    harness_factory,
) -> None:
    # Given another live executor holding the task's transition lease
    harness = harness_factory(leases={"busy_retry_s": 0.3})
    me = psutil.Process()
    other = msgspec.structs.replace(
        _holder("DEMO-1", me.pid, me.create_time()), job_id="elsewhere", launcher="other"
    )
    grant = _ask(harness, subjects.LEASE_ACQUIRE, LeaseAcquire(name="task.DEMO-1", holder=other))
    assert grant["granted"]
    item = harness.submit("Waits for its transition lease")["task"]["id"]
    assert item == "DEMO-1"

    # When its intake step runs, it is deferred (no push, no branch) while the lease is held
    def _deferred() -> bool:
        intake = harness.jobs().get(f"{item}.created.1.intake")
        return intake is not None and intake.max_attempts > harness.cfg.queue.max_attempts + 1

    wait_until(_deferred, what="intake deferred on the transition lease", deadline_s=60)
    assert (
        git.run_git_result(
            ["rev-parse", "--verify", f"refs/heads/{harness.task(item)['branch']}"],
            git_dir=harness.layout.forge / "repos" / "demo.git",
        ).ok
        is False
    )
    # A stale release naming an old revision frees nothing.
    stale = LeaseRelease(name="task.DEMO-1", task_id="DEMO-1", revision=int(grant["revision"]) + 1)
    assert not _ask(harness, subjects.LEASE_RELEASE, stale)["granted"]

    # Then, once released by its holder, the item goes all the way, each effect once
    release = LeaseRelease(name="task.DEMO-1", task_id="DEMO-1", revision=int(grant["revision"]))
    assert _ask(harness, subjects.LEASE_RELEASE, release)["granted"]
    harness.wait_stage(item, "done")
    effects = harness.forge_effects()
    assert sum(e["kind"] == "pr_opened" for e in effects) == 1
    assert sum(e["kind"] == "pr_merged" for e in effects) == 1
    assert harness.client.request(subjects.status_actor("lease_keeper"))["leases"] == []
