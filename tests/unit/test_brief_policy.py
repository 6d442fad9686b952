"""Rework briefs: the evidence each backward step hands the next run, bounded and de-duplicated."""

from __future__ import annotations

import msgspec
import pytest

from actors import brief_policy as bp
from actors import gate_policy as gp
from actors import stage_policy as sp
from actors import task_policy as tp
from bus.messages import JobRequested
from conveyor import pipeline as pl
from conveyor.clock import FakeClock
from conveyor.config import load

CFG = load(env={})
TID = "DEMO-1"
HEAD = "c" * 40


def _task(stage: str, **changes: object) -> sp.Task:
    base = sp.Task(
        id=TID,
        repo="demo",
        title="Add login",
        branch="feature/DEMO-1-add-login",
        stage=stage,
        step=pl.STEP_WORK,
        visits={stage: 1},
        job_id=f"{TID}.{stage}.1.work",
        job_status="done",
        head_sha=HEAD,
    )
    return msgspec.structs.replace(base, **changes)


def _artifact(name: str, front: str, body: str) -> dict[str, str | None]:
    return {pl.artifact_path(TID, name): f"---\n{front}\n---\n\n{body}"}


def _decide(task: sp.Task, inputs: gp.GateInputs, clock: FakeClock) -> sp.Decision:
    result = gp.evaluate_gate(gp.gate_for(task, CFG), task, inputs)
    return sp.on_gate(
        task, task.job_id, result, now=clock.now(), revision=5, cfg=CFG, inputs=inputs
    )


def _sent(decision: sp.Decision) -> str:
    (request,) = [m for m in decision.emit if isinstance(m, JobRequested)]
    return request.brief


def test_review_changes_send_the_reviews_findings_to_the_developer():
    files = _artifact(
        pl.REVIEW,
        f"work_item_id: {TID}\nverdict: REQUEST_CHANGES\nversion: 1",
        "# Review\n\n## Findings\n\n- F1: login accepts an empty password\n",
    )
    decision = _decide(_task("review"), gp.GateInputs(files=files, branch_head=HEAD), FakeClock())
    assert decision.task is not None
    assert decision.task.stage == "development"
    brief = _sent(decision)
    assert brief.startswith(f"Sent back by the review gate (review at {HEAD[:12]}):")
    assert "F1: login accepts an empty password" in brief
    assert "verdict" not in brief
    assert [b.kind for b in decision.task.briefs] == ["review"]


def test_a_failed_test_report_sends_its_failing_cases_first():
    body = (
        "| test | expected | actual |\n|---|---|---|\n"
        "| TC-01 | PASS | PASS |\n| TC-02 | PASS | FAIL |\n"
    )
    files = _artifact(pl.TEST_REPORT, f"work_item_id: {TID}\nresult: FAIL", body)
    brief = _sent(
        _decide(_task("testing"), gp.GateInputs(files=files, branch_head=HEAD), FakeClock())
    )
    failing = brief.split("Failing cases:\n", 1)[1].split("\n\n", 1)[0]
    assert failing == "| TC-02 | PASS | FAIL |"


def test_red_ci_sends_the_checks_state_and_description():
    task = _task("development", visit_base_sha="b" * 40)
    inputs = gp.GateInputs(
        branch_head=HEAD,
        ci_state="failure",
        ci_description="ci: 1 test failed (test_login)",
        visit_base=task.visit_base_sha,
    )
    brief = _sent(_decide(task, inputs, FakeClock()))
    assert "(ci at " in brief
    assert f"CI failure at {HEAD}: ci: 1 test failed (test_login)" in brief


def test_red_ci_sends_the_checks_url_and_the_tail_of_its_output():
    task = _task("development", visit_base_sha="b" * 40)
    inputs = gp.GateInputs(
        branch_head=HEAD,
        ci_state="failure",
        ci_description="conveyor/ci: check exited 1",
        ci_target_url="https://ci.example/runs/7",
        ci_log="collected 3 items\nFAILED tests/test_login.py::test_empty - assert False\n",
        visit_base=task.visit_base_sha,
    )
    text = _sent(_decide(task, inputs, FakeClock())).split("\n", 1)[1]
    assert text.splitlines() == [
        f"CI failure at {HEAD}: conveyor/ci: check exited 1",
        "Details: https://ci.example/runs/7",
        "The check's output ends with:",
        "collected 3 items",
        "FAILED tests/test_login.py::test_empty - assert False",
    ]


