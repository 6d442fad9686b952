"""The merge step's send-back: what it says, where it goes, and the budget it spends."""

from __future__ import annotations

import msgspec
import pytest

from actors import brief_policy
from actors import gate_policy as gp
from actors import merge_policy as mp
from actors import stage_policy as sp
from bus.messages import Alert, JobOutcome, JobRequested, StageChanged
from conveyor import pipeline as pl
from conveyor.config import Config, StageConfig, load

CFG = load(env={})
NOW = 2_000.0
HEAD = "a" * 40
MERGE_JOB = "DEMO-1.deploy-staging.1.merge"


def merging(**changes: object) -> sp.Task:
    """A task on deploy-staging whose merge job was requested."""
    visits = {name: 1 for name in ("created", *(s.name for s in CFG.pipeline.stages))}
    task = sp.Task(
        id="DEMO-1",
        repo="demo",
        title="Add login",
        branch="feature/DEMO-1-add-login",
        stage="deploy-staging",
        step=pl.STEP_MERGE,
        visits=visits,
        job_id=MERGE_JOB,
        job_status="queued",
        head_sha="b" * 40,
    )
    return msgspec.structs.replace(task, **changes)


def sent_back_outcome(reason: str, **changes: object) -> JobOutcome:
    outcome = JobOutcome(
        job_id=MERGE_JOB,
        task_id="DEMO-1",
        stage="deploy-staging",
        visit=1,
        role="merge",
        status="done",
        attempts=1,
        exit_code=0,
        head_sha=HEAD,
        outcome=pl.OUTCOME_REWORK,
        reason=reason,
    )
    return msgspec.structs.replace(outcome, **changes)


def finish_and_gate(task: sp.Task, outcome: JobOutcome, cfg: Config = CFG) -> sp.Decision:
    """The merge job's outcome arrives, then its gate (the pull request is not merged)."""
    recorded = sp.on_job_outcome(task, outcome, now=NOW, cfg=cfg)
    assert recorded.task is not None
    assert recorded.evaluate
    inputs = gp.GateInputs(branch_head=HEAD, pr_merged=False)
    result = gp.evaluate_gate(gp.gate_for(recorded.task, cfg), recorded.task, inputs)
    assert result.verdict == "retry"
    return sp.on_gate(recorded.task, MERGE_JOB, result, now=NOW, revision=9, cfg=cfg, inputs=inputs)


# --- what the merge step reports -----------------------------------------------------------


def test_a_conflict_names_every_conflicted_file_and_says_what_to_do():
    back = mp.conflict(["features/demo_1.py", "calc/core.py"])
    assert back.summary == "rebase onto main conflicts in features/demo_1.py, calc/core.py"
    assert "- features/demo_1.py\n- calc/core.py" in back.detail
    assert "resolve the conflicts" in back.detail
    assert back.text.splitlines()[0] == back.summary


def test_a_conflict_in_many_files_is_bounded():
    files = [f"pkg/module_{n}.py" for n in range(500)]
    back = mp.conflict(files)
    assert back.summary.endswith(f"and {500 - mp.MAX_FILES_SHOWN} more")
    assert len(back.detail) <= mp.MAX_DETAIL_CHARS


def test_a_red_retest_names_the_rebased_head_and_keeps_the_end_of_the_output():
    log = "\n".join(f"line {n}" for n in range(5000)) + "\nFAIL: test_guard (GUARD-MARKER)"
    back = mp.red_check(
        state="failure",
        head=HEAD,
        rebased=True,
        description="check exited 1",
        target_url="https://ci.example/1",
        log=log,
    )
    assert (
        back.summary == f"re-test of the rebased head {HEAD[:12]} is red: failure (check exited 1)"
    )
    assert "Details: https://ci.example/1" in back.detail
    assert "rebased onto main it does not" in back.detail
    assert back.detail.endswith("FAIL: test_guard (GUARD-MARKER)")
    assert "line 0\n" not in back.detail
    assert len(back.detail) <= mp.MAX_DETAIL_CHARS


