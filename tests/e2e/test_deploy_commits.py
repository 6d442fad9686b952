"""Production deploys ship exactly what was merged, what staging saw, and never go backwards.

The deploy script records, per run, the stage, the work item, the `{sha}` and
`{base_sha}` it was given, the commit checked out where it runs, and that
directory. A `signoff` stage with a human gate sits between the merge and the
production deploy, so a test can let two merged tasks deploy in the order it
chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.gate_policy import split_front_matter
from actors.jobs.deploy_target import deployed_key
from bus import subjects
from bus.effects import Effect
from gateways import git
from tests.e2e.test_watch import MONITOR, Production
from tests.e2e.test_watch import _repo as watched_repo
from tests.harness import ALL_STAGES, DEMO_CHECK, Harness, wait_until

pytestmark = pytest.mark.e2e

SCRIPT = """\
import os, subprocess, sys

out, stage, item, sha, base = sys.argv[1:6]
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
with open(out, "a") as log:
    log.write(f"{stage} {item} {sha or '-'} {base or '-'} {head.strip()} {os.getcwd()}\\n")
"""

STAGES = [
    {"name": "analysis", "role": "analyst", "gate": "analysis_complete", "human_approval": True},
    {"name": "architecture", "role": "architect", "gate": "architecture_done"},
    {"name": "development", "role": "developer", "gate": "ci_green"},
    {"name": "review", "role": "reviewer", "gate": "review_approved", "on_fail": "development"},
    {"name": "testing", "role": "tester", "gate": "tests_passed", "on_fail": "development"},
    {"name": "deploy-staging", "role": "deployer", "gate": "staging_status", "merge": True},
    {"name": "signoff", "role": "reviewer", "gate": "", "human_approval": True},
    {"name": "deploy", "role": "deployer", "gate": "deploy_status", "on_fail": "development"},
]
"""The default pipeline with a human gate between the merge and the production deploy."""


class Run(msgspec.Struct, frozen=True):
    """One line of the deploy script's record."""

    stage: str
    item: str
    sha: str
    base_sha: str
    head: str
    cwd: str


class Deploys:
    def __init__(self, tmp: Path) -> None:
        self.script = tmp / "deploy_script.py"
        self.script.write_text(SCRIPT)
        self.out = tmp / "deploys.txt"

    def repos(self) -> list[dict[str, Any]]:
        command = [
            "{python}",
            str(self.script),
            str(self.out),
            "{stage}",
            "{work_item}",
            "{sha}",
            "{base_sha}",
        ]
        return [
            {
                "name": "demo",
                "prefix": "DEMO",
                "template": "demo",
                "check_command": DEMO_CHECK,
                "staging_command": command,
                "deploy_command": command,
            }
        ]

    def runs(self, stage: str) -> list[Run]:
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        found = [Run(*line.split(" ", 5)) for line in lines]
        return [run for run in found if run.stage == stage]


def _front_matter(bare: Path, ref: str, path: str) -> dict[str, Any]:
    text = git.run_git(["show", f"{ref}:{path}"], git_dir=bare)
    data: dict[str, Any] = msgspec.yaml.decode(split_front_matter(text).encode())
    return data


def _log(item: str, name: str) -> str:
    return f"docs/work-items/{item}/{name}"


def _ancestor(bare: Path, older: str, newer: str) -> bool:
    return git.run_git_result(["merge-base", "--is-ancestor", older, newer], git_dir=bare).ok


def _approve_when_waiting(harness: Harness, item: str, stage: str) -> bool:
    task = harness.task(item)
    if task["stage"] == stage and "awaiting approval" in task["last_reason"]:
        harness.command("approve", item)
        return True
    return False


def _deployed_record(harness: Harness) -> str:
    store = harness.client.bus.store(subjects.BUCKET_EFFECTS, Effect)
    entry = store.get(deployed_key("demo"))
    return entry.value.result if entry is not None else ""


