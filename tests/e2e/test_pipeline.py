"""A work item flows through every stage with real git, a real nats-server and the demo agent."""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from pathlib import Path

import psutil
import pytest

from bus import subjects
from bus.messages import JobOutcome
from gateways import git
from gateways.tracker import LocalTracker
from tests.harness import ALL_STAGES, DEMO_CHECK, Harness, wait_until

pytestmark = pytest.mark.e2e


def _main_files(harness: Harness, repo: str = "demo") -> str:
    bare = harness.layout.forge / "repos" / f"{repo}.git"
    return git.run_git(["ls-tree", "-r", "--name-only", "main"], git_dir=bare)


def test_a_work_item_reaches_done_through_every_stage(harness: Harness) -> None:
    # Given a submitted work item
    reply = harness.submit("Add a greeting")
    assert reply["ok"], reply
    item = reply["task"]["id"]
    assert item == "DEMO-1"
    assert reply["task"]["branch"] == "feature/DEMO-1-add-a-greeting"

    # When it is approved at analysis and left alone
    task = harness.wait_stage(item, "done")

    # Then it passed every stage once, in order, with a cause for each change
    assert harness.stages_of(item) == ALL_STAGES
    assert all(entry["cause"] for entry in task["history"])
    # and the change and its artifacts are merged into main exactly once
    files = _main_files(harness)
    assert "features/demo_1.py" in files
    assert "docs/work-items/DEMO-1/15-staging-log.md" in files
    # (the deploy log is written after the merge, on the branch)
    bare = harness.layout.forge / "repos" / "demo.git"
    assert (
        git.run_git(
            ["cat-file", "-e", f"{task['branch']}:docs/work-items/DEMO-1/14-deploy-log.md"],
            git_dir=bare,
        )
        == ""
    )
    kinds = Counter(e["kind"] for e in harness.forge_effects() if e.get("repo") == "demo")
    assert kinds["pr_opened"] == 1
    assert kinds["pr_merged"] == 1
    # and every job finished as done
    assert {job.status for job in harness.jobs().values()} == {"done"}
    # and the tracker's work item mirrors every stage change once, ending done
    tracker = LocalTracker(harness.layout.tracker)
    wait_until(lambda: tracker.state(item) == "done", what="tracker state done")
    comments = tracker.comments(item)
    assert sum(c.startswith("Stage ") for c in comments) == len(ALL_STAGES) - 1
    assert len(comments) == len(set(comments))


def test_request_changes_sends_the_item_back_to_development(harness: Harness) -> None:
    item = harness.submit("Review loop", description="demo: reviewer=request_changes")["task"]["id"]

    task = harness.wait_stage(item, "done")

    stages = harness.stages_of(item)
    assert stages.count("development") == 2
    assert stages.count("review") == 2
    assert task["developer_retries"] == 1
    assert any("requests changes" in e["cause"] for e in task["history"])


def test_a_failed_test_report_sends_the_item_back_to_development(harness: Harness) -> None:
    item = harness.submit("Test loop", description="demo: tester=fail")["task"]["id"]

    task = harness.wait_stage(item, "done")

    stages = harness.stages_of(item)
    assert stages.count("testing") == 2
    assert stages.count("development") == 2
    assert any(e["cause"] == "test report FAIL" for e in task["history"])


def test_a_malformed_artifact_fails_the_gate_and_the_stage_is_retried(harness: Harness) -> None:
    item = harness.submit("Bad ADR", description="demo: architect=fail")["task"]["id"]

    harness.wait_stage(item, "done")

    archs = [j for j in harness.jobs().values() if j.task_id == item and j.stage == "architecture"]
    assert len(archs) == 2


def test_developer_failures_escalate_after_the_retry_budget(harness: Harness) -> None:
    # Given a developer whose CI is always red
    item = harness.submit("Always red", description="demo: developer=fail*always")["task"]["id"]

    # When the pipeline runs
    task = harness.wait_stage(item, "escalated")

    # Then the developer ran 1 + 3 times, the task stays on development, escalated
    assert task["stage"] == "development"
    dev_jobs = [j for j in harness.jobs().values() if j.task_id == item and j.role == "developer"]
    assert len(dev_jobs) == 4
    assert task["developer_retries"] == 3
    # and nothing else happens until a human acts: retry resets the budget
    reply = harness.command("retry", item)
    assert reply["ok"], reply
    assert harness.task(item)["escalated"] is False


