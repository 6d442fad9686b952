"""The cost ledger: usage sums per job, task, stage visit, repository and role; the ceilings."""

from __future__ import annotations

import msgspec
import pytest

from actors import brief_policy as bp
from actors import gate_policy as gp
from actors import queue_policy as qp
from actors import stage_policy as sp
from actors import usage_policy as up
from bus.messages import Alert, JobFinished, JobOutcome, StageChanged
from conveyor import pipeline as pl
from conveyor.config import QueueConfig, load
from gateways.tracker_sync import stage_comment
from tests.unit.test_stage_policy import TID, outcome_for, task_on

DAY1 = 1_795_651_200.0
"""2026-11-26 00:00:00 UTC."""
LATE = DAY1 + 86_399.0
NEXT_DAY = DAY1 + 86_400.0
RUN = up.Usage(input_tokens=1000, output_tokens=200, cached_tokens=50, cost_usd=0.02)


def test_usage_adds_up_and_counts_input_and_output_tokens():
    total = RUN + RUN
    assert total == up.Usage(input_tokens=2000, output_tokens=400, cached_tokens=100, cost_usd=0.04)
    assert total.tokens == 2400
    assert up.spent(total) == "$0.0400, 2,400 tokens"


def test_reported_usage_keeps_sane_numbers_only():
    report = {"input_tokens": 10, "output_tokens": True, "cached_tokens": -3, "cost_usd": "1"}
    assert up.reported(report) == up.Usage(input_tokens=10)
    assert up.reported({}) == up.ZERO


@pytest.mark.parametrize(
    ("now", "day"),
    [(0.0, "1970-01-01"), (DAY1, "2026-11-26"), (LATE, "2026-11-26"), (NEXT_DAY, "2026-11-27")],
)
def test_the_day_is_the_utc_date(now: float, day: str):
    assert up.day_of(now) == day


def test_the_ledger_sums_per_repo_and_role_and_the_day_rolls_over_at_utc_midnight():
    ledger = up.record(up.Ledger(), "demo", "developer", RUN, now=DAY1)
    ledger = up.record(ledger, "demo", "reviewer", RUN, now=LATE)
    ledger = up.record(ledger, "shop", "developer", RUN, now=LATE)
    assert ledger.day == "2026-11-26"
    assert ledger.by_repo["demo"] == RUN + RUN
    assert ledger.today_by_role["developer"] == RUN + RUN

    rolled = up.record(ledger, "demo", "developer", RUN, now=NEXT_DAY)

    assert rolled.day == "2026-11-27"
    assert rolled.by_repo["demo"] == RUN + RUN + RUN
    assert rolled.today_by_repo == {"demo": RUN}
    summary = up.summary(rolled)
    assert summary["today"] == {
        "by_repo": {"demo": up.as_dict(RUN)},
        "by_role": {"developer": up.as_dict(RUN)},
    }


def test_cost_per_delivered_item_is_the_done_tasks_usd_over_their_count():
    delivered = up.Delivered().with_task(RUN).with_task(RUN + RUN)
    assert delivered.as_dict() == {
        "count": 2,
        "cost_usd": pytest.approx(0.06),
        "tokens": 3600,
        "cost_per_item_usd": pytest.approx(0.03),
        "tokens_per_item": 1800,
    }
    assert up.Delivered().as_dict()["cost_per_item_usd"] == 0.0


# --- the queue: job usage and the daily ceiling per repository ------------------------------

CAP = QueueConfig(max_repo_usd_per_day=0.03, max_repo_tokens_per_day=0)


def _job(job_id: str, repo: str = "demo", **changes: object) -> qp.Job:
    job = qp.Job(
        id=job_id, task_id=job_id.split(".")[0], repo=repo, stage="development",
        role="developer", visit=1, branch="b", title="t", enqueued_at=DAY1,
    )  # fmt: skip
    return msgspec.structs.replace(job, **changes)


def test_a_finished_run_adds_its_tokens_to_the_job_and_its_outcome():
    job = _job("DEMO-1.development.1.work", status=qp.RUNNING, attempts=2, input_tokens=5)
    usage = {"input_tokens": 1000, "output_tokens": 200, "cached_tokens": 50, "cost_usd": 0.02}
    finished = JobFinished(job_id=job.id, attempt=2, run_id="r", exit_code=0, usage=usage)

    d = qp.on_finished(job, finished, now=DAY1, cfg=QueueConfig())

    assert d.usage == RUN
    (outcome,) = [m for m in d.emit if isinstance(m, JobOutcome)]
    assert (outcome.input_tokens, outcome.output_tokens, outcome.cached_tokens) == (1005, 200, 50)
    assert outcome.cost_usd == pytest.approx(0.02)


