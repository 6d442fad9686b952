"""What the merge step cannot fix goes back to development, told why, within the budget.

A red re-test of the rebased head, a rebase conflict and a failing pre-merge check
each send the task back to development with the evidence in the developer's brief
(the failing output, the conflicted file), spending a developer retry; the merge
job itself ends done after one attempt and is never retried.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conveyor.app.client import Client
from gateways import git
from tests.e2e.test_faults import drive_quietly
from tests.e2e.test_no_work import Alerts
from tests.harness import (
    ALL_STAGES,
    DEMO_CHECK,
    Harness,
    Processes,
    drive,
    stored_jobs,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

GUARD_MARKER = "GUARD-MARKER: rework the feature on the new main"
# Added to main while the item is under way: it fails until the developer has had a
# rework visit, so the branch is green on its own and red once rebased onto main.
GUARD_TEST = f'''"""A test main gained while DEMO-1 was under way."""

import unittest
from pathlib import Path


class MainMovedTest(unittest.TestCase):
    def test_the_feature_was_reworked_after_main_moved(self) -> None:
        notes = Path("docs/work-items/DEMO-1/11-dev-notes.md")
        if Path("features/demo_1.py").exists():
            text = notes.read_text() if notes.exists() else ""
            self.assertIn("Rework visit", text, "{GUARD_MARKER}")
'''


def push_to_main(forge: Path, files: dict[str, str], scratch: Path) -> str:
    """Move the forge's main on by one commit holding `files`, as another merge would."""
    bare = forge / "repos" / "demo.git"
    work = scratch / "main-push"
    git.run_git(["clone", "--quiet", "--branch", "main", "--", str(bare), str(work)])
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    assert git.commit_all(work, "Main moves on")
    git.run_git(["push", "--quiet", "origin", "main"], work)
    sha = git.head_sha(work)
    shutil.rmtree(work)
    return sha


