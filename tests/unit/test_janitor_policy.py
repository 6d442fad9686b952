"""The Janitor's pure decisions: which tasks are settled, what compacts, the disk's alerts."""

from __future__ import annotations

from actors import janitor_policy as policy
from actors.janitor_policy import DiskState, DiskUsage, EffectRow
from actors.launcher_policy import Run
from actors.monitor_policy import Watch
from actors.queue_policy import Job
from actors.task_policy import Task
from bus.messages import JobRequested
from conveyor.config import DiskConfig

NOW = 10_000_000.0
DAY = policy.DAY_S
MB = policy.MB


def task(task_id: str, stage: str, *, updated_at: float = NOW - 10 * DAY) -> Task:
    return Task(
        id=task_id,
        repo="demo",
        title="t",
        branch=f"b/{task_id}",
        stage=stage,
        updated_at=updated_at,
    )


def job(task_id: str, status: str = "done", **kw: object) -> Job:
    return Job(
        id=f"{task_id}.development.1.work",
        task_id=task_id,
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="b",
        title="t",
        status=status,
        **kw,  # type: ignore[arg-type]
    )


def run(task_id: str, status: str = "finished", *, reported: bool = True) -> Run:
    return Run(
        id=f"{task_id}.development.1.work.1",
        job_id=f"{task_id}.development.1.work",
        attempt=1,
        task_id=task_id,
        repo="demo",
        role="developer",
        stage="development",
        visit=1,
        branch="b",
        host="h",
        launcher="l",
        status=status,
        reported=reported,
    )


def watch(task_id: str, *, closed: bool) -> Watch:
    return Watch(
        task_id=task_id,
        repo="demo",
        health_url="http://x",
        protected=False,
        has_rollback=False,
        started_at=0.0,
        ends_at=1.0,
        window_s=1.0,
        status="healthy",
        closed=closed,
    )


def test_only_done_or_cancelled_tasks_quiet_since_the_cutoff_are_settled():
    tasks = [
        task("DEMO-1", "done"),
        task("DEMO-2", "cancelled"),
        task("DEMO-3", "development"),
        task("DEMO-4", "done", updated_at=NOW - DAY / 2),
    ]

    assert policy.settled(tasks, before=policy.cutoff(NOW, 1.0)) == {"DEMO-1", "DEMO-2"}
    assert policy.settled(tasks, before=policy.cutoff(NOW, 0.0)) == {"DEMO-1", "DEMO-2", "DEMO-4"}


def test_a_finished_task_with_open_work_is_not_settled():
    tasks = [task(f"DEMO-{n}", "done") for n in range(1, 6)]
    unsent = JobRequested(
        job_id="x",
        task_id="DEMO-5",
        repo="demo",
        stage="s",
        role="r",
        visit=1,
        branch="b",
        title="t",
    )

    found = policy.settled(
        tasks,
        before=NOW,
        jobs=[job("DEMO-1", "running"), job("DEMO-5", "done", outbox=[unsent])],
        runs=[run("DEMO-2", "running"), run("DEMO-3", reported=False)],
        watches=[watch("DEMO-4", closed=False)],
    )

    assert found == set()
    closed = policy.settled(
        tasks,
        before=NOW,
        jobs=[job("DEMO-1")],
        runs=[run("DEMO-2")],
        watches=[watch("DEMO-4", closed=True)],
    )
    assert closed == {"DEMO-1", "DEMO-2", "DEMO-3", "DEMO-4", "DEMO-5"}


def test_compaction_takes_the_records_of_gone_tasks_and_keeps_an_active_tasks_ledger():
    effects = [
        EffectRow("DEMO-1.merge.abc", done=True, at=NOW - 9 * DAY),
        EffectRow("monitor.DEMO-1.rollback", done=True, at=NOW - 9 * DAY),
        EffectRow("DEMO-2.pull.def", done=False, at=NOW - 40 * DAY),
        EffectRow("monitor.DEMO-2.rollback", done=True, at=NOW - 40 * DAY),
        EffectRow("telegram.old", done=True, at=NOW - 9 * DAY),
        EffectRow("telegram.new", done=True, at=NOW),
        EffectRow("telegram.started", done=False, at=NOW - 9 * DAY),
        EffectRow("somebody.else", done=True, at=NOW - 90 * DAY),
    ]

    plan = policy.compaction(
        {"DEMO-1"},
        {"DEMO-1", "DEMO-2"},
        jobs={"j1": job("DEMO-1"), "j2": job("DEMO-2")},
        runs={"r1": run("DEMO-1"), "r2": run("DEMO-2")},
        watches={"DEMO-1": watch("DEMO-1", closed=True), "DEMO-2": watch("DEMO-2", closed=True)},
        effects=effects,
        before=NOW - DAY,
    )

    assert plan.jobs == ["j1"]
    assert plan.runs == ["r1"]
    assert plan.watches == ["DEMO-1"]
    assert plan.effects == ["DEMO-1.merge.abc", "monitor.DEMO-1.rollback", "telegram.old"]
    assert plan.total == 6


def test_log_generations_shift_the_oldest_first():
    assert policy.log_generations("o.log", 3) == [("o.log.2", "o.log.3"), ("o.log.1", "o.log.2")]
    assert policy.log_generations("o.log", 1) == []
    assert policy.log_generations("o.log", 0) == []


CFG = DiskConfig(alert_percent=90.0, min_free_mb=100.0)


def usage(percent: float, free_mb: float) -> DiskUsage:
    total = 10_000 * MB
    return DiskUsage(total=total, used=int(total * percent / 100), free=int(free_mb * MB))


def probe(state: DiskState, percent: float, free_mb: float) -> policy.DiskDecision:
    return policy.on_probe(state, usage(percent, free_mb), now=NOW, cfg=CFG, where="/data")


def test_the_usage_alert_fires_once_per_crossing():
    first = probe(DiskState(), 95.0, 500.0)
    (alert,) = first.alerts
    assert (alert.kind, alert.level) == (policy.KIND_DISK_USAGE, "warning")
    assert "95.0% used under /data" in alert.text
    assert first.pause == ""

    assert probe(first.state, 96.0, 400.0).alerts == ()
    below = probe(first.state, 80.0, 2000.0)
    assert below.alerts == ()
    assert not below.state.alerted
    assert len(probe(below.state, 91.0, 900.0).alerts) == 1


def test_launching_pauses_below_the_floor_with_an_alert_and_resumes_with_a_note():
    low = probe(DiskState(), 50.0, 40.0)
    (alert,) = low.alerts
    assert (alert.kind, alert.level) == (policy.KIND_LAUNCH_PAUSED, "error")
    assert low.pause == "40 MB free under /data, below the floor of 100 MB"
    assert low.state.paused

    still = probe(low.state, 50.0, 60.0)
    assert (still.alerts, still.pause != "") == ((), True)

    back = probe(still.state, 50.0, 150.0)
    (note,) = back.alerts
    assert (note.kind, note.level) == (policy.KIND_LAUNCH_RESUMED, "info")
    assert back.pause == ""
    assert not back.state.paused


def test_a_zero_threshold_and_floor_switch_the_alert_and_the_pause_off():
    off = DiskConfig(alert_percent=0.0, min_free_mb=0.0)
    decision = policy.on_probe(DiskState(), usage(100.0, 0.0), now=NOW, cfg=off, where="/d")
    assert (decision.alerts, decision.pause) == ((), "")
