"""No work is never progress: a development visit must move the branch head, and the reason
a job failed (rate limited, authentication refused, stalled) reaches the operator."""

from __future__ import annotations

import msgspec

from actors import gate_policy as gp
from actors import queue_policy as qp
from actors import stage_policy as sp
from bus.messages import Alert, JobFinished, JobOutcome, JobRequested, LaunchOrder
from conveyor import pipeline as pl
from conveyor.clock import FakeClock
from conveyor.config import QueueConfig, load

CFG = load(env={})
TID = "DEMO-1"
ARCH_HEAD = "a" * 40
DEV_HEAD = "d" * 40
QCFG = QueueConfig(max_concurrency=4, per_repo_concurrency=1, max_attempts=2, backoff_base_s=2.0)


def _architecture_done(clock: FakeClock) -> sp.Task:
    """A task whose architecture job left the head at ARCH_HEAD, its gate just passed."""
    task = sp.Task(
        id=TID,
        repo="demo",
        title="Add login",
        branch="feature/DEMO-1-add-login",
        stage="architecture",
        step=pl.STEP_WORK,
        visits={"created": 1, "analysis": 1, "architecture": 1},
        job_id="DEMO-1.architecture.1.work",
        job_status="done",
        head_sha=ARCH_HEAD,
    )
    decision = sp.on_gate(
        task,
        task.job_id,
        gp.GateResult(verdict="pass", reason="ADR present"),
        now=clock.now(),
        revision=3,
        cfg=CFG,
    )
    assert decision.task is not None
    assert decision.task.stage == "development"
    return decision.task


def _finish(task: sp.Task, clock: FakeClock, **fields: object) -> sp.Task:
    outcome = JobOutcome(
        job_id=task.job_id,
        task_id=TID,
        stage=task.stage,
        visit=task.visit(task.stage),
        role="developer",
        status=str(fields.pop("status", "failed")),
        attempts=2,
        **fields,  # type: ignore[arg-type]
    )
    decision = sp.on_job_outcome(task, outcome, now=clock.now(), cfg=CFG)
    assert decision.task is not None
    return decision.task


def _ci_gate(task: sp.Task, head: str, clock: FakeClock, ci: str = "success") -> sp.Decision:
    inputs = gp.GateInputs(branch_head=head, ci_state=ci, visit_base=task.visit_base_sha)
    result = gp.evaluate_gate(gp.gate_for(task, CFG), task, inputs)
    return sp.on_gate(task, task.job_id, result, now=clock.now(), revision=9, cfg=CFG)


def test_a_development_visit_remembers_the_head_it_started_from():
    clock = FakeClock()
    task = _architecture_done(clock)
    assert task.visit_base_sha == ARCH_HEAD


def test_ci_green_at_an_unmoved_head_retries_then_escalates_naming_the_job_failure():
    clock = FakeClock()
    task = _architecture_done(clock)
    seen: list[sp.Decision] = []
    for _ in range(CFG.pipeline.max_developer_retries + 1):
        clock.advance(60)
        task = _finish(
            task, clock, exit_code=1, outcome="rate_limited", reason="rate limited (429)"
        )
        decision = _ci_gate(task, ARCH_HEAD, clock)
        seen.append(decision)
        assert decision.task is not None
        task = decision.task
        assert task.stage == "development"
    # Every visit but the last was retried with a new development job
    for decision in seen[:-1]:
        assert [type(m) for m in decision.emit] == [JobRequested]
        assert "did not move" in decision.reason
        assert "rate limited (429)" in decision.reason
    # and the last escalated, saying why, never reaching review
    assert task.escalated
    alerts = [m for m in seen[-1].emit if isinstance(m, Alert)]
    assert len(alerts) == 1
    assert alerts[0].kind == "escalated"
    assert "did not move" in alerts[0].text
    assert "rate limited (429)" in alerts[0].text
    assert "exit code" not in alerts[0].text


def test_ci_green_at_a_head_the_visit_moved_passes_to_review():
    clock = FakeClock()
    task = _architecture_done(clock)
    task = _finish(task, clock, status="done", exit_code=0, head_sha=DEV_HEAD)
    decision = _ci_gate(task, DEV_HEAD, clock)
    assert decision.task is not None
    assert decision.task.stage == "review"


def test_the_merge_step_is_not_held_to_the_work_visits_base():
    # A merge step's rebase moves the head, or not; its gate is the merged pull request.
    task = msgspec.structs.replace(
        _architecture_done(FakeClock()), step=pl.STEP_MERGE, job_status="done"
    )
    inputs = gp.GateInputs(branch_head=ARCH_HEAD, pr_merged=True, visit_base=ARCH_HEAD)
    assert gp.evaluate_gate(gp.gate_for(task, CFG), task, inputs).verdict == "pass"


def test_red_ci_at_a_moved_head_still_retries_and_waits_while_ci_runs():
    clock = FakeClock()
    task = _architecture_done(clock)
    task = _finish(task, clock, status="done", exit_code=0, head_sha=DEV_HEAD)
    assert _ci_gate(task, DEV_HEAD, clock, ci="pending").reason.startswith("waiting")
    red = _ci_gate(task, DEV_HEAD, clock, ci="failure")
    assert red.task is not None
    assert red.task.developer_retries == 1
    # The retry's visit must move past the red head, not only past the architecture commit
    assert red.task.visit_base_sha == DEV_HEAD


