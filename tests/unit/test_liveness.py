"""One liveness probe for leases, the Reaper and adoption: an uncertain answer is not "dead"."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psutil
import pytest

from actors import lease_keeper
from bus.messages import LeaseHolder
from conveyor import procs

START = 1_700_000_000.0


class FakeProcess:
    """Stands in for `psutil.Process`: a status and a start time, or an error on access."""

    status_value: str = psutil.STATUS_RUNNING
    started: float = START
    error: Exception | None = None
    on_create_time: Exception | None = None

    def __init__(self, pid: int) -> None:
        if self.error is not None:
            raise self.error
        self.pid = pid

    def status(self) -> str:
        return self.status_value

    def create_time(self) -> float:
        if self.on_create_time is not None:
            raise self.on_create_time
        return self.started


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeProcess]:
    class _Fake(FakeProcess):
        pass

    monkeypatch.setattr(procs.psutil, "Process", _Fake)
    return _Fake


def test_the_same_process_is_alive(fake: type[FakeProcess]):
    assert procs.probe(1234, START) == procs.ALIVE
    assert procs.alive(1234, START)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"error": psutil.NoSuchProcess(1234)}, procs.DEAD),
        ({"error": psutil.ZombieProcess(1234)}, procs.DEAD),
        ({"status_value": psutil.STATUS_ZOMBIE}, procs.DEAD),
        ({"started": START + 5.0}, procs.DEAD),
        ({"error": psutil.AccessDenied(1234)}, procs.UNCERTAIN),
        ({"on_create_time": psutil.AccessDenied(1234)}, procs.UNCERTAIN),
        ({"error": PermissionError("denied")}, procs.UNCERTAIN),
        ({"on_create_time": psutil.Error("odd")}, procs.UNCERTAIN),
    ],
    ids=[
        "pid-gone",
        "zombie-on-open",
        "zombie-status",
        "pid-reused",
        "access-denied",
        "access-denied-on-start-time",
        "permission-error",
        "other-psutil-error",
    ],
)
def test_only_proof_makes_a_process_dead(
    fake: type[FakeProcess], setup: dict[str, Any], expected: str
):
    for name, value in setup.items():
        setattr(fake, name, value)

    assert procs.probe(1234, START) == expected
    # A caller about to wait on or kill a process needs it provably alive
    assert not procs.alive(1234, START)


@pytest.mark.parametrize("recorded", [None, 0.0])
def test_a_missing_start_time_is_uncertain_while_the_pid_exists(
    fake: type[FakeProcess], recorded: float | None
):
    assert procs.probe(1234, recorded) == procs.UNCERTAIN


@pytest.mark.parametrize("recorded", [None, 0.0])
def test_a_missing_start_time_of_a_gone_pid_is_dead(
    fake: type[FakeProcess], recorded: float | None
):
    fake.error = psutil.NoSuchProcess(1234)
    assert procs.probe(1234, recorded) == procs.DEAD


@pytest.mark.parametrize("pid", [None, 0, -1])
def test_no_pid_is_uncertain(pid: int | None):
    assert procs.probe(pid, START) == procs.UNCERTAIN


def test_real_processes_this_one_alive_an_exited_one_dead():
    me = psutil.Process()
    assert procs.probe(os.getpid(), me.create_time()) == procs.ALIVE
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait(timeout=30)
    assert procs.probe(child.pid, started) == procs.DEAD


def _holder(**changes: Any) -> LeaseHolder:
    fields: dict[str, Any] = {
        "task_id": "DEMO-1",
        "job_id": "DEMO-1.development.1.merge",
        "launcher": "l1",
        "host": "here",
        "pid": 1234,
        "create_time": START,
        "boot_id": "boot-1",
    }
    fields.update(changes)
    return LeaseHolder(**fields)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({}, True),
        ({"error": psutil.NoSuchProcess(1234)}, False),
        ({"error": psutil.AccessDenied(1234)}, None),
        ({"on_create_time": psutil.AccessDenied(1234)}, None),
    ],
    ids=["alive", "dead", "access-denied", "start-time-denied"],
)
def test_a_lease_holder_the_probe_cannot_judge_counts_as_alive(
    fake: type[FakeProcess], setup: dict[str, Any], expected: bool | None
):
    for name, value in setup.items():
        setattr(fake, name, value)
    assert lease_keeper.holder_alive(_holder(), "here", "boot-1") is expected


def test_a_lease_holder_without_a_start_time_is_not_dead(fake: type[FakeProcess]):
    assert lease_keeper.holder_alive(_holder(create_time=0.0), "here", "boot-1") is None


def test_a_lease_holder_elsewhere_is_unknown_and_after_a_reboot_dead(fake: type[FakeProcess]):
    assert lease_keeper.holder_alive(_holder(host="other"), "here", "boot-1") is None
    assert lease_keeper.holder_alive(_holder(), "here", "boot-2") is False