def test_a_red_head_that_was_not_rebased_says_so():
    back = mp.red_check(state="error", head=HEAD, rebased=False)
    assert back.summary == f"CI of the head {HEAD[:12]} is red: error"
    assert back.detail == ""
    assert back.text == back.summary


@pytest.mark.parametrize(
    ("state", "red"),
    [("failure", True), ("error", True), ("pending", False), ("success", False), (None, False)],
)
def test_only_a_finished_red_state_sends_the_work_back(state: str | None, red: bool):
    assert mp.is_red(state) is red


def test_a_failing_pre_merge_check_reports_its_command_exit_and_output():
    back = mp.failed_check(
        command="make security", exit_code=2, timeout_s=60, output="scan\nHIGH: CVE-1\n"
    )
    assert back.summary == "pre-merge check `make security` failed: exit code 2"
    assert back.detail.endswith("The check's output ends with:\nscan\nHIGH: CVE-1")


def test_a_pre_merge_check_past_its_timeout_is_a_failure():
    back = mp.failed_check(command="sleep 99", exit_code=None, timeout_s=1.5, output="")
    assert (
        back.summary
        == "pre-merge check `sleep 99` failed: timed out after 1.5s (process tree killed)"
    )


def test_a_send_back_survives_the_effect_ledger_round_trip():
    back = mp.conflict(["a.py"])
    assert msgspec.json.decode(msgspec.json.encode(back), type=mp.SendBack) == back


# --- where it goes -------------------------------------------------------------------------


def test_the_merge_step_of_the_default_pipeline_sends_work_to_development():
    assert mp.rework_target("deploy-staging", CFG) == "development"


def test_a_stage_naming_its_on_fail_sends_work_there():
    stages = [
        StageConfig(name="build", role="developer", gate="ci_green"),
        StageConfig(name="fix", role="developer", gate="ci_green"),
        StageConfig(name="ship", role="deployer", on_fail="build", merge=True),
    ]
    cfg = load(env={}, overrides={"pipeline": {"stages": [msgspec.to_builtins(s) for s in stages]}})
    assert mp.rework_target("ship", cfg) == "build"


def test_without_a_developer_stage_before_it_there_is_nowhere_to_send_work():
    stages = [
        StageConfig(name="ship", role="deployer", merge=True),
        StageConfig(name="develop", role="developer"),
    ]
    cfg = load(env={}, overrides={"pipeline": {"stages": [msgspec.to_builtins(s) for s in stages]}})
    assert mp.rework_target("ship", cfg) == ""
    assert mp.rework_target("unknown", cfg) == ""


# --- what the StageEngine does with it -----------------------------------------------------


def test_a_sent_back_merge_goes_to_development_with_a_developer_retry_and_a_brief():
    back = mp.conflict(["features/demo_1.py"])
    d = finish_and_gate(merging(), sent_back_outcome(back.text))
    assert d.task is not None
    assert (d.task.stage, d.task.step) == ("development", pl.STEP_WORK)
    assert d.task.developer_retries == 1
    assert d.task.stage_retries == 0
    assert d.task.last_reason == back.summary
    assert d.task.history[-1].cause == back.summary
    # The next developer run must move past the head the merge step left (not an older one).
    assert d.task.visit_base_sha == HEAD
    (changed,) = [m for m in d.emit if isinstance(m, StageChanged)]
    assert (changed.old, changed.new, changed.cause) == (
        "deploy-staging",
        "development",
        back.summary,
    )
    (request,) = [m for m in d.emit if isinstance(m, JobRequested)]
    assert (request.role, request.job_id) == ("developer", "DEMO-1.development.2.work")
    assert request.brief.startswith("Sent back by the deploy-staging gate (merge at ")
    assert "features/demo_1.py" in request.brief
    assert "resolve the conflicts" in request.brief
    assert [b.kind for b in d.task.briefs] == [brief_policy.KIND_MERGE]
    assert not [m for m in d.emit if isinstance(m, Alert)]


def test_the_check_output_reaches_the_brief_whole():
    output = "x" * 10_000 + "\nFINDING-AT-THE-END"
    back = mp.failed_check(command="make security", exit_code=1, timeout_s=60, output=output)
    d = finish_and_gate(merging(), sent_back_outcome(back.text))
    (request,) = [m for m in d.emit if isinstance(m, JobRequested)]
    assert "pre-merge check `make security` failed: exit code 1" in request.brief
    assert request.brief.endswith("FINDING-AT-THE-END")
    assert len(request.brief) <= brief_policy.MAX_BRIEF_CHARS


