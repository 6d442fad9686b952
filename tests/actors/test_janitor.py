"""Janitor on a real nats-server: retention of finished tasks, log rotation, the disk floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import janitor
from actors import janitor_policy as policy
from actors.janitor_policy import DiskUsage
from actors.launcher_policy import Run
from actors.monitor_policy import Watch
from actors.queue_policy import Job
from actors.task_policy import Task
from bus import subjects
from bus.bridge import Bus
from bus.effects import DONE, Effect
from bus.messages import Alert, JobRequested, LaunchOrder
from conveyor.config import Config
from conveyor.layout import Layout
from gateways import git
from tests.actors.conftest import ActorUnderTest, Captured, StartActor
from tests.harness import make_config, wait_until
from tests.unit.test_git import make_origin

DAY = policy.DAY_S
MB = policy.MB


class FakeDisk:
    """The disk the Janitor probes: healthy until a test says otherwise."""

    def __init__(self) -> None:
        self.percent = 50.0
        self.free_mb = 5000.0
        self.probed: list[Path] = []

    def __call__(self, path: Path) -> DiskUsage:
        self.probed.append(path)
        total = 10_000 * MB
        return DiskUsage(total, int(total * self.percent / 100), int(self.free_mb * MB))


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    fake = FakeDisk()
    monkeypatch.setattr(janitor, "disk_usage", fake)
    return fake


@pytest.fixture
def janitor_cfg(tmp_path: Path, nats_url: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        retention={
            "interval_s": 1.0,
            "worktrees_days": 1.0,
            "records_days": 2.0,
            "log_max_mb": 1000 / MB,
            "log_keep": 2,
        },
        disk={"interval_s": 1.0, "alert_percent": 90.0, "min_free_mb": 100.0},
    )


@pytest.fixture
def no_git_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.mktemp("home") / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def start_janitor(
    start_actor: StartActor, stub: Any, cfg: Config, worker: Any = None
) -> ActorUnderTest:
    return start_actor("janitor", config=cfg, queue_worker=worker or stub())


def put_task(bus: Bus, task_id: str, stage: str, updated_at: float) -> Task:
    task = Task(
        id=task_id,
        repo="demo",
        title=f"work on {task_id}",
        branch=f"feature/{task_id}",
        stage=stage,
        updated_at=updated_at,
    )
    bus.store(subjects.BUCKET_TASKS, Task).create(task_id, task)
    return task


def make_worktree(layout: Layout, origin: Path, task_id: str) -> Path:
    clone = layout.workspace("demo")
    git.ensure_clone(str(origin), clone)
    path = layout.worktree("demo", task_id)
    git.ensure_worktree(clone, path, f"feature/{task_id}-work")
    (path / "work.txt").write_text("uncommitted work\n")
    return path


def make_run_dir(layout: Layout, task_id: str, size: int = 10) -> Path:
    run_dir = layout.runs / task_id / "development.1.work.1"
    run_dir.mkdir(parents=True)
    (run_dir / "output.log").write_bytes(b"x" * size)
    return run_dir


def registered(clone: Path) -> str:
    return git.run_git(["worktree", "list", "--porcelain"], clone)


@pytest.mark.usefixtures("no_git_config")
def test_a_finished_tasks_worktree_and_run_dirs_go_after_the_retention_an_active_ones_stay(
    start_actor: StartActor, stub: Any, janitor_cfg: Config, disk: FakeDisk, tmp_path: Path
):
    layout = Layout(janitor_cfg.data_path)
    origin = make_origin(tmp_path)
    sweeper = start_janitor(start_actor, stub, janitor_cfg)
    now = sweeper.clock.now()
    put_task(sweeper.bus, "DEMO-1", "done", now)
    put_task(sweeper.bus, "DEMO-2", "cancelled", now)
    put_task(sweeper.bus, "DEMO-3", "development", now - 10 * DAY)
    trees = {t: make_worktree(layout, origin, t) for t in ("DEMO-1", "DEMO-3")}
    runs = {t: make_run_dir(layout, t) for t in ("DEMO-1", "DEMO-2", "DEMO-3")}

    # Within the retention nothing goes
    status = sweeper.tick(DAY / 2)
    assert status["last_sweep_at"] == now + DAY / 2
    assert all(p.exists() for p in [*trees.values(), *runs.values()])

    # Past it, the finished tasks' worktree and run directories go; the active task's stay
    status = sweeper.tick(DAY)

    assert (status["worktrees_removed"], status["run_dirs_removed"]) == (1, 2)
    assert not trees["DEMO-1"].exists()
    assert not (layout.runs / "DEMO-1").exists()
    assert not (layout.runs / "DEMO-2").exists()
    assert (trees["DEMO-3"] / "work.txt").read_text() == "uncommitted work\n"
    assert runs["DEMO-3"].exists()
    listed = registered(layout.workspace("demo"))
    assert str(trees["DEMO-1"]) not in listed
    assert str(trees["DEMO-3"]) in listed
    # The branch itself stays (it lives on in the forge and the clone)
    assert git.resolve_commit(layout.workspace("demo"), "feature/DEMO-1-work") is not None

    # Another pass finds nothing more to do
    again = sweeper.tick(1.0)
    assert (again["worktrees_removed"], again["run_dirs_removed"]) == (1, 2)


def job(task_id: str, status: str) -> Job:
    return Job(
        id=f"{task_id}.development.1.work",
        task_id=task_id,
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch=f"feature/{task_id}",
        title="t",
        status=status,
        attempts=1,
    )


def run(task_id: str, *, reported: bool = True) -> Run:
    return Run(
        id=f"{task_id}.development.1.work.1",
        job_id=f"{task_id}.development.1.work",
        attempt=1,
        task_id=task_id,
        repo="demo",
        role="developer",
        stage="development",
        visit=1,
        branch=f"feature/{task_id}",
        host="h",
        launcher="l1",
        status="finished",
        exit_code=0,
        reported=reported,
    )


def watch(task_id: str) -> Watch:
    return Watch(
        task_id=task_id,
        repo="demo",
        health_url="http://127.0.0.1:9/health",
        protected=False,
        has_rollback=False,
        started_at=0.0,
        ends_at=1.0,
        window_s=1.0,
        status="healthy",
        closed=True,
    )


def effect(key: str, at: float) -> Effect:
    return Effect(key=key, status=DONE, started_at=at, done_at=at, result="1")


def test_closed_records_of_finished_tasks_compact_and_an_active_tasks_stay(
    start_actor: StartActor, stub: Any, janitor_cfg: Config, disk: FakeDisk
):
    sweeper = start_janitor(start_actor, stub, janitor_cfg)
    bus, now = sweeper.bus, sweeper.clock.now()
    put_task(bus, "DEMO-1", "done", now)
    put_task(bus, "DEMO-2", "development", now)
    put_task(bus, "DEMO-3", "cancelled", now)
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    runs = bus.store(subjects.BUCKET_RUNS, Run)
    watches = bus.store(subjects.BUCKET_MONITOR, Watch)
    effects = bus.store(subjects.BUCKET_EFFECTS, Effect)
    for task_id in ("DEMO-1", "DEMO-2", "DEMO-3"):
        jobs.create(job(task_id, "done").id, job(task_id, "done"))
        watches.create(task_id, watch(task_id))
        effects.create(f"{task_id}.merge.abc", effect(f"{task_id}.merge.abc", now))
    runs.create(run("DEMO-1").id, run("DEMO-1"))
    runs.create(run("DEMO-2").id, run("DEMO-2"))
    # A cancelled task whose last run was never reported is not over yet
    runs.create(run("DEMO-3").id, run("DEMO-3", reported=False))
    effects.create("monitor.DEMO-1.rollback", effect("monitor.DEMO-1.rollback", now))
    effects.create("telegram.old", effect("telegram.old", now - DAY / 4))
    effects.create("telegram.new", effect("telegram.new", now + 2 * DAY))

    # Past the worktree retention, still within the records' retention: every record stays
    sweeper.tick(1.5 * DAY)
    assert len(effects.load_all()) == 6

    status = sweeper.tick(DAY)

    assert sorted(jobs.load_all()) == ["DEMO-2.development.1.work", "DEMO-3.development.1.work"]
    assert sorted(runs.load_all()) == ["DEMO-2.development.1.work.1", "DEMO-3.development.1.work.1"]
    assert sorted(watches.load_all()) == ["DEMO-2", "DEMO-3"]
    assert sorted(effects.load_all()) == ["DEMO-2.merge.abc", "DEMO-3.merge.abc", "telegram.new"]
    assert (status["jobs_compacted"], status["runs_compacted"]) == (1, 1)
    assert (status["watches_compacted"], status["effects_compacted"]) == (1, 3)
    # Tasks themselves are kept: they are the history `conveyor show` tells
    assert bus.store(subjects.BUCKET_TASKS, Task).get("DEMO-1") is not None


def test_agent_output_logs_over_the_cap_rotate_keeping_n_and_a_live_writer_goes_on(
    start_actor: StartActor, stub: Any, janitor_cfg: Config, disk: FakeDisk
):
    layout = Layout(janitor_cfg.data_path)
    sweeper = start_janitor(start_actor, stub, janitor_cfg)
    put_task(sweeper.bus, "DEMO-4", "development", sweeper.clock.now())
    small = make_run_dir(layout, "DEMO-5", size=500) / "output.log"
    log = make_run_dir(layout, "DEMO-4", size=0) / "output.log"
    with log.open("ab") as agent:  # the live agent's descriptor, opened as procs.spawn opens it
        agent.write(b"a" * 1500)
        agent.flush()

        assert sweeper.tick(1.0)["logs_rotated"] == 1
        assert log.stat().st_size == 0
        assert Path(f"{log}.1").read_bytes() == b"a" * 1500

        agent.write(b"b" * 1200)
        agent.flush()
        assert log.read_bytes() == b"b" * 1200  # appended at the start of the emptied log
        sweeper.tick(1.0)
        agent.write(b"c" * 1100)
        agent.flush()
        status = sweeper.tick(1.0)

    assert status["logs_rotated"] == 3
    assert Path(f"{log}.1").read_bytes() == b"c" * 1100
    assert Path(f"{log}.2").read_bytes() == b"b" * 1200
    assert not Path(f"{log}.3").exists()
    assert small.read_bytes() == b"x" * 500
    assert not Path(f"{small}.1").exists()


def test_a_disk_use_over_the_threshold_alerts_once(
    start_actor: StartActor, stub: Any, janitor_cfg: Config, disk: FakeDisk
):
    sweeper = start_janitor(start_actor, stub, janitor_cfg)
    alerts = Captured(sweeper.bus, subjects.ALERTS, Alert)
    disk.percent = 95.0

    status = sweeper.tick(1.0)

    (alert,) = alerts.wait_for(Alert, what="the disk usage alert")
    assert (alert.kind, alert.level, alert.source) == (policy.KIND_DISK_USAGE, "warning", "janitor")
    assert f"95.0% used under {janitor_cfg.data_path}" in alert.text
    assert status["disk"]["over_threshold"]
    assert disk.probed[-1] == janitor_cfg.data_path
    # Still over on the next probe: no second alert (the pause alert that follows proves
    # the probe in between was handled and published nothing)
    sweeper.tick(1.0)
    disk.free_mb = 10.0
    sweeper.tick(1.0)
    alerts.wait_for(Alert, 2, what="the pause alert")
    assert [a.kind for a in alerts.of(Alert)] == [
        policy.KIND_DISK_USAGE,
        policy.KIND_LAUNCH_PAUSED,
    ]


def test_launching_pauses_below_the_floor_and_resumes_by_itself_when_space_is_back(
    start_actor: StartActor, janitor_cfg: Config, disk: FakeDisk
):
    worker = start_actor("queue_worker", config=janitor_cfg)
    sweeper = start_actor("janitor", config=janitor_cfg, queue_worker=worker.ref)
    alerts = Captured(sweeper.bus, subjects.ALERTS, Alert)
    orders = Captured(sweeper.bus, subjects.LAUNCH_ORDERS, LaunchOrder)
    disk.free_mb = 40.0

    status = sweeper.tick(1.0)

    (paused,) = alerts.wait_for(Alert, what="the launch pause alert")
    assert (paused.kind, paused.level) == (policy.KIND_LAUNCH_PAUSED, "error")
    assert "40 MB free" in paused.text
    assert status["disk"]["launching_paused"]
    assert "below the floor of 100 MB" in worker.status()["paused"]

    # A job requested while paused is stored but not started
    req = JobRequested(
        job_id="DEMO-1.development.1.work",
        task_id="DEMO-1",
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="feature/DEMO-1",
        title="work",
    )
    worker.bus.publish(subjects.JOBS_REQUESTED, req, msg_id="test:req")
    wait_until(lambda: worker.store().get(req.job_id), what="the job stored")
    worker.tick(1.0)
    assert worker.status()["counts"] == {"queued": 1}
    sweeper.tick(1.0)  # still below the floor: no second alert, still paused
    assert worker.status()["counts"] == {"queued": 1}

    disk.free_mb = 500.0
    status = sweeper.tick(1.0)

    (order,) = orders.wait_for(LaunchOrder, what="the launch order after the resume")
    assert order.job_id == req.job_id
    assert not status["disk"]["launching_paused"]
    assert worker.status()["paused"] == ""
    kinds = [a.kind for a in alerts.wait_for(Alert, 2, what="the resume note")]
    assert kinds == [policy.KIND_LAUNCH_PAUSED, policy.KIND_LAUNCH_RESUMED]
    assert alerts.of(Alert)[1].level == "info"


def test_a_failing_disk_probe_never_stops_the_sweep(
    start_actor: StartActor, stub: Any, janitor_cfg: Config, monkeypatch: pytest.MonkeyPatch
):
    def _broken(_path: Path) -> DiskUsage:
        raise OSError("statvfs failed")

    monkeypatch.setattr(janitor, "disk_usage", _broken)
    sweeper = start_janitor(start_actor, stub, janitor_cfg)

    status = sweeper.tick(1.0)

    assert status["disk_failures"] == 1
    assert status["last_sweep_at"] == sweeper.clock.now()
    assert sweeper.tick(1.0)["disk_failures"] == 2


def test_the_probe_of_a_data_directory_not_made_yet_reads_its_parents_filesystem(tmp_path: Path):
    usage = janitor.disk_usage(tmp_path / "not" / "yet")

    assert usage.total > 0
    assert 0 <= usage.free <= usage.total
