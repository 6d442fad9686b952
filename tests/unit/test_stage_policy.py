"""StageEngine decisions: gates, the walk through the pipeline, rework, escalation, commands."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import gate_policy as gp
from actors import stage_policy as sp
from actors import task_policy as tp
from bus.messages import (
    Alert,
    Annotate,
    Approve,
    Cancel,
    ConfirmDeploy,
    JobOutcome,
    JobRequested,
    JobsCancelled,
    Message,
    Reject,
    Retry,
    StageChanged,
    TrackerUpdate,
)
from conveyor import pipeline as pl
from conveyor.config import Config, load

CFG = load(env={})
TID = "DEMO-1"
REPO = "demo"
BRANCH = "feature/DEMO-1-add-login"
NOW = 1_000.0
STAGES = [s.name for s in CFG.pipeline.stages]


def fm(**fields: object) -> str:
    """A markdown artifact with the given front matter."""
    lines = "".join(f"{key}: {value}\n" for key, value in fields.items())
    return f"---\n{lines}---\n\n# Body\n\nFree text the gate never reads.\n"


def path(name: str) -> str:
    return pl.artifact_path(TID, name)


TEST_PLAN_OK = f"work_item: {TID}\ntests:\n  - id: TC-01\n    type: unit\n"

GOOD_FILES: dict[str, str | None] = {
    path("01-brd.md"): fm(type="brd", work_item_id=TID),
    path("02-trz.md"): fm(type="trz", work_item_id=TID),
    path("03-acceptance-criteria.md"): fm(type="acceptance-criteria", work_item_id=TID),
    path(pl.TEST_PLAN): TEST_PLAN_OK,
    path(pl.REVIEW): fm(type="review", work_item_id=TID, verdict="APPROVED", version=2),
    path(pl.TEST_REPORT): fm(type="test-report", work_item_id=TID, result="PASS"),
    path(pl.STAGING_LOG): fm(work_item_id=TID, staging_status="SUCCESS"),
    path(pl.DEPLOY_LOG): fm(work_item_id=TID, deploy_status="SUCCESS"),
}
GOOD_ADRS = {"0001-session-store.md": fm(type="adr", work_item_id=TID)}
GOOD = gp.GateInputs(
    files=GOOD_FILES, adr_files=GOOD_ADRS, branch_head="abc123", ci_state="success", pr_merged=True
)


def with_file(name: str, text: str | None) -> gp.GateInputs:
    files = dict(GOOD_FILES)
    if text is None:
        files.pop(path(name))
    else:
        files[path(name)] = text
    return msgspec.structs.replace(GOOD, files=files)


def task_on(stage: str, **changes: object) -> sp.Task:
    """A task on `stage` whose work job has finished, every earlier stage visited once."""
    names = ["created", *STAGES]
    visits = {name: 1 for name in names[: names.index(stage) + 1]} if stage in names else {}
    base = sp.Task(
        id=TID,
        repo=REPO,
        title="Add login",
        branch=BRANCH,
        stage=stage,
        step=pl.STEP_WORK,
        visits=visits,
        job_id=tp.job_id_for(TID, stage, 1, pl.STEP_WORK),
        job_status="done",
        created_at=NOW - 500,
        updated_at=NOW - 10,
    )
    return msgspec.structs.replace(base, **changes)


def outcome_for(task: sp.Task, status: str = "done", job_id: str | None = None) -> JobOutcome:
    return JobOutcome(
        job_id=task.job_id if job_id is None else job_id,
        task_id=task.id,
        stage=task.stage,
        visit=task.visit(task.stage),
        role="whatever",
        status=status,
        attempts=1,
        exit_code=0 if status == "done" else 1,
    )


def gate(
    task: sp.Task, verdict: gp.Verdict, reason: str, *, now: float = NOW, revision: int = 7
) -> sp.Decision:
    return sp.on_gate(
        task,
        task.job_id,
        gp.GateResult(verdict=verdict, reason=reason),
        now=now,
        revision=revision,
        cfg=CFG,
    )


def of_type(emits: tuple[Message, ...], kind: type[Message]) -> list[Message]:
    return [m for m in emits if isinstance(m, kind)]


def requests(d: sp.Decision) -> list[JobRequested]:
    return [m for m in d.emit if isinstance(m, JobRequested)]


def changes(d: sp.Decision) -> list[StageChanged]:
    return [m for m in d.emit if isinstance(m, StageChanged)]


def alerts(d: sp.Decision) -> list[Alert]:
    return [m for m in d.emit if isinstance(m, Alert)]


# --- gates: good artifacts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("gate_name", "stage"),
    [
        ("branch_exists", "created"),
        ("architecture_done", "architecture"),
        ("ci_green", "development"),
        ("review_approved", "review"),
        ("tests_passed", "testing"),
        ("staging_status", "deploy-staging"),
        ("deploy_status", "deploy"),
        ("pr_merged", "deploy-staging"),
        ("", "development"),
    ],
)
def test_every_gate_passes_on_good_inputs(gate_name: str, stage: str):
    result = gp.evaluate_gate(gate_name, task_on(stage), GOOD)
    assert result.verdict == "pass"
    assert result.reason


def test_analysis_gate_passes_on_good_documents_whatever_the_approval():
    # The human approval is the stage's rule (human_approval), not the artifact gate's.
    for approved in (False, True):
        result = gp.evaluate_gate("analysis_complete", task_on("analysis", approved=approved), GOOD)
        assert result.verdict == "pass"


def test_a_passing_gate_on_a_human_approval_stage_waits_until_approved():
    passed = gp.GateResult(verdict="pass", reason="analysis complete")
    job = tp.job_id_for(TID, "analysis", 1, pl.STEP_WORK)
    waiting = sp.on_gate(task_on("analysis"), job, passed, now=NOW, revision=3, cfg=CFG)
    assert waiting.task is not None
    assert waiting.task.stage == "analysis"
    assert "awaiting approval" in waiting.task.last_reason
    moved = sp.on_gate(
        task_on("analysis", approved=True), job, passed, now=NOW, revision=3, cfg=CFG
    )
    assert moved.task is not None
    assert moved.task.stage == "architecture"


def test_front_matter_closed_with_dots_and_crlf_line_ends_are_accepted():
    review = "---\r\nwork_item_id: DEMO-1\r\nverdict: APPROVED\r\n...\r\nbody\r\n"
    result = gp.evaluate_gate("review_approved", task_on("review"), with_file(pl.REVIEW, review))
    assert result.verdict == "pass"


def test_front_matter_naming_the_work_item_under_the_older_key_is_accepted():
    review = fm(work_item=TID, verdict="APPROVED")
    result = gp.evaluate_gate("review_approved", task_on("review"), with_file(pl.REVIEW, review))
    assert result.verdict == "pass"


@pytest.mark.parametrize(
    ("gate_name", "stage", "name", "text"),
    [
        (
            "review_approved",
            "review",
            pl.REVIEW,
            fm(work_item_id=TID, verdict="REQUEST_CHANGES", version=3),
        ),
        ("tests_passed", "testing", pl.TEST_REPORT, fm(work_item_id=TID, result="FAIL")),
        (
            "staging_status",
            "deploy-staging",
            pl.STAGING_LOG,
            fm(work_item_id=TID, staging_status="FAILED"),
        ),
        (
            "deploy_status",
            "deploy",
            pl.DEPLOY_LOG,
            fm(work_item_id=TID, deploy_status="FAILED"),
        ),
    ],
)
def test_a_negative_verdict_in_a_well_formed_artifact_asks_for_rework(
    gate_name: str, stage: str, name: str, text: str
):
    result = gp.evaluate_gate(gate_name, task_on(stage), with_file(name, text))
    assert result.verdict == "rework"
    assert result.reason


def test_review_rework_reason_names_the_review_version():
    review = fm(work_item_id=TID, verdict="REQUEST_CHANGES", version=3)
    result = gp.evaluate_gate("review_approved", task_on("review"), with_file(pl.REVIEW, review))
    assert result.reason == "review v3 requests changes"


# --- gates: missing and malformed artifacts --------------------------------------------------

SINGLE_FILE_GATES = [
    ("review_approved", "review", pl.REVIEW, "verdict", "APPROVED", "approved"),
    ("tests_passed", "testing", pl.TEST_REPORT, "result", "PASS", "passed"),
    ("staging_status", "deploy-staging", pl.STAGING_LOG, "staging_status", "SUCCESS", "ok"),
    ("deploy_status", "deploy", pl.DEPLOY_LOG, "deploy_status", "SUCCESS", "DONE"),
    ("analysis_complete", "analysis", "01-brd.md", "type", "brd", None),
    ("analysis_complete", "analysis", "02-trz.md", "type", "trz", None),
    ("analysis_complete", "analysis", "03-acceptance-criteria.md", "type", "ac", None),
]


def malformed(key: str, good: str, bad_enum: str | None) -> dict[str, str | None]:
    cases: dict[str, str | None] = {
        "missing": None,
        "no front matter": f"{key}: {good}\n",
        "empty file": "",
        "not yaml": f"---\n{key}: [{good}\nwork_item_id: {TID}\n---\n",
        "yaml but not a mapping": "---\n- just\n- a list\n---\n",
        "empty front matter": "---\n---\nbody\n",
        "wrong type": f"---\n{key}:\n  nested: {good}\nwork_item_id: {TID}\n---\n",
        "missing key": f"---\nwork_item_id: {TID}\n---\n",
        "wrong work item id": fm(**{key: good, "work_item_id": "DEMO-2"}),
        "work item id not a string": fm(**{key: good, "work_item_id": 17}),
        "no closing fence": f"---\n{key}: {good}\nwork_item_id: {TID}\n\n# body\n",
        "python tag": f"---\n{key}: !!python/object/apply:os.system ['true']\n---\n",
    }
    if bad_enum is not None:
        cases["wrong enum"] = fm(**{key: bad_enum, "work_item_id": TID})
    return cases


MALFORMED_CASES = [
    pytest.param(gate_name, stage, name, text, id=f"{name}-{case}")
    for gate_name, stage, name, key, good, bad_enum in SINGLE_FILE_GATES
    for case, text in malformed(key, good, bad_enum).items()
]


@pytest.mark.parametrize(("gate_name", "stage", "name", "text"), MALFORMED_CASES)
def test_a_missing_or_malformed_artifact_retries_the_stage_naming_the_file(
    gate_name: str, stage: str, name: str, text: str | None
):
    task = task_on(stage, approved=True)
    result = gp.evaluate_gate(gate_name, task, with_file(name, text))
    assert result.verdict == "retry"
    assert name in result.reason


def test_a_missing_artifact_says_it_is_missing():
    result = gp.evaluate_gate("tests_passed", task_on("testing"), with_file(pl.TEST_REPORT, None))
    assert result.reason == "13-test-report.md: missing"


def test_an_artifact_of_another_work_item_names_the_other_id():
    text = fm(work_item_id="DEMO-2", verdict="APPROVED")
    result = gp.evaluate_gate("review_approved", task_on("review"), with_file(pl.REVIEW, text))
    assert result.verdict == "retry"
    assert "DEMO-2" in result.reason


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("missing", None),
        ("not yaml", f"work_item: {TID}\ntests: [unclosed\n"),
        ("not a mapping", "- a\n- b\n"),
        ("tests not a list", f"work_item: {TID}\ntests: many\n"),
        ("no tests", f"work_item: {TID}\ntests: []\n"),
        ("wrong work item", "work_item: DEMO-2\ntests:\n  - id: TC-01\n"),
        ("work item missing", "tests:\n  - id: TC-01\n"),
    ],
)
def test_a_bad_test_plan_retries_analysis_naming_the_file(case: str, text: str | None):
    task = task_on("analysis", approved=True)
    result = gp.evaluate_gate("analysis_complete", task, with_file(pl.TEST_PLAN, text))
    assert result.verdict == "retry", case
    assert pl.TEST_PLAN in result.reason


def test_analysis_gate_checks_documents_before_approval():
    # Given an approved analysis whose BRD was never written
    task = task_on("analysis", approved=True)
    # When the gate runs
    result = gp.evaluate_gate("analysis_complete", task, with_file("01-brd.md", None))
    # Then approval does not let it through
    assert result.verdict == "retry"
    assert "01-brd.md" in result.reason


def test_architecture_gate_without_any_adr_retries():
    inputs = msgspec.structs.replace(GOOD, adr_files={})
    result = gp.evaluate_gate("architecture_done", task_on("architecture"), inputs)
    assert result == gp.GateResult(verdict="retry", reason="06-adr: no ADR")


@pytest.mark.parametrize(
    "text",
    [
        "no front matter at all\n",
        "---\ntype: [adr\n---\n",
        "---\ntype:\n  x: 1\n---\n",
        fm(type="adr", work_item_id="OTHER-9"),
        "---\ntype: adr\nwork_item_id: DEMO-1\n",
        "---\nwork_item_id: DEMO-1\n---\n",
    ],
)
def test_architecture_gate_with_only_malformed_adrs_retries_naming_each_file(text: str):
    inputs = msgspec.structs.replace(GOOD, adr_files={"0001-a.md": text, "0002-b.md": text})
    result = gp.evaluate_gate("architecture_done", task_on("architecture"), inputs)
    assert result.verdict == "retry"
    assert "06-adr/0001-a.md" in result.reason
    assert "06-adr/0002-b.md" in result.reason


def test_architecture_gate_passes_when_one_adr_of_several_is_good():
    adrs = {"0001-draft.md": "scribbles\n", "0002-real.md": fm(type="adr", work_item_id=TID)}
    inputs = msgspec.structs.replace(GOOD, adr_files=adrs)
    result = gp.evaluate_gate("architecture_done", task_on("architecture"), inputs)
    assert result.verdict == "pass"
    assert "0002-real.md" in result.reason


@pytest.mark.parametrize(
    ("ci_state", "verdict"),
    [
        ("success", "pass"),
        ("failure", "retry"),
        ("error", "retry"),
        ("pending", "wait"),
        (None, "wait"),
        ("weird", "wait"),
    ],
)
def test_ci_gate_follows_the_commit_status_of_the_branch_head(ci_state: str | None, verdict: str):
    inputs = msgspec.structs.replace(GOOD, ci_state=ci_state)
    result = gp.evaluate_gate("ci_green", task_on("development"), inputs)
    assert result.verdict == verdict
    assert "CI" in result.reason


@pytest.mark.parametrize("head", [None, ""])
def test_intake_gate_retries_when_the_branch_is_missing_on_the_forge(head: str | None):
    inputs = msgspec.structs.replace(GOOD, branch_head=head)
    result = gp.evaluate_gate("branch_exists", task_on("created"), inputs)
    assert result.verdict == "retry"
    assert BRANCH in result.reason


@pytest.mark.parametrize("merged", [None, False])
def test_merge_gate_retries_while_the_pull_request_is_not_merged(merged: bool | None):
    inputs = msgspec.structs.replace(GOOD, pr_merged=merged)
    result = gp.evaluate_gate("pr_merged", task_on("deploy-staging"), inputs)
    assert result == gp.GateResult(verdict="retry", reason="pull request not merged")


def test_unreadable_gate_inputs_wait_instead_of_failing_the_stage():
    inputs = msgspec.structs.replace(GOOD, error="forge timed out")
    result = gp.evaluate_gate("review_approved", task_on("review"), inputs)
    assert result == gp.GateResult(
        verdict="wait", reason="gate inputs unavailable: forge timed out"
    )


def test_an_unknown_gate_retries_and_names_itself():
    result = gp.evaluate_gate("vibes_check", task_on("review"), GOOD)
    assert result.verdict == "retry"
    assert "vibes_check" in result.reason


GATE_NAMES = [
    "branch_exists",
    "pr_merged",
    "analysis_complete",
    "architecture_done",
    "ci_green",
    "review_approved",
    "tests_passed",
    "staging_status",
    "deploy_status",
]
artifact_text = st.one_of(
    st.text(max_size=200),
    st.builds(lambda body: f"---\n{body}\n---\n", st.text(max_size=200)),
    st.builds(
        lambda k, v: f"---\n{k}: {v}\nwork_item_id: {TID}\n---\n",
        st.sampled_from(
            [
                "verdict",
                "result",
                "staging_status",
                "deploy_status",
                "type",
                "version",
                "work_item_id",
            ]
        ),
        st.text(max_size=40),
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    gate_name=st.sampled_from(GATE_NAMES),
    name=st.sampled_from(sorted(GOOD_FILES)),
    text=artifact_text,
    approved=st.booleans(),
)
def test_no_artifact_text_makes_a_gate_raise(gate_name: str, name: str, text: str, approved: bool):
    files = {**GOOD_FILES, name: text}
    inputs = msgspec.structs.replace(GOOD, files=files, adr_files={"0001.md": text})
    result = gp.evaluate_gate(gate_name, task_on("review", approved=approved), inputs)
    assert result.verdict in ("pass", "wait", "retry", "rework")
    assert result.reason


# --- the walk through the pipeline -----------------------------------------------------------


def test_a_task_walks_the_default_pipeline_to_done_when_every_gate_passes():
    # Given a freshly submitted task
    d = sp.new_task(
        task_id=TID,
        repo=REPO,
        title="Add login",
        description="Users log in",
        branch=BRANCH,
        now=NOW,
        cfg=CFG,
    )
    assert d.task is not None
    task, revision, now = d.task, 1, NOW
    emitted: list[Message] = list(d.emit)
    # When each job finishes and the gate of its step passes (analysis after approval)
    for _ in range(30):
        if task.terminal:
            break
        now += 10.0
        done = sp.on_job_outcome(task, outcome_for(task), now=NOW, cfg=CFG)
        assert done.evaluate
        assert done.task is not None
        task, revision = done.task, revision + 1
        result = gp.evaluate_gate(gp.gate_for(task, CFG), task, GOOD)
        assert result.verdict == "pass", (task.stage, task.step, result)
        d = sp.on_gate(task, task.job_id, result, now=now, revision=revision, cfg=CFG)
        if d.task is not None and "awaiting approval" in d.task.last_reason:
            emitted.extend(d.emit)
            task, revision = d.task, revision + 1
            approved = sp.on_command(task, Approve(id=TID), now=now, revision=revision, cfg=CFG)
            assert approved.ok
            assert approved.evaluate
            assert approved.task is not None
            task, revision = approved.task, revision + 1
            result = gp.evaluate_gate(gp.gate_for(task, CFG), task, GOOD)
            d = sp.on_gate(task, task.job_id, result, now=now, revision=revision, cfg=CFG)
        assert d.task is not None
        for event in changes(d):
            assert event.revision == revision + 1
            assert event.at == now
        emitted.extend(d.emit)
        task, revision = d.task, revision + 1
    # Then it is done, with every stage in its history and a cause for each move
    assert task.stage == pl.DONE
    assert not task.escalated
    assert [h.new for h in task.history] == ["created", *STAGES, "done"]
    assert [h.old for h in task.history] == ["", "created", *STAGES]
    assert all(h.cause for h in task.history)
    assert [h.at for h in task.history] == sorted(h.at for h in task.history)
    # And one job was requested per stage (plus the merge step), with deterministic ids
    jobs = [m for m in emitted if isinstance(m, JobRequested)]
    assert [j.job_id for j in jobs] == [
        "DEMO-1.created.1.intake",
        "DEMO-1.analysis.1.work",
        "DEMO-1.architecture.1.work",
        "DEMO-1.development.1.work",
        "DEMO-1.review.1.work",
        "DEMO-1.testing.1.work",
        "DEMO-1.deploy-staging.1.work",
        "DEMO-1.deploy-staging.1.merge",
        "DEMO-1.deploy.1.work",
    ]
    assert [j.role for j in jobs] == [
        "intake",
        "analyst",
        "architect",
        "developer",
        "reviewer",
        "tester",
        "deployer",
        "merge",
        "deployer",
    ]
    assert all(j.task_id == TID and j.repo == REPO and j.branch == BRANCH for j in jobs)
    # And a StageChanged for every move, matching the history
    moves = [m for m in emitted if isinstance(m, StageChanged)]
    assert [(m.old, m.new, m.cause) for m in moves] == [
        (h.old, h.new, h.cause) for h in task.history
    ]
    revisions = [m.revision for m in moves]
    assert revisions == sorted(set(revisions))
    # And the owner heard about the analysis once, and about the end
    notes = [m for m in emitted if isinstance(m, Alert)]
    assert [n.level for n in notes] == ["info", "info"]
    assert "approve" in notes[0].text
    assert "done" in notes[1].text


def test_new_task_starts_on_created_with_an_intake_job_and_revision_one():
    d = sp.new_task(
        task_id=TID, repo=REPO, title="Add login", description="", branch=BRANCH, now=NOW, cfg=CFG
    )
    assert d.task is not None
    assert (d.task.stage, d.task.step, d.task.job_status) == ("created", "intake", "queued")
    assert d.task.job_id == "DEMO-1.created.1.intake"
    (request,) = requests(d)
    assert (request.role, request.visit, request.requested_at) == ("intake", 1, NOW)
    (change,) = changes(d)
    assert (change.old, change.new, change.revision, change.cause) == (
        "",
        "created",
        1,
        "submitted",
    )


def test_new_task_is_deterministic_for_the_same_input():
    def make() -> sp.Decision:
        return sp.new_task(
            task_id=TID, repo=REPO, title="t", description="d", branch=BRANCH, now=NOW, cfg=CFG
        )

    assert make() == make()


def test_a_passing_deploy_finishes_the_task_without_requesting_another_job():
    d = gate(task_on("deploy"), "pass", "deploy SUCCESS")
    assert d.task is not None
    assert d.task.stage == "done"
    assert d.task.step == ""
    assert requests(d) == []
    assert [(c.old, c.new) for c in changes(d)] == [("deploy", "done")]
    assert [a.level for a in alerts(d)] == ["info"]


# --- rework, retries and escalation ---------------------------------------------------------


def test_review_request_changes_sends_the_task_back_to_development():
    # Given a task on review whose reviewer finished
    task = task_on("review")
    # When the review requests changes
    d = gate(task, "rework", "review v1 requests changes", revision=12)
    # Then it is back on development with one developer retry used
    assert d.task is not None
    assert d.task.stage == "development"
    assert d.task.developer_retries == 1
    assert d.task.history[-1] == tp.HistoryEntry(
        at=NOW, old="review", new="development", cause="review v1 requests changes"
    )
    # And a second developer visit is requested, and the move is announced
    (request,) = requests(d)
    assert (request.job_id, request.role, request.visit) == (
        "DEMO-1.development.2.work",
        "developer",
        2,
    )
    (change,) = changes(d)
    assert (change.old, change.new, change.revision) == ("review", "development", 13)


def test_a_failed_test_report_sends_the_task_back_to_development():
    d = gate(task_on("testing", developer_retries=1), "rework", "test report FAIL")
    assert d.task is not None
    assert d.task.stage == "development"
    assert d.task.developer_retries == 2
    assert [r.job_id for r in requests(d)] == ["DEMO-1.development.2.work"]


def test_a_failed_deploy_rolls_back_to_development():
    d = gate(task_on("deploy"), "rework", "deploy FAILED")
    assert d.task is not None
    assert d.task.stage == "development"
    assert d.task.developer_retries == 1


def test_rework_after_the_developer_budget_is_spent_escalates_without_a_job():
    # Given a task that has already been reworked max_developer_retries times
    limit = CFG.pipeline.max_developer_retries
    task = task_on("review", developer_retries=limit)
    # When the review requests changes again
    d = gate(task, "rework", "review v4 requests changes")
    # Then the task is escalated where it is, humans are alerted, no job is requested
    assert d.task is not None
    assert d.task.escalated
    assert d.task.stage == "review"
    assert d.task.developer_retries == limit
    assert requests(d) == []
    assert changes(d) == []
    (alert,) = alerts(d)
    assert alert.level == "error"
    assert TID in alert.text
    assert "retry" in alert.text


def test_each_rework_up_to_the_budget_is_allowed_then_the_next_escalates():
    task = task_on("review")
    for n in range(1, CFG.pipeline.max_developer_retries + 1):
        d = gate(msgspec.structs.replace(task, developer_retries=n - 1), "rework", "changes")
        assert d.task is not None
        assert not d.task.escalated
        assert d.task.developer_retries == n
    d = gate(msgspec.structs.replace(task, developer_retries=n), "rework", "changes")
    assert d.task is not None
    assert d.task.escalated


def test_red_ci_on_development_counts_as_a_developer_retry():
    d = gate(task_on("development"), "retry", "CI failure for branch head")
    assert d.task is not None
    assert d.task.stage == "development"
    assert (d.task.developer_retries, d.task.stage_retries) == (1, 0)
    assert [r.job_id for r in requests(d)] == ["DEMO-1.development.2.work"]
    assert changes(d) == []


def test_red_ci_after_the_developer_budget_escalates():
    task = task_on("development", developer_retries=CFG.pipeline.max_developer_retries)
    d = gate(task, "retry", "CI failure for branch head")
    assert d.task is not None
    assert d.task.escalated
    assert requests(d) == []
    assert [a.level for a in alerts(d)] == ["error"]


def test_red_architecture_gate_retries_the_stage():
    d = gate(task_on("architecture"), "retry", "06-adr: no ADR")
    assert d.task is not None
    assert d.task.stage == "architecture"
    assert (d.task.stage_retries, d.task.developer_retries) == (1, 0)
    assert d.task.last_reason == "06-adr: no ADR"
    (request,) = requests(d)
    assert (request.job_id, request.role) == ("DEMO-1.architecture.2.work", "architect")


def test_red_architecture_gate_escalates_after_max_stage_retries():
    # Given an architecture stage retried max_stage_retries times
    task = task_on("architecture", stage_retries=CFG.pipeline.max_stage_retries)
    # When its gate is red again
    d = gate(task, "retry", "06-adr: no ADR")
    # Then it is escalated with an alert and no new job
    assert d.task is not None
    assert d.task.escalated
    assert requests(d) == []
    assert "stage retries exhausted" in d.reason
    assert [a.level for a in alerts(d)] == ["error"]


def test_a_failed_staging_deploy_retries_the_stage_as_configured():
    d = gate(task_on("deploy-staging"), "rework", "staging FAILED")
    assert d.task is not None
    assert d.task.stage == "deploy-staging"
    assert (d.task.stage_retries, d.task.developer_retries) == (1, 0)


def test_moving_to_a_new_stage_resets_stage_retries_but_keeps_developer_retries():
    task = task_on("architecture", stage_retries=2, developer_retries=1)
    d = gate(task, "pass", "ADR present")
    assert d.task is not None
    assert (d.task.stage, d.task.stage_retries, d.task.developer_retries) == ("development", 0, 1)


def test_gates_of_an_escalated_task_are_ignored():
    d = gate(task_on("review", escalated=True), "pass", "review v2 approved")
    assert d.task is None
    assert d.emit == ()


# --- analysis approval -----------------------------------------------------------------------


def test_analysis_waiting_for_approval_alerts_once():
    # Given an analysis whose analyst finished
    task = task_on("analysis")
    reason = "analysis complete, awaiting approval"
    # When the gate passes but nobody has approved yet
    first = gate(task, "pass", "analysis complete")
    # Then the owner is told once, and the task remembers why it waits
    assert first.task is not None
    assert first.task.stage == "analysis"
    assert first.task.last_reason == reason
    (alert,) = alerts(first)
    assert alert.level == "info"
    assert TID in alert.text
    assert requests(first) == []
    # When the same wait comes again (reconciler, replay)
    again = gate(first.task, "pass", "analysis complete", now=NOW + 60)
    # Then nothing changes and nobody is alerted again
    assert again.task is None
    assert again.emit == ()


def test_waiting_on_ci_does_not_alert():
    d = gate(task_on("development"), "wait", "CI pending for head")
    assert d.task is not None
    assert d.emit == ()


def test_approve_before_the_analyst_finished_does_not_evaluate_the_gate():
    # Given an analysis whose analyst is still working
    task = task_on("analysis", job_status="queued")
    # When the owner approves
    d = sp.on_command(task, Approve(id=TID), now=NOW, revision=3, cfg=CFG)
    # Then the approval is recorded but the gate waits for the job
    assert d.ok
    assert d.task is not None
    assert d.task.approved
    assert not d.evaluate
    # When the analyst then finishes, the gate is evaluated and passes
    finished = sp.on_job_outcome(d.task, outcome_for(d.task), now=NOW, cfg=CFG)
    assert finished.evaluate
    assert finished.task is not None
    result = gp.evaluate_gate("analysis_complete", finished.task, GOOD)
    assert result.verdict == "pass"


def test_approve_after_the_analyst_finished_evaluates_the_gate():
    d = sp.on_command(task_on("analysis"), Approve(id=TID), now=NOW, revision=3, cfg=CFG)
    assert d.ok
    assert d.evaluate
    assert d.task is not None
    assert d.task.approved


def test_a_repeated_approve_changes_nothing():
    d = sp.on_command(
        task_on("analysis", approved=True), Approve(id=TID), now=NOW, revision=3, cfg=CFG
    )
    assert d.ok
    assert d.task is None
    assert not d.evaluate


@pytest.mark.parametrize("stage", ["architecture", "development", "deploy"])
def test_approve_on_another_stage_is_refused(stage: str):
    d = sp.on_command(task_on(stage), Approve(id=TID), now=NOW, revision=3, cfg=CFG)
    assert not d.ok
    assert d.task is None
    assert "no human approval gate" in d.error
    assert d.field == "id"


def test_reject_sends_the_analysis_back_to_the_analyst():
    # Given an approved analysis
    task = task_on("analysis", approved=True)
    # When the owner rejects it
    d = sp.on_command(task, Reject(id=TID, reason="scope too big"), now=NOW, revision=3, cfg=CFG)
    # Then a new analyst visit is requested and the approval is withdrawn
    assert d.ok
    assert d.task is not None
    assert d.task.stage == "analysis"
    assert not d.task.approved
    assert "scope too big" in d.task.last_reason
    (request,) = requests(d)
    assert (request.job_id, request.role, request.visit) == ("DEMO-1.analysis.2.work", "analyst", 2)


def test_reject_while_the_analyst_still_works_is_refused():
    d = sp.on_command(
        task_on("analysis", job_status="running"), Reject(id=TID), now=NOW, revision=3, cfg=CFG
    )
    assert not d.ok
    assert "still running" in d.error


def test_reject_on_another_stage_is_refused():
    d = sp.on_command(task_on("review"), Reject(id=TID), now=NOW, revision=3, cfg=CFG)
    assert not d.ok
    assert d.task is None


# --- cancel, retry and other commands ------------------------------------------------------


def test_cancel_stops_the_task_and_cancels_its_jobs():
    d = sp.on_command(
        task_on("development", job_status="queued"),
        Cancel(id=TID, reason="not needed"),
        now=NOW,
        revision=9,
        cfg=CFG,
    )
    assert d.ok
    assert d.task is not None
    assert d.task.stage == "cancelled"
    assert d.task.terminal
    assert d.task.history[-1].cause == "cancelled: not needed"
    (jobs_cancelled,) = of_type(d.emit, JobsCancelled)
    assert jobs_cancelled == JobsCancelled(task_id=TID, reason="cancelled: not needed")
    (change,) = changes(d)
    assert (change.old, change.new, change.revision) == ("development", "cancelled", 10)


def test_a_second_cancel_is_refused():
    first = sp.on_command(task_on("review"), Cancel(id=TID), now=NOW, revision=9, cfg=CFG)
    assert first.task is not None
    second = sp.on_command(first.task, Cancel(id=TID), now=NOW + 1, revision=10, cfg=CFG)
    assert not second.ok
    assert second.task is None
    assert second.emit == ()
    assert "cancelled" in second.error


@pytest.mark.parametrize(
    "cmd",
    [Approve(id=TID), Reject(id=TID), Cancel(id=TID), Retry(id=TID), ConfirmDeploy(id=TID)],
    ids=lambda c: type(c).__name__,
)
def test_commands_on_a_done_task_are_refused(
    cmd: Approve | Reject | Cancel | Retry | ConfirmDeploy,
):
    task = task_on("done", step="", job_id="", job_status="")
    d = sp.on_command(task, cmd, now=NOW, revision=20, cfg=CFG)
    assert not d.ok
    assert d.task is None
    assert d.emit == ()
    assert d.error


def test_retry_of_an_escalated_task_resets_its_budgets_and_requests_the_stage_again():
    # Given a task escalated on review after spending every retry
    task = task_on(
        "review", escalated=True, developer_retries=4, stage_retries=2, job_status="done"
    )
    # When the operator retries it
    d = sp.on_command(task, Retry(id=TID), now=NOW, revision=5, cfg=CFG)
    # Then it is live again with fresh budgets and a new reviewer visit
    assert d.ok
    assert d.task is not None
    assert not d.task.escalated
    assert (d.task.developer_retries, d.task.stage_retries) == (0, 0)
    assert d.task.stage == "review"
    (request,) = requests(d)
    assert (request.job_id, request.role) == ("DEMO-1.review.2.work", "reviewer")


def test_retry_of_a_task_whose_job_failed_is_accepted():
    d = sp.on_command(
        task_on("development", job_status="failed"), Retry(id=TID), now=NOW, revision=5, cfg=CFG
    )
    assert d.ok
    assert [r.job_id for r in requests(d)] == ["DEMO-1.development.2.work"]


def test_retry_of_a_stuck_intake_reruns_the_intake_step():
    task = task_on("created", step=pl.STEP_INTAKE, escalated=True, job_id="DEMO-1.created.1.intake")
    d = sp.on_command(task, Retry(id=TID), now=NOW, revision=5, cfg=CFG)
    assert d.task is not None
    assert d.task.step == pl.STEP_INTAKE
    assert [(r.job_id, r.role) for r in requests(d)] == [("DEMO-1.created.2.intake", "intake")]


@pytest.mark.parametrize("job_status", ["queued", "cancelled"])
def test_retry_of_a_task_that_is_working_normally_is_refused(job_status: str):
    d = sp.on_command(
        task_on("development", job_status=job_status), Retry(id=TID), now=NOW, revision=5, cfg=CFG
    )
    assert not d.ok
    assert d.task is None
    assert d.emit == ()


def test_confirm_deploy_is_refused_without_protected_repositories():
    d = sp.on_command(task_on("deploy"), ConfirmDeploy(id=TID), now=NOW, revision=5, cfg=CFG)
    assert not d.ok
    assert d.task is None


# --- outcomes and stale inputs ---------------------------------------------------------------


def test_the_outcome_of_the_awaited_job_records_it_and_asks_for_the_gate():
    task = task_on("review", job_status="queued")
    d = sp.on_job_outcome(task, outcome_for(task, status="failed"), now=NOW, cfg=CFG)
    assert d.evaluate
    assert d.task is not None
    assert d.task.job_status == "failed"


def test_a_replayed_outcome_changes_nothing_but_may_be_evaluated_again():
    task = task_on("review", job_status="done")
    d = sp.on_job_outcome(task, outcome_for(task), now=NOW, cfg=CFG)
    assert d.task is None
    assert d.evaluate


def test_a_cancelled_job_is_recorded_without_evaluating_the_gate():
    task = task_on("review", job_status="queued")
    d = sp.on_job_outcome(task, outcome_for(task, status="cancelled"), now=NOW, cfg=CFG)
    assert d.task is not None
    assert d.task.job_status == "cancelled"
    assert not d.evaluate


def test_the_outcome_of_a_superseded_job_is_ignored():
    # Given a task that moved on to its second development visit
    task = task_on("development", job_id="DEMO-1.development.2.work", job_status="queued")
    # When the outcome of the first visit's job arrives late
    d = sp.on_job_outcome(
        task, outcome_for(task, job_id="DEMO-1.development.1.work"), now=NOW, cfg=CFG
    )
    # Then nothing happens
    assert d.task is None
    assert not d.evaluate
    assert d.emit == ()


@pytest.mark.parametrize("stage", ["done", "cancelled"])
def test_an_outcome_for_a_finished_task_is_ignored(stage: str):
    task = task_on(stage, job_id="DEMO-1.deploy.1.work", job_status="queued")
    d = sp.on_job_outcome(task, outcome_for(task), now=NOW, cfg=CFG)
    assert d.task is None
    assert not d.evaluate


def test_the_gate_of_a_superseded_job_is_ignored():
    task = task_on("development", job_id="DEMO-1.development.2.work")
    d = sp.on_gate(
        task,
        "DEMO-1.development.1.work",
        gp.GateResult(verdict="pass", reason="CI green for branch head"),
        now=NOW,
        revision=4,
        cfg=CFG,
    )
    assert d.task is None
    assert d.emit == ()


def test_a_gate_while_the_job_is_still_running_is_not_decided():
    d = gate(task_on("review", job_status="queued"), "pass", "review v1 approved")
    assert d.task is None
    assert d.emit == ()


def test_a_gate_for_a_cancelled_task_is_ignored():
    d = gate(task_on("cancelled", job_status="done"), "pass", "whatever")
    assert d.task is None
    assert d.emit == ()


# --- the merge step --------------------------------------------------------------------------


def test_staging_success_starts_the_merge_step_instead_of_moving_on():
    # Given a staging deploy that finished
    task = task_on("deploy-staging")
    assert gp.gate_for(task, CFG) == "staging_status"
    # When its gate passes
    d = gate(task, "pass", "staging SUCCESS")
    # Then the task stays on deploy-staging, on its merge step, and a merge job is requested
    assert d.task is not None
    assert (d.task.stage, d.task.step) == ("deploy-staging", pl.STEP_MERGE)
    assert changes(d) == []
    (request,) = requests(d)
    assert (request.job_id, request.role, request.stage) == (
        "DEMO-1.deploy-staging.1.merge",
        "merge",
        "deploy-staging",
    )
    assert gp.gate_for(d.task, CFG) == "pr_merged"


def test_a_merged_pull_request_moves_the_task_to_deploy():
    # Given a task whose merge job finished
    task = task_on(
        "deploy-staging",
        step=pl.STEP_MERGE,
        job_id="DEMO-1.deploy-staging.1.merge",
        job_status="queued",
    )
    finished = sp.on_job_outcome(task, outcome_for(task), now=NOW, cfg=CFG)
    assert finished.task is not None
    # When the pull request is merged
    result = gp.evaluate_gate(gp.gate_for(finished.task, CFG), finished.task, GOOD)
    d = gate(finished.task, result.verdict, result.reason)
    # Then the task moves to deploy with a deployer job
    assert d.task is not None
    assert (d.task.stage, d.task.step) == ("deploy", pl.STEP_WORK)
    assert [(c.old, c.new) for c in changes(d)] == [("deploy-staging", "deploy")]
    assert [(r.job_id, r.role) for r in requests(d)] == [("DEMO-1.deploy.1.work", "deployer")]


def test_an_unmerged_pull_request_retries_the_merge_step():
    task = task_on("deploy-staging", step=pl.STEP_MERGE, job_id="DEMO-1.deploy-staging.1.merge")
    d = gate(task, "retry", "pull request not merged")
    assert d.task is not None
    assert (d.task.stage, d.task.step, d.task.stage_retries) == (
        "deploy-staging",
        pl.STEP_MERGE,
        1,
    )
    assert [r.role for r in requests(d)] == ["merge"]


def test_a_stage_retry_drops_an_approval_given_to_the_previous_visit():
    # Given an analysis approved before its analyst finished, whose artifacts then fail
    task = task_on("analysis", approved=True)
    failed = gp.GateResult(verdict="retry", reason="01-brd.md: missing")
    # When the gate fails and the stage is retried
    d = sp.on_gate(task, task.job_id, failed, now=NOW, revision=3, cfg=CFG)
    # Then the new visit waits for a new approval
    assert d.task is not None
    assert d.task.visit("analysis") == 2
    assert d.task.approved is False


def test_a_task_with_a_pending_outbox_survives_a_store_round_trip():
    # A crash between persisting a decision and flushing its outbox leaves the emits
    # in the stored record; a restarted engine must be able to read them back.
    d = sp.new_task(
        task_id=TID, repo=REPO, title="Add login", description="", branch=BRANCH, now=NOW, cfg=CFG
    )
    assert d.task is not None
    stored = msgspec.structs.replace(d.task, outbox=list(d.emit))
    loaded = msgspec.json.decode(msgspec.json.encode(stored), type=sp.Task)
    assert loaded.outbox == list(d.emit)


# --- circuit breaker -----------------------------------------------------------------------


def test_a_task_that_requested_its_job_ceiling_escalates_instead_of_retrying_again():
    cfg = load(env={"CONVEYOR_PIPELINE__MAX_TASK_JOBS": "5"})
    task = task_on("architecture", jobs_requested=5)
    d = sp.on_gate(
        task,
        task.job_id,
        gp.GateResult(verdict="retry", reason="no ADR"),
        now=NOW,
        revision=3,
        cfg=cfg,
    )
    assert d.task is not None
    assert d.task.escalated
    assert requests(d) == []
    assert "circuit breaker" in alerts(d)[0].text


def test_a_rework_past_the_job_ceiling_escalates_too():
    cfg = load(env={"CONVEYOR_PIPELINE__MAX_TASK_JOBS": "3"})
    task = task_on("review", jobs_requested=3)
    d = sp.on_gate(
        task,
        task.job_id,
        gp.GateResult(verdict="rework", reason="v1"),
        now=NOW,
        revision=3,
        cfg=cfg,
    )
    assert d.task is not None
    assert d.task.escalated
    assert d.task.stage == "review"


def test_every_job_request_counts_towards_the_breaker_and_an_operator_retry_resets_it():
    task = task_on("architecture", jobs_requested=2)
    d = gate(task, "retry", "no ADR")
    assert d.task is not None
    assert d.task.jobs_requested == 3
    escalated = msgspec.structs.replace(d.task, escalated=True, job_status="done")
    again = sp.on_command(escalated, Retry(id=TID), now=NOW, revision=9, cfg=CFG)
    assert again.task is not None
    assert again.task.jobs_requested == 1
    assert again.task.budget_used_usd == 0.0


def test_the_job_ceiling_of_zero_switches_the_breaker_off():
    cfg = load(env={"CONVEYOR_PIPELINE__MAX_TASK_JOBS": "0"})
    assert tp.breaker_open(task_on("development", jobs_requested=10_000), cfg) == ""


def test_spending_the_agent_budget_escalates_instead_of_evaluating_the_gate():
    cfg = load(env={"CONVEYOR_PIPELINE__MAX_TASK_COST_USD": "1.0"})
    task = task_on("development", job_status="running", budget_used_usd=0.8, cost_usd=3.0)
    outcome = msgspec.structs.replace(outcome_for(task), cost_usd=0.25, head_sha="f00d")
    d = sp.on_job_outcome(task, outcome, now=NOW, cfg=cfg)
    assert d.task is not None
    assert d.task.escalated
    assert not d.evaluate
    assert d.task.cost_usd == pytest.approx(3.25)
    assert d.task.head_sha == "f00d"
    assert "agent budget spent ($1.05 of $1.00)" in alerts(d)[0].text


def test_an_outcome_within_the_budget_records_cost_and_head_then_evaluates():
    task = task_on("development", job_status="running")
    outcome = msgspec.structs.replace(outcome_for(task), cost_usd=0.5, head_sha="beef")
    d = sp.on_job_outcome(task, outcome, now=NOW, cfg=CFG)
    assert d.evaluate
    assert d.task is not None
    assert (d.task.head_sha, d.task.cost_usd, d.task.escalated) == ("beef", 0.5, False)


# --- tracker states (status only) ----------------------------------------------------------


def tracker(task: sp.Task, state: str, key: str = "plane:d1") -> sp.Decision:
    update = TrackerUpdate(id=task.id, state=state, key=key)
    return sp.on_tracker(task, update, now=NOW, revision=4, cfg=CFG)


def test_approved_in_the_tracker_approves_analysis_and_evaluates_its_gate():
    d = tracker(task_on("analysis"), "approved")
    assert d.ok
    assert d.evaluate
    assert d.task is not None
    assert d.task.approved
    assert d.task.applied == ["plane:d1"]
    assert d.task.tracker_state == "approved"


def test_a_replayed_tracker_event_changes_nothing():
    first = tracker(task_on("analysis"), "approved")
    assert first.task is not None
    again = tracker(first.task, "approved")
    assert again.task is None
    assert not again.evaluate
    assert "already applied" in again.reason


def test_rejected_in_the_tracker_reruns_analysis_once():
    d = tracker(task_on("analysis"), "rejected")
    assert d.task is not None
    assert [r.stage for r in requests(d)] == ["analysis"]
    assert d.task.visit("analysis") == 2


def test_rejected_while_the_analysis_job_runs_is_only_noted():
    d = tracker(task_on("analysis", job_status="running"), "rejected")
    assert d.task is not None
    assert requests(d) == []
    assert d.task.tracker_state == "rejected"


@pytest.mark.parametrize("stage", ["architecture", "development", "deploy"])
def test_approved_on_a_stage_without_human_approval_does_nothing_to_the_pipeline(stage: str):
    task = task_on(stage)
    d = tracker(task, "approved")
    assert d.emit == ()
    assert not d.evaluate
    assert d.task is not None
    assert (d.task.stage, d.task.approved, d.task.job_status) == (stage, False, "done")


@pytest.mark.parametrize("hold", ["blocked", "needs_input"])
def test_blocked_and_needs_input_hold_the_task_until_another_state(hold: str):
    held = tracker(task_on("development"), hold, key="k1")
    assert held.task is not None
    assert held.task.hold == hold
    assert held.emit == ()
    released = tracker(held.task, "in_progress", key="k2")
    assert released.task is not None
    assert released.task.hold == ""


def test_a_terminal_task_ignores_the_tracker():
    d = tracker(task_on("done"), "approved")
    assert d.task is None


def test_applied_keys_are_bounded():
    task = task_on("development", applied=[f"k{i}" for i in range(tp.MAX_APPLIED)])
    d = tracker(task, "blocked", key="newest")
    assert d.task is not None
    assert len(d.task.applied) == tp.MAX_APPLIED
    assert d.task.applied[-1] == "newest"
    assert "k0" not in d.task.applied


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"stage": "done"}, "task is done"),
        ({"escalated": True}, "task is escalated"),
        ({"job_status": "running"}, "its job is running"),
    ],
)
def test_a_gate_is_read_again_only_for_a_live_task_whose_job_ended(changes: dict, why: str):
    task = msgspec.structs.replace(task_on("development"), **changes)
    assert sp.reevaluable(task) == why
    assert sp.reevaluable(task_on("development")) == ""


# --- protected repositories: Confirm Deploy ------------------------------------------------

PROTECTED = load(
    env={},
    overrides={"repos": [{"name": REPO, "prefix": "DEMO", "template": "demo", "protected": True}]},
)


def _merged_into_deploy(cfg: Config = PROTECTED) -> sp.Decision:
    task = task_on("deploy-staging", step=pl.STEP_MERGE, job_id="DEMO-1.deploy-staging.1.merge")
    return sp.on_gate(
        task,
        task.job_id,
        gp.GateResult(verdict="pass", reason="pull request merged"),
        now=NOW,
        revision=7,
        cfg=cfg,
    )


def test_a_protected_production_deploy_waits_for_confirm_and_tells_the_operator():
    d = _merged_into_deploy()
    assert d.task is not None
    assert (d.task.stage, d.task.step) == ("deploy", pl.STEP_CONFIRM)
    assert requests(d) == []
    assert [(c.old, c.new) for c in changes(d)] == [("deploy-staging", "deploy")]
    (alert,) = alerts(d)
    assert "conveyor confirm-deploy DEMO-1" in alert.text
    assert "Confirm Deploy" in alert.text


def _renamed_stages() -> list[dict[str, object]]:
    renamed = {"deploy-staging": "ship-to-qa", "deploy": "release"}
    stages = [msgspec.to_builtins(s) for s in CFG.pipeline.stages]
    for stage in stages:
        stage["name"] = renamed.get(str(stage["name"]), stage["name"])
    return stages


def test_a_renamed_production_deploy_of_a_protected_repository_still_waits_for_confirm():
    # Given the deploy stages renamed in config, their gates unchanged
    cfg = load(
        env={},
        overrides={
            "pipeline": {"stages": _renamed_stages()},
            "repos": [{"name": REPO, "prefix": "DEMO", "template": "demo", "protected": True}],
        },
    )
    task = task_on("deploy-staging", step=pl.STEP_MERGE, job_id="DEMO-1.ship-to-qa.1.merge")
    task = msgspec.structs.replace(task, stage="ship-to-qa")
    # When the staging stage's merge passes
    d = sp.on_gate(
        task,
        task.job_id,
        gp.GateResult(verdict="pass", reason="pull request merged"),
        now=NOW,
        revision=7,
        cfg=cfg,
    )
    # Then the production deploy (keyed on its gate, not its name) waits for Confirm Deploy
    assert d.task is not None
    assert (d.task.stage, d.task.step) == ("release", pl.STEP_CONFIRM)
    assert requests(d) == []
    confirmed = sp.on_command(d.task, ConfirmDeploy(id=TID), now=NOW, revision=8, cfg=cfg)
    assert [r.stage for r in requests(confirmed)] == ["release"]


def test_confirm_deploy_starts_the_deploy_once():
    waiting = _merged_into_deploy().task
    assert waiting is not None
    first = sp.on_command(waiting, ConfirmDeploy(id=TID), now=NOW, revision=8, cfg=PROTECTED)
    assert first.ok
    assert first.task is not None
    assert [(r.job_id, r.role) for r in requests(first)] == [("DEMO-1.deploy.1.work", "deployer")]
    # A second confirmation (a repeat, a replayed Plane move) deploys nothing more.
    again = sp.on_command(first.task, ConfirmDeploy(id=TID), now=NOW, revision=9, cfg=PROTECTED)
    assert again.ok
    assert again.task is None
    assert again.emit == ()


@pytest.mark.parametrize("state", ["approved", "in_progress", "other"])
def test_approved_or_any_other_tracker_state_does_not_start_a_protected_deploy(state: str):
    waiting = _merged_into_deploy().task
    assert waiting is not None
    update = TrackerUpdate(id=TID, state=state, key=f"plane:{state}")
    d = sp.on_tracker(waiting, update, now=NOW, revision=8, cfg=PROTECTED)
    assert requests(d) == []
    assert (d.task or waiting).step == pl.STEP_CONFIRM
    approve = sp.on_command(waiting, Approve(id=TID), now=NOW, revision=8, cfg=PROTECTED)
    assert not approve.ok


def test_confirm_deploy_in_the_tracker_starts_the_deploy():
    waiting = _merged_into_deploy().task
    assert waiting is not None
    update = TrackerUpdate(id=TID, state="confirm_deploy", key="plane:confirm")
    d = sp.on_tracker(waiting, update, now=NOW, revision=8, cfg=PROTECTED)
    assert [r.job_id for r in requests(d)] == ["DEMO-1.deploy.1.work"]


def test_a_retry_of_a_protected_deploy_waits_for_a_new_confirmation():
    failed = task_on("deploy", job_status="failed", escalated=True)
    d = sp.on_command(failed, Retry(id=TID), now=NOW, revision=8, cfg=PROTECTED)
    assert d.task is not None
    assert d.task.step == pl.STEP_CONFIRM
    assert requests(d) == []
    confirmed = sp.on_command(d.task, ConfirmDeploy(id=TID), now=NOW, revision=9, cfg=PROTECTED)
    # A new visit: never the job id of the deploy that already ran.
    assert [r.job_id for r in requests(confirmed)] == ["DEMO-1.deploy.2.work"]


def test_confirm_deploy_is_refused_off_the_production_deploy():
    d = sp.on_command(task_on("testing"), ConfirmDeploy(id=TID), now=NOW, revision=5, cfg=PROTECTED)
    assert not d.ok
    assert "production deploy" in d.error


def test_an_unprotected_repository_deploys_without_a_human():
    d = _merged_into_deploy(CFG)
    assert d.task is not None
    assert d.task.step == pl.STEP_WORK
    assert [r.job_id for r in requests(d)] == ["DEMO-1.deploy.1.work"]


def test_a_post_deploy_note_joins_the_history_once_without_a_stage_change():
    done = task_on("done", step="", job_id="", job_status="")
    note = Annotate(id=TID, cause="post-deploy DEGRADED: rollback ran (exit 0)", key="monitor:1")
    d = sp.on_annotate(done, note, now=NOW)
    assert d.task is not None
    assert (d.task.history[-1].old, d.task.history[-1].new) == ("done", "done")
    assert d.emit == ()
    again = sp.on_annotate(d.task, note, now=NOW)
    assert again.task is None


def test_a_conveyor_verdict_of_another_job_never_decides_the_current_one():
    task = task_on("deploy", job_id="DEMO-1.deploy.2.work")
    stale = fm(
        work_item_id=TID,
        deploy_status="SUCCESS",
        decided_by="conveyor",
        job_id="DEMO-1.deploy.1.work",
    )
    result = gp.evaluate_gate("deploy_status", task, with_file(pl.DEPLOY_LOG, stale))
    assert result.verdict == "retry"
    assert "DEMO-1.deploy.1.work" in result.reason
    current = fm(
        work_item_id=TID,
        deploy_status="SUCCESS",
        decided_by="conveyor",
        job_id="DEMO-1.deploy.2.work",
    )
    assert gp.evaluate_gate("deploy_status", task, with_file(pl.DEPLOY_LOG, current)).verdict == (
        "pass"
    )