def test_the_production_deploy_runs_at_the_merge_commit_in_a_clean_checkout(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given a repository whose staging and production commands record where they ran
    deploys = Deploys(tmp_path)
    harness = harness_factory(repos=deploys.repos())

    # When a work item goes through the pipeline
    item = harness.submit("Ship exactly this", item_id="DEMO-1")["task"]["id"]
    task = harness.wait_stage(item, "done", deadline_s=120)

    # Then the task recorded its merge commit, which is main's head
    bare = harness.layout.forge / "repos" / "demo.git"
    main = git.run_git(["rev-parse", "main"], git_dir=bare)
    assert task["merge_sha"] == main
    assert harness.stages_of(item) == ALL_STAGES
    # and production ran at it ({sha}), in a checkout of it that is not the task's worktree
    [staging] = deploys.runs("deploy-staging")
    [production] = deploys.runs("deploy")
    assert production.sha == production.head == main
    worktree = harness.layout.worktree("demo", item)
    assert Path(production.cwd) != worktree
    assert not Path(production.cwd).exists(), "the clean checkout is removed afterwards"
    # and staging ran at the head it judged, in the task's worktree; both had no base yet
    assert Path(staging.cwd) == worktree
    assert staging.sha == staging.head
    assert _ancestor(bare, staging.sha, task["staged_sha"])
    assert staging.base_sha == production.base_sha == "-"
    # and the logs name the commits, with the reference's keys beside the old ones
    deploy_log = _front_matter(bare, task["branch"], _log(item, "14-deploy-log.md"))
    assert deploy_log["deploy_status"] == "SUCCESS"
    assert deploy_log["commit"] == main
    assert deploy_log["hook_exit_code"] == deploy_log["exit_code"] == 0
    assert deploy_log["deployed_by"] == deploy_log["decided_by"] == "conveyor"
    staging_log = _front_matter(bare, task["branch"], _log(item, "15-staging-log.md"))
    assert staging_log["commit"] == staging.sha
    assert staging_log["base_url"] == ""
    # and the repository's deployed commit is on record
    assert _deployed_record(harness).split()[0] == main


def test_two_tasks_racing_on_one_repository_never_ship_an_older_tree(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given two work items that both merge before either deploys to production
    deploys = Deploys(tmp_path)
    harness = harness_factory(repos=deploys.repos(), pipeline={"stages": STAGES})
    first = harness.submit("First change")["task"]["id"]
    second = harness.submit("Second change")["task"]["id"]

    def _both_signed_off() -> bool:
        waiting = [harness.task(i) for i in (first, second)]
        for task in waiting:
            if task["stage"] == "analysis" and "awaiting approval" in task["last_reason"]:
                harness.command("approve", task["id"])
        return all(
            t["stage"] == "signoff" and "awaiting approval" in t["last_reason"] for t in waiting
        )

    wait_until(_both_signed_off, deadline_s=180, what="both items merged and awaiting signoff")
    bare = harness.layout.forge / "repos" / "demo.git"
    shas = {item: harness.task(item)["merge_sha"] for item in (first, second)}
    in_order = _ancestor(bare, shas[first], shas[second])
    older, newer = (first, second) if in_order else (second, first)
    assert _ancestor(bare, shas[older], shas[newer])

    # When the newer merge is deployed first (its rebase changed the tree staging saw, so
    # it is staged again, merged again and signed off again), and the older one after it
    def _newer_done() -> bool:
        _approve_when_waiting(harness, newer, "signoff")
        return harness.task(newer)["stage"] == "done"

    wait_until(_newer_done, deadline_s=180, what=f"{newer} deployed")
    shipped = harness.task(newer)["merge_sha"]

    def _older_done() -> bool:
        _approve_when_waiting(harness, older, "signoff")
        return harness.task(older)["stage"] == "done"

    wait_until(_older_done, deadline_s=120, what=f"{older} done")

    # Then production ran once, at the newer task's final merge commit, which is main's head
    main = git.run_git(["rev-parse", "main"], git_dir=bare)
    [production] = deploys.runs("deploy")
    assert (production.item, production.sha, production.head) == (newer, shipped, shipped)
    assert shipped == main
    assert _deployed_record(harness).split()[0] == main
    # and the newer task was re-staged once: its first merge's tree was never staged
    history = harness.task(newer)["history"]
    back = [e for e in history if (e["old"], e["new"]) == ("deploy", "deploy-staging")]
    assert len(back) == 1
    assert "UNSTAGED" in back[0]["cause"]
    assert [r.item for r in deploys.runs("deploy-staging")].count(newer) == 2
    # and the older task completed without shipping: a newer deploy already contains it
    older_task = harness.task(older)
    verdict = _front_matter(bare, older_task["branch"], _log(older, "14-deploy-log.md"))
    assert verdict["deploy_status"] == "SUPERSEDED"
    assert verdict["commit"] == shas[older]
    assert verdict["base_sha"] == main
    assert verdict["hook_exit_code"] is None
    assert verdict["deployed_by"] == "conveyor"
    assert older_task["history"][-1]["cause"].startswith("deploy SUPERSEDED")


def test_the_rollback_command_gets_the_deployed_commit_and_the_one_before(
    tmp_path: Path, harness_factory: Callable[..., Harness]
) -> None:
    # Given a watched production whose rollback command records its {sha} and {base_sha}
    prod = Production(tmp_path / "prod-state")
    try:
        repo = watched_repo(tmp_path, prod)
        repo["rollback_command"] = [*repo["rollback_command"][:-1], "{sha}:{base_sha}"]
        harness = harness_factory(repos=[repo], monitor={**MONITOR, "window_s": 30.0})
        item = harness.submit("Ship a regression")["task"]["id"]
        task = harness.wait_stage(item, "done", deadline_s=120)

        # When production breaks inside the window
        prod.state.write_text("broken")

        # Then the rollback ran once with the commit production runs (nothing before it)
        rollbacks = tmp_path / "rollbacks.log"
        wait_until(rollbacks.exists, what="the rollback", deadline_s=60)
        assert rollbacks.read_text().splitlines() == [f"{task['merge_sha']}:"]
    finally:
        prod.close()


def test_with_on_unstaged_tree_fail_an_unstaged_tree_is_failed_not_deployed(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Given two merged work items, and unstaged trees configured to fail
    deploys = Deploys(tmp_path)
    harness = harness_factory(
        repos=deploys.repos(), pipeline={"stages": STAGES}, deploy={"on_unstaged_tree": "fail"}
    )
    items = [harness.submit(title)["task"]["id"] for title in ("First", "Second")]

    def _signed_off() -> bool:
        tasks = [harness.task(i) for i in items]
        for task in tasks:
            if task["stage"] == "analysis" and "awaiting approval" in task["last_reason"]:
                harness.command("approve", task["id"])
        return all(t["stage"] == "signoff" and "awaiting" in t["last_reason"] for t in tasks)

    wait_until(_signed_off, deadline_s=180, what="both items merged and awaiting signoff")
    bare = harness.layout.forge / "repos" / "demo.git"
    shas = {item: harness.task(item)["merge_sha"] for item in items}
    newer = items[1] if _ancestor(bare, shas[items[0]], shas[items[1]]) else items[0]

    # When the newer (rebased) merge reaches its production deploy
    harness.command("approve", newer)

    # Then its deploy is FAILED without running, and the work goes back to development
    def _back() -> list[dict[str, Any]]:
        history = harness.task(newer)["history"]
        return [e for e in history if (e["old"], e["new"]) == ("deploy", "development")]

    [back] = wait_until(_back, deadline_s=60, what=f"{newer} back to development")
    assert back["cause"] == "deploy FAILED"
    assert deploys.runs("deploy") == []
    task = harness.task(newer)
    verdict = _front_matter(bare, task["branch"], _log(newer, "14-deploy-log.md"))
    assert verdict["deploy_status"] == "FAILED"
    assert "is not the tree staging judged" in verdict["reason"]
    assert verdict["commit"] == shas[newer]
