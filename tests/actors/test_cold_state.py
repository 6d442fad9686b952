"""StageEngine on a real nats-server: settled tasks leave memory and start-up skips them.

The first start over data of an older version (no checkpoint) reads every task once
and writes the checkpoint; a restart reads only the checkpoint, the hot tasks and the
writes since, and still answers settled tasks from KV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors import checkpoint_policy, task_settled, task_state
from actors.stage_engine import StatusQuery
from actors.task_index import PageRequest
from actors.task_policy import Task
from actors.task_settled import HEAD_KEY, TasksHead, segment_key
from actors.task_summary import AllTasks, GetTask, GetTasks
from bus import subjects
from bus.bridge import Bus
from bus.kv import Store
from bus.messages import Cancel, Submit
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest
from tests.harness import make_config
from tests.kv_raw import put_raw

pytestmark = pytest.mark.timeout(60)


def _task(task_id: str, stage: str, created_at: float) -> Task:
    return Task(
        id=task_id,
        repo="demo",
        title=f"title {task_id}",
        branch=f"feature/{task_id}-t",
        stage=stage,
        job_status="running",
        created_at=created_at,
        updated_at=created_at,
    )


def _start(tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock) -> ActorUnderTest:
    cfg = make_config(tmp_path / "data", nats_url)
    ctx = wiring.Context(cfg, bus, clock, forge=object())  # type: ignore[arg-type]
    return ActorUnderTest(wiring.SPECS["stage_engine"], ctx, clock)


def _ask(engine: ActorUnderTest, message: Any) -> Any:
    return engine.ref.ask(message, timeout=ASK_TIMEOUT_S)


def _page_ids(engine: ActorUnderTest, state: str) -> list[str]:
    page = _ask(engine, StatusQuery(kind="tasks", page=PageRequest(state=state)))
    return [row["id"] for row in page["tasks"]]


def test_old_data_migrates_once_and_a_restart_reads_only_hot_tasks(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    # As the previous version left them: three settled tasks and one in flight, no index.
    for number, stage in ((1, "done"), (2, "cancelled"), (3, "done"), (4, "analysis")):
        tasks.create(f"DEMO-{number}", _task(f"DEMO-{number}", stage, float(number)))
    heads: Store[TasksHead] = bus.store(subjects.BUCKET_INDEX, TasksHead)
    assert heads.get(HEAD_KEY) is None
    monkeypatch.setattr(task_state, "MIGRATION_BATCH", 3)  # the upgrade reads in batches

    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        overview = _ask(engine, StatusQuery(kind="overview"))
        assert (overview["tasks"], overview["by_state"]["finished"]) == (4, 3)
        assert [s.id for s in _ask(engine, AllTasks())] == ["DEMO-4"]  # settled left memory
        assert _page_ids(engine, "all") == ["DEMO-1", "DEMO-2", "DEMO-3", "DEMO-4"]
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert (head.value.hot, head.value.delivered.count) == (["DEMO-4"], 2)
        # Cancelling the last one settles it too; the tick's checkpoint records it.
        assert _ask(engine, Cancel(id="DEMO-4")).ok
        assert _ask(engine, AllTasks()) == []
        engine.tick(1.0)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.hot == []
    finally:
        engine.ref.stop(block=True, timeout=10)

    # Written while the engine was away: found among the writes after the checkpoint.
    tasks.create("DEMO-5", _task("DEMO-5", "done", 5.0))

    def _no_full_load(self: Store[Any]) -> Any:
        raise AssertionError(f"start-up read all of {self.bucket}")

    monkeypatch.setattr(Store, "load_all", _no_full_load)
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        overview = _ask(engine, StatusQuery(kind="overview"))
        assert (overview["tasks"], overview["by_state"]["finished"]) == (5, 5)
        assert _page_ids(engine, "finished") == [f"DEMO-{n}" for n in range(1, 6)]
        usage = _ask(engine, StatusQuery(kind="usage"))
        assert usage["delivered"]["count"] == 3
        # Settled tasks answer from KV, and their numbers still count for new ids.
        record = _ask(engine, StatusQuery(kind="task", task_id="DEMO-2"))
        assert (record["id"], record["stage"]) == ("DEMO-2", "cancelled")
        assert _ask(engine, GetTask(task_id="DEMO-3")).stage == "done"
        again = _ask(engine, Submit(repo="demo", title="title DEMO-1", id="DEMO-1"))
        assert (again.ok, again.note) == (True, "already submitted")
        created = _ask(engine, Submit(repo="demo", title="new"))
        assert created.task["id"] == "DEMO-6"
        assert [s.id for s in _ask(engine, AllTasks())] == ["DEMO-6"]
        # The Reconciler's lookup by id answers settled and hot tasks alike.
        found = _ask(engine, GetTasks(("DEMO-1", "DEMO-6", "DEMO-99")))
        assert {k: v["stage"] for k, v in found.items()} == {"DEMO-1": "done", "DEMO-6": "created"}
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_writes_behind_the_engines_back_are_adopted_and_a_broken_checkpoint_is_rebuilt(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    tasks.create("DEMO-1", _task("DEMO-1", "done", 1.0))
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        assert _ask(engine, StatusQuery(kind="overview"))["tasks"] == 1
        # Written by hand while the engine runs; then the engine writes and checkpoints.
        foreign = tasks.create("DEMO-2", _task("DEMO-2", "cancelled", 2.0))
        put_raw(bus, subjects.BUCKET_TASKS, "DEMO-3", b"not a task")
        assert _ask(engine, Submit(repo="demo", title="mine", id="DEMO-4")).ok
        engine.tick(1.0)
        heads: Store[TasksHead] = bus.store(subjects.BUCKET_INDEX, TasksHead)
        head = heads.get(HEAD_KEY)
        assert head is not None
        assert head.value.seq > foreign
        # Adopted before the checkpoint moved past it; the garbage is left where it is.
        assert _page_ids(engine, "all") == ["DEMO-1", "DEMO-2", "DEMO-4"]
    finally:
        engine.ref.stop(block=True, timeout=10)

    put_raw(bus, subjects.BUCKET_INDEX, segment_key(0), b"broken")
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        # The checkpoint is derived state: unusable, it is rebuilt from every task.
        overview = _ask(engine, StatusQuery(kind="overview"))
        assert (overview["tasks"], overview["by_state"]["finished"]) == (3, 2)
        assert _page_ids(engine, "finished") == ["DEMO-1", "DEMO-2"]
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_a_long_tail_since_the_checkpoint_is_read_in_batches(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    tasks.create("DEMO-1", _task("DEMO-1", "analysis", 1.0))
    engine = _start(tmp_path, nats_url, bus, clock)
    engine.ref.stop(block=True, timeout=10)
    # Behind its back (a restore, the scale bench's copies): more tasks than one batch,
    # and the hot one settled.
    tasks.put("DEMO-1", _task("DEMO-1", "cancelled", 1.0))
    for number in range(2, 7):
        tasks.create(f"DEMO-{number}", _task(f"DEMO-{number}", "done", float(number)))

    def _whole_tail(self: Store[Any], *_: Any) -> Any:
        raise AssertionError(f"read every write since at once from {self.bucket}")

    held: list[int] = []
    keep = task_state.TaskState._keep

    def _keep(self: task_state.TaskState, entry: Any) -> None:
        keep(self, entry)
        held.append(len(self._tasks))

    monkeypatch.setattr(task_settled, "TAIL_BATCH", 2)
    monkeypatch.setattr(Store, "since", _whole_tail)
    monkeypatch.setattr(task_state.TaskState, "_keep", _keep)
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        overview = _ask(engine, StatusQuery(kind="overview"))
        # Settled tasks left memory batch by batch: never the whole tail at once.
        assert held
        assert max(held) <= 2, held
        assert (overview["tasks"], overview["by_state"]["finished"]) == (6, 6)
        assert _page_ids(engine, "finished") == [f"DEMO-{n}" for n in range(1, 7)]
        assert _ask(engine, AllTasks()) == []
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_the_engine_names_the_tasks_at_a_gate_without_the_queued_backlog(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    for number, job_status in enumerate(("queued", "done", "running", "failed", "queued"), 1):
        task = _task(f"DEMO-{number}", "development", float(number))
        tasks.create(f"DEMO-{number}", msgspec.structs.replace(task, job_status=job_status))
    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        assert [s.id for s in _ask(engine, AllTasks(job_ended=True))] == ["DEMO-2", "DEMO-4"]
        assert len(_ask(engine, AllTasks())) == 5
    finally:
        engine.ref.stop(block=True, timeout=10)


def test_with_a_large_hot_set_the_head_waits_until_writes_pay_for_it(
    tmp_path: Path, nats_url: str, bus: Bus, clock: FakeClock
):
    tasks = bus.store(subjects.BUCKET_TASKS, Task)
    hot = 2 * checkpoint_policy.IDS_PER_WRITE + 50
    for number in range(1, hot + 1):
        tasks.create(f"DEMO-{number}", _task(f"DEMO-{number}", "development", float(number)))
    heads: Store[TasksHead] = bus.store(subjects.BUCKET_INDEX, TasksHead)

    def head_seq() -> int:
        head = heads.get(HEAD_KEY)
        assert head is not None
        return head.value.seq

    engine = _start(tmp_path, nats_url, bus, clock)
    try:
        assert _ask(engine, StatusQuery(kind="overview"))["tasks"] == hot
        started = head_seq()  # the end of a start always writes it
        assert _ask(engine, Submit(repo="demo", title="one")).ok
        engine.tick(1.0)
        assert head_seq() == started  # one write does not pay for 250 ids
        for title in ("two", "three"):
            assert _ask(engine, Submit(repo="demo", title=title)).ok
        engine.tick(1.0)
        paid = head_seq()
        assert paid > started  # three writes do
        assert _ask(engine, Submit(repo="demo", title="four")).ok
        engine.tick(1.0)
        assert head_seq() == paid
        engine.tick(checkpoint_policy.HEAD_MAX_AGE_S)
        assert head_seq() > paid  # nor does a head wait longer than its age limit
    finally:
        engine.ref.stop(block=True, timeout=10)