def test_cancel_mid_stage_kills_the_agent_and_stops_the_task(harness: Harness) -> None:
    # Given an architect that hangs
    item = harness.submit("Hangs", description="demo: architect=hang")["task"]["id"]
    harness.wait_stage(item, "architecture")

    def _running_pid() -> int | None:
        jobs = [
            j
            for j in harness.jobs().values()
            if j.task_id == item and j.stage == "architecture" and j.status == "running"
        ]
        return jobs[0].pid if jobs and jobs[0].pid else None

    pid = wait_until(_running_pid, what="architect process")
    assert psutil.pid_exists(pid)

    # When the operator cancels it
    reply = harness.command("cancel", item, reason="not needed")
    assert reply["ok"], reply

    # Then the task is cancelled, its job cancelled, and the agent's process tree is gone
    assert harness.task(item)["stage"] == "cancelled"
    wait_until(lambda: not _alive(pid), what="agent process to die")
    wait_until(
        lambda: all(
            j.status in ("cancelled", "done") for j in harness.jobs().values() if j.task_id == item
        ),
        what="jobs to settle",
    )
    assert harness.command("approve", item)["ok"] is False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_concurrent_duplicate_submits_create_one_task_branch_worktree_and_job(
    harness: Harness,
) -> None:
    # When eight operators submit the same work item at once
    replies: list[dict[str, object]] = []
    barrier = threading.Barrier(8)

    def _submit() -> None:
        barrier.wait()
        replies.append(harness.submit("Same item", item_id="DEMO-7"))

    threads = [threading.Thread(target=_submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then all succeed, naming one task
    assert all(r["ok"] for r in replies), replies
    assert [t["id"] for t in harness.tasks()] == ["DEMO-7"]
    harness.wait_stage("DEMO-7", "analysis", approve=False)
    intake = [j for j in harness.jobs().values() if j.role == "intake"]
    assert len(intake) == 1
    worktrees = os.listdir(harness.layout.root / "worktrees" / "demo")
    assert worktrees == ["DEMO-7"]
    bare = harness.layout.forge / "repos" / "demo.git"
    branches = git.run_git(["branch", "--list", "feature/*"], git_dir=bare).split()
    assert branches == ["feature/DEMO-7-same-item"]


def test_two_repositories_run_in_parallel_with_a_per_repo_limit_of_one(harness_factory) -> None:
    # Given two repositories and a per-repository limit of 1
    harness = harness_factory(
        repos=[
            {
                "name": "demo",
                "prefix": "DEMO",
                "template": "demo",
                "check_command": DEMO_CHECK,
            },
            {
                "name": "other",
                "prefix": "OTH",
                "template": "demo",
                "check_command": DEMO_CHECK,
            },
        ],
        queue={"per_repo_concurrency": 1, "max_concurrency": 4},
    )
    slow = "demo: analyst=slow:0.3 architect=slow:0.3 developer=slow:0.3"

    # When two items per repository are submitted
    items = [
        harness.submit(f"Item {i}", repo=repo, description=slow)["task"]["id"]
        for repo in ("demo", "other")
        for i in (1, 2)
    ]
    for item in items:
        harness.wait_stage(item, "done", deadline_s=120)

    # Then no two jobs of one repository ever ran at the same time
    jobs = [j for j in harness.jobs().values() if j.claimed_at and j.finished_at]
    for repo in ("demo", "other"):
        spans = sorted((j.claimed_at, j.finished_at) for j in jobs if j.repo == repo)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end - 1e-3, f"{repo} overlapped"
    # and the two repositories did overlap (they ran in parallel)
    demo = [(j.claimed_at, j.finished_at) for j in jobs if j.repo == "demo"]
    other = [(j.claimed_at, j.finished_at) for j in jobs if j.repo == "other"]
    assert any(a0 < b1 and b0 < a1 for a0, a1 in demo for b0, b1 in other)
    assert "features/oth_1.py" in _main_files(harness, "other")


def test_a_crashing_agent_is_retried_by_the_queue(harness: Harness) -> None:
    # The architect crashes on its first visit (both job attempts), then works on the retry.
    item = harness.submit("Crashy", description="demo: architect=crash")["task"]["id"]

    harness.wait_stage(item, "done")

    archs = sorted(
        (j for j in harness.jobs().values() if j.task_id == item and j.stage == "architecture"),
        key=lambda j: j.id,
    )
    assert [j.status for j in archs] == ["failed", "done"]
    assert archs[0].attempts == 2
    assert archs[0].exit_code == 3


def test_a_restarted_node_adopts_a_running_agent_instead_of_rerunning_it(
    harness: Harness, tmp_path: Path
) -> None:
    # Given a developer agent that takes a while
    item = harness.submit("Slow dev", description="demo: developer=slow:3")["task"]["id"]
    harness.wait_stage(item, "development")
    wait_until(
        lambda: any(j.role == "developer" and j.pid for j in harness.jobs().values()),
        what="developer running",
    )

    # When the whole node stops while the agent runs, and a new one starts on the same state
    harness.stop_node()
    harness.start()

    # Then the item still reaches done, and the developer ran exactly once
    harness.wait_stage(item, "done")
    dev = [j for j in harness.jobs().values() if j.task_id == item and j.role == "developer"]
    assert len(dev) == 1
    assert dev[0].attempts == 1
    runs = list((harness.layout.runs / item).glob("development.*"))
    assert len(runs) == 1


def test_an_agent_past_its_timeout_has_its_process_tree_killed(harness_factory) -> None:
    # Given an architect limited to 1 s that hangs on its first visit
    harness = harness_factory(agents={"architect": {"timeout_s": 1.0}})
    item = harness.submit("Times out", description="demo: architect=hang")["task"]["id"]

    # When it runs, both attempts of the first visit time out; the retried visit works
    harness.wait_stage(item, "done")

    archs = sorted(
        (j for j in harness.jobs().values() if j.task_id == item and j.stage == "architecture"),
        key=lambda j: j.id,
    )
    assert archs[0].status == "failed"
    assert "timed out" in archs[0].error
    assert archs[1].status == "done"
    # and no process of the timed-out runs is left
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        assert not ("conveyor.demo_agent" in cmdline and str(harness.layout.root) in cmdline)


def test_a_failed_deploy_goes_back_to_development_and_the_rework_is_merged(
    harness: Harness,
) -> None:
    # Given a deployer whose first run on each deploy stage fails
    item = harness.submit("Deploy fails once", description="demo: deployer=fail")["task"]["id"]

    # When the pipeline runs
    task = harness.wait_stage(item, "done", deadline_s=120)

    # Then the failed production deploy sent it back to development (rollback rule)
    history = [(e["old"], e["new"]) for e in task["history"]]
    assert ("deploy", "development") in history
    # and the rework reached main through a second pull request, merged once
    kinds = Counter(e["kind"] for e in harness.forge_effects() if e.get("repo") == "demo")
    assert kinds["pr_opened"] == 2
    assert kinds["pr_merged"] == 2
    bare = harness.layout.forge / "repos" / "demo.git"
    notes = git.run_git(["show", f"main:docs/work-items/{item}/11-dev-notes.md"], git_dir=bare)
    assert "visit: 2" in notes


def test_racing_entries_into_one_transition_produce_one_set_of_effects(harness: Harness) -> None:
    # Given an analysis that finished and waits for approval
    item = harness.submit("Racing actors")["task"]["id"]
    harness.wait_stage(item, "analysis", approve=False)
    wait_until(
        lambda: "awaiting approval" in harness.task(item)["last_reason"],
        what="analysis waiting for approval",
    )
    job = next(j for j in harness.jobs().values() if j.role == "analyst")
    outcome = JobOutcome(
        job_id=job.id,
        task_id=item,
        stage="analysis",
        visit=1,
        role="analyst",
        status="done",
        attempts=1,
        exit_code=0,
    )

    # When duplicate outcomes (a replaying reaper, a late launcher, a reconciler) race an
    # operator's approval into the same transition
    def _replay(n: int) -> None:
        harness.client.bus.publish(subjects.JOBS_OUTCOME, outcome, msg_id=f"race-{n}")

    threads = [threading.Thread(target=_replay, args=(n,)) for n in range(6)]
    threads.append(threading.Thread(target=lambda: harness.command("approve", item)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then the task moved once, and asked for one architect
    harness.wait_stage(item, "development")
    history = [(e["old"], e["new"]) for e in harness.task(item)["history"]]
    assert history.count(("analysis", "architecture")) == 1
    architects = [j for j in harness.jobs().values() if j.role == "architect"]
    assert len(architects) == 1


def test_the_reaper_never_reaps_a_launcher_that_is_still_finalizing(harness_factory) -> None:
    # Given a slow CI (the launcher's post-steps outlive the agent's pid) and an eager reaper
    slow_ci = ["{python}", "-c", "import time; time.sleep(2)"]
    harness = harness_factory(
        repos=[{"name": "demo", "prefix": "DEMO", "template": "demo", "check_command": slow_ci}],
        reaper={
            "interval_s": 0.2,
            "dead_ticks": 1,
            "heartbeat_timeout_s": 1.0,
            "finalize_grace_s": 0.5,
        },
    )

    # When an item goes through every stage
    item = harness.submit("Slow CI")["task"]["id"]
    harness.wait_stage(item, "done", deadline_s=120)

    # Then nothing was reaped and every job ran exactly once
    reaper = harness.client.request(subjects.status_actor("reaper"))
    assert reaper["reaped_total"] == 0
    assert {j.attempts for j in harness.jobs().values()} == {1}
