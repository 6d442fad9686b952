"""A Launcher finds its unreported runs from its checkpoint, not by reading every run."""

from __future__ import annotations

from typing import Any

import pytest

from actors import run_state, task_settled
from actors.launcher_policy import RUN_FINISHED, Run
from actors.run_state import RunsCheckpoint, RunsHead
from bus import subjects
from bus.bridge import Bus
from bus.kv import Store
from conveyor.clock import FakeClock
from tests.kv_raw import put_raw

pytestmark = pytest.mark.timeout(30)

HEAD = "runs.la.head"


def _run(number: int, *, launcher: str = "la", reported: bool = False) -> Run:
    return Run(
        id=f"DEMO-{number}.development.1.work.1",
        job_id=f"DEMO-{number}.development.1.work",
        attempt=1,
        task_id=f"DEMO-{number}",
        repo="demo",
        role="developer",
        stage="development",
        visit=1,
        branch="b",
        host="host-a",
        launcher=launcher,
        status=RUN_FINISHED if reported else "running",
        reported=reported,
    )


def _no_full_read(self: Any, *_: Any, **__: Any) -> Any:
    raise AssertionError("read every run")


def test_runs_load_from_the_checkpoint_and_a_broken_one_is_rebuilt(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
):
    runs = bus.store(subjects.BUCKET_RUNS, Run)
    # As an older version left them: reported runs, one to look after, another launcher's.
    for number in range(1, 4):
        runs.create(_run(number, reported=True).id, _run(number, reported=True))
    runs.create(_run(4).id, _run(4))
    runs.create(_run(5, launcher="lb").id, _run(5, launcher="lb"))
    monkeypatch.setattr(run_state, "WALK_BATCH", 2)  # the upgrade reads in batches

    first = RunsCheckpoint(bus, runs, "la", FakeClock())
    loaded = first.load()
    assert list(loaded) == [_run(4).id]
    first.write(loaded)
    heads: Store[RunsHead] = bus.store(subjects.BUCKET_INDEX, RunsHead)
    head = heads.get(HEAD)
    assert head is not None
    assert head.value.hot == [_run(4).id]
    first.write(loaded)  # unchanged: nothing written
    again = heads.get(HEAD)
    assert again is not None
    assert again.revision == head.revision

    # Launched after the checkpoint: among the writes since, read without a full walk.
    runs.create(_run(6).id, _run(6))
    monkeypatch.setattr(RunsCheckpoint, "_walk", _no_full_read)
    monkeypatch.setattr(Store, "load_all", _no_full_read)
    assert sorted(RunsCheckpoint(bus, runs, "la", FakeClock()).load()) == [_run(4).id, _run(6).id]

    # The checkpoint is derived state: one that does not decode is rebuilt by a walk.
    monkeypatch.undo()
    put_raw(bus, subjects.BUCKET_INDEX, HEAD, b"broken")
    assert sorted(RunsCheckpoint(bus, runs, "la", FakeClock()).load()) == [_run(4).id, _run(6).id]


def test_a_long_tail_since_the_checkpoint_is_read_in_batches(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
):
    runs = bus.store(subjects.BUCKET_RUNS, Run)
    for number in (1, 2):
        runs.create(_run(number).id, _run(number))
    first = RunsCheckpoint(bus, runs, "la", FakeClock())
    first.write(first.load())
    # Behind its back (a restore, the scale bench's copies): more runs than one batch,
    # among them a hot run now reported and another launcher's.
    runs.put(_run(1).id, _run(1, reported=True))
    for number in range(3, 8):
        runs.create(_run(number).id, _run(number, reported=number % 2 == 1))
    runs.create(_run(8, launcher="lb").id, _run(8, launcher="lb"))
    monkeypatch.setattr(task_settled, "TAIL_BATCH", 2)
    monkeypatch.setattr(Store, "since", _no_full_read)  # never the whole tail at once
    monkeypatch.setattr(RunsCheckpoint, "_walk", _no_full_read)
    loaded = RunsCheckpoint(bus, runs, "la", FakeClock()).load()
    assert sorted(loaded) == sorted(_run(n).id for n in (2, 4, 6))


def test_a_changed_head_waits_out_the_interval_unless_forced(bus: Bus):
    runs = bus.store(subjects.BUCKET_RUNS, Run)
    heads: Store[RunsHead] = bus.store(subjects.BUCKET_INDEX, RunsHead)
    clock = FakeClock()
    index = RunsCheckpoint(bus, runs, "la", clock)
    index.write({}, force=True)
    runs.create(_run(1).id, _run(1))
    stored = runs.get(_run(1).id)
    assert stored is not None
    one = {_run(1).id: stored}

    def hot() -> list[str]:
        head = heads.get(HEAD)
        assert head is not None
        return head.value.hot

    index.write(one)  # changed within the interval: a later tick writes it
    assert hot() == []
    clock.advance(run_state.HEAD_MIN_INTERVAL_S)
    index.write(one)
    assert hot() == [_run(1).id]
    index.write({}, force=True)
    assert hot() == []