def test_an_exhausted_developer_budget_escalates_with_one_alert():
    task = merging(developer_retries=CFG.pipeline.max_developer_retries)
    back = mp.red_check(state="failure", head=HEAD, rebased=True, log="FAIL")
    d = finish_and_gate(task, sent_back_outcome(back.text))
    assert d.task is not None
    assert d.task.escalated
    assert d.task.stage == "deploy-staging"
    assert d.task.last_reason == f"developer retries exhausted ({back.summary})"
    assert not [m for m in d.emit if isinstance(m, JobRequested)]
    (alert,) = [m for m in d.emit if isinstance(m, Alert)]
    assert (alert.kind, alert.level) == ("escalated", "error")
    assert back.summary in alert.text


def test_a_merged_pull_request_wins_over_a_send_back():
    recorded = sp.on_job_outcome(merging(), sent_back_outcome("conflict"), now=NOW, cfg=CFG)
    assert recorded.task is not None
    inputs = gp.GateInputs(branch_head=HEAD, pr_merged=True)
    result = gp.evaluate_gate("pr_merged", recorded.task, inputs)
    d = sp.on_gate(recorded.task, MERGE_JOB, result, now=NOW, revision=9, cfg=CFG, inputs=inputs)
    assert d.task is not None
    assert d.task.stage == "deploy"


def test_an_unreadable_gate_waits_instead_of_sending_back():
    recorded = sp.on_job_outcome(merging(), sent_back_outcome("conflict"), now=NOW, cfg=CFG)
    assert recorded.task is not None
    inputs = gp.GateInputs(error="forge away")
    result = gp.evaluate_gate("pr_merged", recorded.task, inputs)
    d = sp.on_gate(recorded.task, MERGE_JOB, result, now=NOW, revision=9, cfg=CFG, inputs=inputs)
    assert d.task is not None
    assert (d.task.stage, d.task.step) == ("deploy-staging", pl.STEP_MERGE)
    assert not d.emit


def test_a_failed_merge_job_is_still_retried_on_the_merge_step():
    # A transient failure (forge away, lease lost) is no verdict on the code.
    failed = sent_back_outcome("", status="failed", exit_code=1, outcome="", error="lease lost")
    recorded = sp.on_job_outcome(merging(), failed, now=NOW, cfg=CFG)
    assert recorded.task is not None
    result = gp.evaluate_gate("pr_merged", recorded.task, gp.GateInputs(pr_merged=False))
    d = sp.on_gate(recorded.task, MERGE_JOB, result, now=NOW, revision=9, cfg=CFG)
    assert d.task is not None
    assert (d.task.stage, d.task.step, d.task.stage_retries) == ("deploy-staging", "merge", 1)
    assert d.task.developer_retries == 0


def test_with_nowhere_to_go_the_merge_step_is_retried():
    stages = [
        StageConfig(name="ship", role="deployer", merge=True),
        StageConfig(name="develop", role="developer"),
    ]
    cfg = load(env={}, overrides={"pipeline": {"stages": [msgspec.to_builtins(s) for s in stages]}})
    task = msgspec.structs.replace(merging(), stage="ship", visits={"created": 1, "ship": 1})
    task = msgspec.structs.replace(task, job_id="DEMO-1.ship.1.merge")
    outcome = sent_back_outcome("conflict", job_id="DEMO-1.ship.1.merge", stage="ship")
    recorded = sp.on_job_outcome(task, outcome, now=NOW, cfg=cfg)
    assert recorded.task is not None
    result = gp.evaluate_gate("pr_merged", recorded.task, gp.GateInputs(pr_merged=False))
    d = sp.on_gate(recorded.task, "DEMO-1.ship.1.merge", result, now=NOW, revision=9, cfg=cfg)
    assert d.task is not None
    assert (d.task.stage, d.task.step, d.task.stage_retries) == ("ship", "merge", 1)