def effects(forge: Path) -> list[dict[str, Any]]:
    lines = (forge / "effects.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def ci_runs(forge: Path, sha: str) -> int:
    """How many times the local forge's CI started on `sha`."""
    return sum(
        e["kind"] == "status_set" and e["sha"] == sha and e["state"] == "pending"
        for e in effects(forge)
    )


def merged_head(forge: Path) -> str:
    """The head the repository's one merged pull request was merged at."""
    pulls = [json.loads(p.read_text()) for p in (forge / "pulls" / "demo").iterdir()]
    (merged,) = [p for p in pulls if p["merged"]]
    head: str = merged["head_sha"]
    return head


def developer_prompt(harness: Harness, item: str, visit: int) -> str:
    return (harness.layout.run_dir(f"{item}.development.{visit}.work", 1) / "prompt.md").read_text()


def merge_briefs(harness: Harness, item: str) -> list[dict[str, Any]]:
    return [b for b in harness.task(item)["briefs"] if b["kind"] == "merge"]


def sent_back(harness: Harness, item: str) -> list[tuple[str, str]]:
    return [
        (e["old"], e["new"])
        for e in harness.task(item)["history"]
        if (e["old"], e["new"]) == ("deploy-staging", "development")
    ]


def test_a_red_retest_sends_the_work_back_with_the_output_and_the_rework_merges(
    harness: Harness, tmp_path: Path
) -> None:
    # Given an item under way, and main gaining a test its feature fails once rebased
    item = harness.submit("Red once rebased")["task"]["id"]
    harness.wait_stage(item, "analysis", "architecture", "development")
    main_before = push_to_main(
        harness.layout.forge, {"tests/test_main_moved.py": GUARD_TEST}, tmp_path
    )

    # When it reaches its merge step (rebased, re-tested red), then after the rework
    task = harness.wait_stage(item, "done", "escalated", deadline_s=180)

    # Then it went back to development once, spending one developer retry, and then merged
    assert task["stage"] == "done", harness.stages_of(item)
    assert sent_back(harness, item) == [("deploy-staging", "development")]
    assert task["developer_retries"] == 1
    # The first merge job was done after one attempt (not retried), its outcome a rework
    first = harness.jobs()[f"{item}.deploy-staging.1.merge"]
    assert (first.status, first.attempts, first.outcome) == ("done", 1, "rework")
    # and the rebased head it sent back was re-tested exactly once
    assert first.head_sha
    assert git.run_git_result(
        ["merge-base", "--is-ancestor", main_before, first.head_sha],
        git_dir=harness.layout.forge / "repos" / "demo.git",
    ).ok
    assert ci_runs(harness.layout.forge, first.head_sha) == 1
    # The developer was told: which head, that it is red, and the end of the check's output
    (brief,) = merge_briefs(harness, item)
    assert f"re-test of the rebased head {first.head_sha[:12]} is red: failure" in brief["text"]
    assert GUARD_MARKER in brief["text"]
    prompt = developer_prompt(harness, item, 2)
    assert "Sent back by the deploy-staging gate (merge at " in prompt
    assert GUARD_MARKER in prompt
    # and the rework merged once, on top of main
    assert sum(e["kind"] == "pr_merged" for e in harness.forge_effects()) == 1


def test_a_rebase_conflict_names_the_file_and_a_spent_budget_escalates_once(
    harness_factory: Any, tmp_path: Path
) -> None:
    # Given a developer budget of one rework, and main adding the very file the item adds
    harness = harness_factory(pipeline={"max_developer_retries": 1})
    alerts = Alerts(harness)
    item = harness.submit("Conflicts with main")["task"]["id"]
    harness.wait_stage(item, "analysis", "architecture", "development")
    clash = {"features/demo_1.py": '"""Main got here first."""\n\nVALUE = 1\n'}
    main_after = push_to_main(harness.layout.forge, clash, tmp_path)

    # When the merge step finds the conflict, the rework cannot resolve it either
    task = harness.wait_stage(item, "escalated", "done", deadline_s=180)

    # Then it went back to development once, naming the file, then escalated on the merge
    assert task["escalated"] is True, harness.stages_of(item)
    assert task["stage"] == "deploy-staging"
    assert sent_back(harness, item) == [("deploy-staging", "development")]
    reason = "rebase onto main conflicts in features/demo_1.py"
    assert task["last_reason"] == f"developer retries exhausted ({reason})"
    # (one brief per merge candidate: the second is kept for whoever retries the task)
    briefs = merge_briefs(harness, item)
    assert len(briefs) == 2
    assert all(reason in b["text"] and "- features/demo_1.py" in b["text"] for b in briefs)
    assert reason in developer_prompt(harness, item, 2)
    # Each merge job ran once and was done: the queue never retried a conflict
    merges = [j for j in harness.jobs().values() if j.task_id == item and j.role == "merge"]
    assert sorted((j.id, j.status, j.attempts) for j in merges) == [
        (f"{item}.deploy-staging.1.merge", "done", 1),
        (f"{item}.deploy-staging.2.merge", "done", 1),
    ]
    # Nothing reached main, the branch was left as the developer pushed it
    bare = harness.layout.forge / "repos" / "demo.git"
    assert git.run_git(["rev-parse", "main"], git_dir=bare) == main_after
    assert sum(e["kind"] == "pr_merged" for e in harness.forge_effects()) == 0
    # and the operator got exactly one alert: the escalation, with the reason
    (escalation,) = [a for a in alerts.of(item) if a.level == "error"]
    assert escalation.kind == "escalated"
    assert reason in escalation.text


def test_a_failing_pre_merge_check_sends_the_work_back_and_a_passing_one_merges(
    harness_factory: Any, tmp_path: Path
) -> None:
    # Given a repository with two pre-merge checks; the first fails until a rework visit
    security = tmp_path / "security-runs"
    ratchet = tmp_path / "ratchet-runs"
    checks = [
        f"echo $CONVEYOR_HEAD_SHA >> {security}; "
        'grep -q "Rework visit" "docs/work-items/$CONVEYOR_TASK_ID/11-dev-notes.md" '
        '|| { echo "SECURITY-MARKER: finding at $CONVEYOR_HEAD_SHA"; exit 3; }',
        f"{{python}} -c \"open('{ratchet}', 'a').write('run\\n'); print('ratchet ok')\"",
    ]
    repo = {
        "name": "demo",
        "prefix": "DEMO",
        "template": "demo",
        "check_command": DEMO_CHECK,
        "pre_merge_checks": checks,
        "pre_merge_timeout_s": 60.0,
    }
    harness = harness_factory(repos=[repo])
    item = harness.submit("Checked before merge")["task"]["id"]

    # When it goes through the pipeline
    task = harness.wait_stage(item, "done", "escalated", deadline_s=180)

    # Then the failing check sent it back once, with its command and output
    assert task["stage"] == "done", harness.stages_of(item)
    assert sent_back(harness, item) == [("deploy-staging", "development")]
    (brief,) = merge_briefs(harness, item)
    command = checks[0]
    assert f"pre-merge check `{command}` failed: exit code 3" in brief["text"]
    first = harness.jobs()[f"{item}.deploy-staging.1.merge"]
    assert f"SECURITY-MARKER: finding at {first.head_sha}" in brief["text"]
    assert "SECURITY-MARKER" in developer_prompt(harness, item, 2)
    # and the checks ran in the candidates: the first twice (failed, then passed), the
    # second only once both could pass; the passing candidate merged
    runs = security.read_text().split()
    assert runs == [first.head_sha, merged_head(harness.layout.forge)]
    assert ratchet.read_text() == "run\n"
    assert sum(e["kind"] == "pr_merged" for e in harness.forge_effects()) == 1
    # Each check's output is kept in the merge run's directory
    run_dir = harness.layout.run_dir(f"{item}.deploy-staging.2.merge", 1)
    assert "ratchet ok" in (run_dir / "pre-merge-2.log").read_text()
    # and what the checks wrote never reached the branch
    bare = harness.layout.forge / "repos" / "demo.git"
    files = git.run_git(["ls-tree", "-r", "--name-only", "main"], git_dir=bare)
    assert "security-runs" not in files


def test_with_rework_off_a_conflict_fails_the_merge_step_as_before(
    harness_factory: Any, tmp_path: Path
) -> None:
    # Given the switch off, few attempts and one stage retry
    harness = harness_factory(
        pipeline={"merge_rework": False, "max_stage_retries": 1}, queue={"max_attempts": 1}
    )
    item = harness.submit("Old behaviour")["task"]["id"]
    harness.wait_stage(item, "analysis", "architecture", "development")
    push_to_main(harness.layout.forge, {"features/demo_1.py": "VALUE = 1\n"}, tmp_path)

    # When the merge conflicts, it fails and is retried on the merge step until escalation
    task = harness.wait_stage(item, "escalated", "done", deadline_s=180)

    assert task["escalated"] is True
    assert sent_back(harness, item) == []
    assert task["developer_retries"] == 0
    assert "rebase onto main conflicts in features/demo_1.py" in task["last_reason"]
    merges = [j for j in harness.jobs().values() if j.task_id == item and j.role == "merge"]
    assert {j.status for j in merges} == {"failed"}
    assert len(merges) == 2


PROBE_TEST = """\"\"\"Main's probe: records each CI run's head; may kill its launcher, once.\"\"\"

import os
import signal
import subprocess
import unittest
from pathlib import Path

RUNS = Path({runs!r})
KILLED = Path({killed!r})
KILL = {kill!r}


class MainMovedProbe(unittest.TestCase):
    def test_probe(self) -> None:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        with RUNS.open("a") as out:
            out.write(head + "\\n")
        parent = os.getppid()
        if KILL and b"launcher" in Path(f"/proc/{{parent}}/cmdline").read_bytes():
            if not KILLED.exists():
                KILLED.write_text("once")
                os.kill(parent, signal.SIGKILL)
"""


@pytest.mark.parametrize(
    ("kill", "retests"),
    [("after the re-test", 1), ("during the re-test", 2)],
    ids=["after-retest", "during-retest"],
)
def test_a_launcher_killed_at_the_retest_rechecks_only_what_it_did_not_finish(
    kill: str, retests: int, tmp_path: Path, nats_url: str
) -> None:
    # Given the Procfile processes and a pre-merge check that records its runs
    checks = tmp_path / "pre-merge-runs"
    extra = f"pre_merge_checks = [{json.dumps(f'echo $CONVEYOR_HEAD_SHA >> {checks}')}]\n"
    procs = Processes(tmp_path, nats_url, extra_toml=extra)
    procs.start("control", "control")
    # and a launcher that dies once the candidate is checked (the fault point), or while
    # its re-test runs (main's probe test kills it)
    during = kill == "during the re-test"
    procs.start("launcher", "launcher", fault="" if during else "launcher.merge_checked")
    client = Client(nats_url)
    forge = procs.data / "forge"
    runs = tmp_path / "ci-runs"
    item = "DEMO-1"
    try:
        wait_ready(client, procs)
        assert client.command("submit", {"repo": "demo", "title": "Kill me", "id": item})["ok"]
        drive(client, item, "architecture", "development", "review")
        # and main moving on, so the merge step must rebase and re-test
        probe = PROBE_TEST.format(runs=str(runs), killed=str(tmp_path / "killed"), kill=during)
        main_before = push_to_main(forge, {"tests/test_main_probe.py": probe}, tmp_path)

        # When the launcher is killed -9 and restarted
        def _died() -> bool:
            drive_quietly(client, item)
            return procs.procs["launcher"].poll() is not None

        wait_until(_died, what=f"launcher to die {kill}", deadline_s=120)
        procs.procs.pop("launcher")
        procs.start("launcher", "launcher")

        # Then the item is done, merged once at the rebased head
        task = drive(client, item, "done", deadline_s=120)
        assert [e["new"] for e in task["history"]] == ALL_STAGES
        assert sum(e["kind"] == "pr_merged" for e in effects(forge)) == 1
        head = merged_head(forge)
        bare = forge / "repos" / "demo.git"
        assert git.run_git_result(
            ["merge-base", "--is-ancestor", main_before, head], git_dir=bare
        ).ok
        # re-tested once when it had finished (the re-drive found the branch up to date
        # and its status green), again only when the first re-test never finished
        assert runs.read_text().split().count(head) == retests
        # and the pre-merge check ran once, in that head: its verdict was recorded
        assert checks.read_text().split() == [head]
        merge = next(j for j in stored_jobs(client) if j.id == f"{item}.deploy-staging.1.merge")
        assert (merge.status, merge.attempts) == ("done", 2)
        launcher_log = (tmp_path / "launcher.log").read_text()
        assert launcher_log.count('"fault.injected"') == (0 if during else 1)
    except AssertionError:
        print(procs.logs())
        raise
    finally:
        client.close()
        procs.stop_all()