def test_a_repository_over_its_daily_ceiling_starts_nothing_until_the_next_utc_day():
    jobs = {j.id: j for j in (_job("DEMO-2.created.1.intake"), _job("SHOP-1.x.1.w", repo="shop"))}
    ledger = up.record(up.Ledger(), "demo", "developer", RUN + RUN, now=DAY1)
    held = qp.held_repos(jobs.values(), ledger, CAP)
    assert list(held) == ["demo"]
    assert "queue.max_repo_usd_per_day" in held["demo"]
    assert qp.schedule(jobs, now=LATE, cfg=CAP, held=held) == ["SHOP-1.x.1.w"]

    d = qp.hold(jobs.values(), held, ledger, now=LATE)

    (marked,) = d.jobs
    assert (marked.id, marked.held, marked.held_day) == (
        "DEMO-2.created.1.intake",
        held["demo"],
        "2026-11-26",
    )
    (alert,) = [m for m in d.emit if isinstance(m, Alert)]
    assert alert.level == "error"
    assert "queue.max_repo_usd_per_day" in alert.text
    # Alerted once per repository and day: a second hold that day says nothing.
    again = msgspec.structs.replace(ledger, alerted=frozenset({"demo"}))
    assert qp.hold([_job("DEMO-3.created.1.intake")], held, again, now=LATE).emit == ()

    tomorrow = up.rolled(ledger, NEXT_DAY)
    assert qp.held_repos(jobs.values(), tomorrow, CAP) == {}
    released = qp.hold([marked], {}, tomorrow, now=NEXT_DAY)
    assert [j.held for j in released.jobs] == [""]
    assert qp.schedule(jobs, now=NEXT_DAY, cfg=CAP, held={}) != []


def test_a_token_ceiling_holds_too_and_off_holds_nothing():
    jobs = [_job("DEMO-2.created.1.intake")]
    ledger = up.record(up.Ledger(), "demo", "developer", RUN, now=DAY1)
    tokens = QueueConfig(max_repo_tokens_per_day=1200)
    assert "queue.max_repo_tokens_per_day" in qp.held_repos(jobs, ledger, tokens)["demo"]
    assert qp.held_repos(jobs, ledger, QueueConfig()) == {}


def test_a_restart_rebuilds_the_days_totals_from_the_stored_jobs():
    spent = dict(cost_usd=0.02, input_tokens=1000, output_tokens=200, cached_tokens=50)
    jobs = [
        _job("DEMO-1.a.1.w", status=qp.DONE, finished_at=DAY1 - 10, **spent),
        _job("DEMO-1.b.1.w", status=qp.DONE, finished_at=DAY1 + 10, **spent),
        _job("DEMO-2.a.1.w", held="over", held_day="2026-11-26"),
    ]
    ledger = qp.rebuilt_ledger(jobs, now=LATE)
    assert ledger.by_repo["demo"] == RUN + RUN
    assert ledger.today_by_repo["demo"] == RUN
    assert ledger.alerted == frozenset({"demo"})


# --- the task: totals, stage visits, the per-task ceilings ----------------------------------


def _outcome(task: sp.Task, **usage: object) -> JobOutcome:
    return msgspec.structs.replace(outcome_for(task), **usage)


def test_a_job_outcome_adds_to_the_task_and_its_stage_visit_and_the_move_records_it():
    cfg = load(env={})
    task = task_on("development", job_status="running", cost_usd=1.0, input_tokens=7)
    spent = dict(input_tokens=1000, output_tokens=200, cached_tokens=50, cost_usd=0.02)
    d = sp.on_job_outcome(task, _outcome(task, **spent), now=DAY1, cfg=cfg)
    assert d.task is not None
    assert (d.task.input_tokens, d.task.output_tokens, d.task.cached_tokens) == (1007, 200, 50)
    assert d.task.cost_usd == pytest.approx(1.02)
    assert d.task.stage_usage == RUN

    moved = sp.on_gate(
        d.task, d.task.job_id, gp.GateResult(verdict="pass", reason="CI green"),
        now=DAY1, revision=3, cfg=cfg,
    )  # fmt: skip

    assert moved.task is not None
    entry = moved.task.history[-1]
    assert (entry.old, entry.input_tokens, entry.output_tokens, entry.cached_tokens) == (
        "development",
        1000,
        200,
        50,
    )
    assert entry.cost_usd == pytest.approx(0.02)
    assert moved.task.stage_usage == up.ZERO
    (event,) = [m for m in moved.emit if isinstance(m, StageChanged)]
    assert (event.tokens, event.cost_usd) == (1200, pytest.approx(0.02))
    assert stage_comment(event) == (
        "Stage development → review: CI green (spent $0.0200, 1,200 tokens on development)"
    )