def test_a_task_recorded_before_visit_bases_existed_keeps_todays_ci_gate():
    task = sp.Task(id=TID, repo="demo", title="t", branch="b", stage="development")
    inputs = gp.GateInputs(branch_head=ARCH_HEAD, ci_state="success", visit_base="")
    assert gp.evaluate_gate("ci_green", task, inputs).verdict == "pass"


def test_refused_authentication_escalates_at_once_saying_so():
    clock = FakeClock()
    task = _architecture_done(clock)
    outcome = JobOutcome(
        job_id=task.job_id,
        task_id=TID,
        stage="development",
        visit=1,
        role="developer",
        status="failed",
        attempts=1,
        exit_code=1,
        outcome=pl.OUTCOME_AUTH_REFUSED,
        reason="invalid x-api-key (401)",
    )
    decision = sp.on_job_outcome(task, outcome, now=clock.now(), cfg=CFG)
    assert decision.task is not None
    assert decision.task.escalated
    assert not decision.evaluate
    (alert,) = [m for m in decision.emit if isinstance(m, Alert)]
    assert "authentication refused" in alert.text
    assert "invalid x-api-key (401)" in alert.text
    assert "authentication refused" in decision.task.job_reason


def test_a_failed_job_without_a_reason_falls_back_to_its_error_then_exit_code():
    clock = FakeClock()
    task = _architecture_done(clock)
    failed = _finish(task, clock, exit_code=3, error="")
    assert failed.job_reason == "exit code 3"
    with_error = _finish(task, clock, exit_code=1, error="push refused")
    assert with_error.job_reason == "push refused"
    done = _finish(task, clock, status="done", exit_code=0, head_sha=DEV_HEAD)
    assert done.job_reason == ""


# --- the queue carries the brief, the outcome and the reason ------------------------------


def _request(brief: str = "") -> JobRequested:
    return JobRequested(
        job_id="DEMO-1.development.2.work",
        task_id=TID,
        repo="demo",
        stage="development",
        role="developer",
        visit=2,
        branch="feature/DEMO-1-add-login",
        title="Add login",
        brief=brief,
    )


def _running(clock: FakeClock, brief: str = "") -> tuple[qp.Job, LaunchOrder]:
    decision = qp.on_request(None, _request(brief), now=clock.now(), cfg=QCFG)
    claimed = qp.claim(decision.jobs[0], now=clock.now())
    (order,) = claimed.emit
    assert isinstance(order, LaunchOrder)
    return claimed.jobs[0], order


def _finished(job: qp.Job, **fields: object) -> JobFinished:
    return JobFinished(job_id=job.id, attempt=job.attempts, run_id="r", **fields)  # type: ignore[arg-type]


def test_the_brief_of_a_request_reaches_every_launch_order():
    clock = FakeClock()
    job, order = _running(clock, brief="review findings: add a test")
    assert order.brief == "review findings: add a test"
    clock.advance(5)
    requeued = qp.on_finished(job, _finished(job, exit_code=1), now=clock.now(), cfg=QCFG)
    clock.advance(60)
    (again,) = qp.claim(requeued.jobs[0], now=clock.now()).emit
    assert isinstance(again, LaunchOrder)
    assert again.brief == "review findings: add a test"


def test_a_job_that_failed_every_attempt_reports_the_agents_reason_not_its_exit_code():
    clock = FakeClock()
    job, _ = _running(clock)
    finished = _finished(job, exit_code=1, outcome="rate_limited", reason="rate limited (429)")
    requeued = qp.on_finished(job, finished, now=clock.now(), cfg=QCFG)
    assert "rate limited (429)" in requeued.reason
    clock.advance(60)
    job = qp.claim(requeued.jobs[0], now=clock.now()).jobs[0]
    assert job.reason == ""
    last = _finished(job, exit_code=1, outcome="stalled", reason="stalled")
    failed = qp.on_finished(job, last, now=clock.now(), cfg=QCFG)
    outcome = next(m for m in failed.emit if isinstance(m, JobOutcome))
    alert = next(m for m in failed.emit if isinstance(m, Alert))
    assert (outcome.status, outcome.outcome, outcome.reason) == ("failed", "stalled", "stalled")
    assert alert.text.endswith("failed after 2 attempts: stalled")
    assert "exit code" not in alert.text


def test_refused_authentication_fails_the_job_without_another_attempt():
    clock = FakeClock()
    job, _ = _running(clock)
    finished = _finished(
        job, exit_code=1, outcome=pl.OUTCOME_AUTH_REFUSED, reason="authentication refused"
    )
    decision = qp.on_finished(job, finished, now=clock.now(), cfg=QCFG)
    assert decision.jobs[0].status == qp.FAILED
    assert decision.jobs[0].attempts == 1
    outcome = next(m for m in decision.emit if isinstance(m, JobOutcome))
    assert outcome.outcome == pl.OUTCOME_AUTH_REFUSED


def test_a_job_record_without_the_new_fields_still_decodes():
    old = msgspec.json.encode(
        {
            "id": "j",
            "task_id": TID,
            "repo": "demo",
            "stage": "s",
            "role": "r",
            "visit": 1,
            "branch": "b",
            "title": "t",
        }
    )
    job = msgspec.json.decode(old, type=qp.Job)
    assert (job.brief, job.outcome, job.reason) == ("", "", "")