def test_a_long_check_output_keeps_the_state_and_the_outputs_end_bounded():
    task = _task("development", visit_base_sha="b" * 40)
    log = "\n".join(f"line {n}" for n in range(5000)) + "\nE   AssertionError: boom"
    inputs = gp.GateInputs(
        branch_head=HEAD,
        ci_state="error",
        ci_description="d" * 9000,
        ci_log=log,
        visit_base=task.visit_base_sha,
    )
    brief = bp.for_gate(
        "ci_green", task, inputs, gp.GateResult(verdict="retry", reason="red"), now=1.0
    )
    assert brief is not None
    assert len(brief.text) == bp.MAX_BRIEF_CHARS
    assert brief.text.startswith(f"CI error at {HEAD}: ddd")
    assert "The check's output ends with:\n…" in brief.text
    assert brief.text.endswith("E   AssertionError: boom")


def test_a_failed_deploy_sends_the_tail_of_its_log_bounded():
    log = "\n".join(f"line {n}" for n in range(2000)) + "\nERROR: health check failed\n"
    files = _artifact(pl.DEPLOY_LOG, f"work_item_id: {TID}\ndeploy_status: FAILED", log)
    brief = _sent(
        _decide(_task("deploy"), gp.GateInputs(files=files, branch_head=HEAD), FakeClock())
    )
    text = brief.split("\n", 1)[1]
    assert len(text) == bp.MAX_BRIEF_CHARS
    assert text.startswith("…")
    assert text.endswith("ERROR: health check failed")


def test_a_malformed_artifact_sends_which_file_and_key_was_wrong():
    files = _artifact(pl.REVIEW, f"work_item_id: {TID}\nverdict: MAYBE", "Body\n")
    task = _task("review")
    decision = _decide(task, gp.GateInputs(files=files, branch_head=HEAD), FakeClock())
    brief = _sent(decision)
    assert "(gate at " in brief
    assert "12-review.md" in brief
    assert "verdict" in brief


def test_a_failed_merge_step_sends_the_merge_steps_error():
    task = _task(
        "deploy-staging",
        step=pl.STEP_MERGE,
        job_status="failed",
        job_reason="rebase conflict in features/demo_1.py",
    )
    brief = _sent(_decide(task, gp.GateInputs(branch_head=HEAD, pr_merged=False), FakeClock()))
    assert "(merge at " in brief
    assert "The merge step failed: rebase conflict in features/demo_1.py" in brief


@pytest.mark.parametrize("verdict", ["pass", "wait"])
def test_a_gate_that_passes_or_waits_leaves_no_brief(verdict: str):
    result = gp.GateResult(verdict=verdict, reason="x")  # type: ignore[arg-type]
    assert bp.for_gate("ci_green", _task("development"), gp.GateInputs(), result, now=1.0) is None


def test_the_same_failure_at_the_same_head_is_kept_once_with_a_count():
    clock = FakeClock()
    task = _task("development")
    first = bp.for_gate(
        "ci_green",
        task,
        gp.GateInputs(branch_head=HEAD, ci_state="failure"),
        gp.GateResult(verdict="retry", reason="CI failure"),
        now=clock.now(),
    )
    assert first is not None
    task, text = bp.remember(task, first)
    assert "seen" not in text
    clock.advance(30)
    task, text = bp.remember(task, msgspec.structs.replace(first, at=clock.now()))
    assert [(b.kind, b.count, b.at) for b in task.briefs] == [("ci", 2, clock.now())]
    assert ", seen 2 times)" in text.splitlines()[0]
    # a new head is a new failure
    task, _ = bp.remember(task, msgspec.structs.replace(first, head="e" * 40))
    assert [(b.head[:1], b.count) for b in task.briefs] == [("c", 2), ("e", 1)]


def test_a_task_keeps_a_bounded_number_of_briefs():
    task = _task("development")
    for n in range(bp.MAX_BRIEFS + 5):
        task, _ = bp.remember(
            task, tp.Brief(kind="ci", stage="development", head=f"{n:040d}", text="red")
        )
    assert len(task.briefs) == bp.MAX_BRIEFS
    assert task.briefs[-1].head == f"{bp.MAX_BRIEFS + 4:040d}"