def test_a_task_over_its_token_ceiling_is_escalated_naming_the_ceiling():
    cfg = load(env={"CONVEYOR_PIPELINE__MAX_TASK_TOKENS": "2000"})
    task = task_on("development", job_status="running", budget_used_tokens=900)
    d = sp.on_job_outcome(
        task, _outcome(task, input_tokens=1000, output_tokens=100), now=1, cfg=cfg
    )
    assert d.task is not None
    assert d.task.escalated
    assert not d.evaluate
    (alert,) = [m for m in d.emit if isinstance(m, Alert)]
    assert "pipeline.max_task_tokens" in alert.text
    assert "2,000 of 2,000 tokens" in alert.text

    under = sp.on_job_outcome(task, _outcome(task, input_tokens=1000), now=1, cfg=cfg)
    assert under.task is not None
    assert not under.task.escalated
    assert under.evaluate
    retried = sp.on_command(d.task, sp.Retry(id=TID), now=2, revision=5, cfg=cfg)
    assert retried.task is not None
    assert retried.task.budget_used_tokens == 0


def test_a_stage_change_without_spending_says_nothing_of_cost():
    event = StageChanged(task_id=TID, repo="demo", old="a", new="b", cause="ok", revision=2, at=1)
    assert stage_comment(event) == "Stage a → b: ok"


# --- briefs for runs Conveyor killed -------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason", "kind", "says"),
    [
        (pl.OUTCOME_STALLED, "stalled (no output for 30s)", bp.KIND_STALLED,
         "killed after 30 s without output"),
        (pl.OUTCOME_OVER_BUDGET, "over budget: 5000 tokens > agents max_run_tokens 4000",
         bp.KIND_OVER_BUDGET, "agents max_run_tokens 4000"),
    ],
)  # fmt: skip
def test_a_stalled_or_over_budget_run_gets_a_brief_saying_so(
    outcome: str, reason: str, kind: str, says: str
):
    cfg = load(env={})
    task = task_on("development", job_status="running", head_sha="aaa", visit_base_sha="aaa")
    failed = msgspec.structs.replace(
        outcome_for(task, status=pl.JOB_FAILED), outcome=outcome, reason=reason
    )
    d = sp.on_job_outcome(task, failed, now=1, cfg=cfg)
    assert d.task is not None
    assert d.task.job_outcome == outcome
    inputs = gp.GateInputs(branch_head="aaa", visit_base="aaa", ci_state="success")
    result = gp.GateResult(verdict="retry", reason="the branch head did not move")

    retried = sp.on_gate(d.task, d.task.job_id, result, now=2, revision=4, cfg=cfg, inputs=inputs)

    assert retried.task is not None
    assert retried.task.briefs[-1].kind == kind
    (request,) = sp_requests(retried)
    assert says in request.brief


def sp_requests(d: sp.Decision) -> list[sp.JobRequested]:
    return [m for m in d.emit if isinstance(m, sp.JobRequested)]


def test_the_retry_attempt_of_a_stalled_run_is_told_why_the_last_one_was_killed():
    job = _job(
        "DEMO-1.development.1.work",
        status=qp.RUNNING,
        attempts=1,
        max_attempts=3,
        brief="review said x",
    )
    stalled = JobFinished(
        job_id=job.id, attempt=1, run_id="r", exit_code=-9,
        outcome=pl.OUTCOME_STALLED, reason="stalled (no output for 12s)",
    )  # fmt: skip

    requeued = qp.on_finished(job, stalled, now=DAY1, cfg=QueueConfig()).jobs[0]
    order = qp.claim(requeued, now=DAY1 + 5).emit[0]

    assert isinstance(order, qp.LaunchOrder)
    assert "killed after 12 s without output" in order.brief
    assert order.brief.endswith("review said x")
    failed_plainly = msgspec.structs.replace(stalled, outcome=pl.OUTCOME_ERROR, reason="boom")
    again = qp.on_finished(
        msgspec.structs.replace(requeued, status=qp.RUNNING, attempts=2),
        msgspec.structs.replace(failed_plainly, attempt=2),
        now=DAY1,
        cfg=QueueConfig(),
    ).jobs[0]
    assert qp.claim(again, now=DAY1 + 9).emit[0] == msgspec.structs.replace(
        order, attempt=3, brief="review said x"
    )
