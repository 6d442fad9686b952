"""What a launcher answers for its own host: probed on this machine, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from actors import hosts
from actors.launcher_policy import FINISHED, Run
from bus.messages import LeaseHolder
from bus.messages_hosts import LivenessQuery
from conveyor import procs, runwrap

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def run(key: str, pid: int | None, *, run_dir: str = "", boot: str = "", **kw: object) -> Run:
    job_id, _, attempt = key.rpartition(".")
    create_time = psutil.Process(pid).create_time() if pid is not None else None
    return Run(
        id=key,
        job_id=job_id,
        attempt=int(attempt),
        task_id="T",
        repo="demo",
        role="developer",
        stage="development",
        visit=1,
        branch="b",
        host="here",
        launcher="l1",
        pid=pid,
        create_time=create_time,
        run_dir=run_dir,
        boot_id=boot or procs.boot_id(),
        **kw,  # type: ignore[arg-type]
    )


def test_a_host_answers_for_its_runs_live_dead_other_boot_exited_and_unknown(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_run = run("j.2", gone.pid)
    gone.wait(timeout=10)
    exited = tmp_path / "exited"
    exited.mkdir()
    runwrap.write_exit_file(exited / "exit_code", 3, 100.0)
    runs = {
        "j.1": run("j.1", sleeper.pid),
        "j.2": gone_run,
        "j.3": run("j.3", sleeper.pid, boot="another-boot"),
        "j.4": run("j.4", None, run_dir=str(exited), status=FINISHED),
    }
    query = LivenessQuery(runs=[*runs, "j.9"])

    said = hosts.answer(query, host="here", find=runs.get, now=110.0)

    assert said.host == "here"
    assert said.boot_id == procs.boot_id()
    by_key = {f"{r.job_id}.{r.attempt}": r for r in said.runs}
    assert by_key["j.1"].liveness == procs.ALIVE
    assert by_key["j.2"].liveness == procs.DEAD
    assert by_key["j.3"].liveness == procs.DEAD  # recorded under another boot
    assert (by_key["j.4"].liveness, by_key["j.4"].exit_code) == (procs.DEAD, 3)
    assert by_key["j.4"].exit_age_s == pytest.approx(10.0)
    assert not by_key["j.9"].known
    assert by_key["j.9"].liveness == procs.UNCERTAIN


def test_a_host_answers_for_lease_holders_by_pid_create_time_and_boot(
    sleeper: subprocess.Popen[bytes],
):
    me = psutil.Process(os.getpid())
    live = LeaseHolder(
        task_id="T",
        job_id="j",
        launcher="l1",
        host="here",
        pid=me.pid,
        create_time=me.create_time(),
        boot_id=procs.boot_id(),
    )
    reused = LeaseHolder(**{**_fields(live), "create_time": me.create_time() - 100})
    rebooted = LeaseHolder(**{**_fields(live), "boot_id": "another-boot"})
    unknown = LeaseHolder(**{**_fields(live), "create_time": 0.0})

    said = hosts.answer(
        LivenessQuery(holders=[live, reused, rebooted, unknown]),
        host="here",
        find=lambda _key: None,
        now=0.0,
    )

    assert said.holders == [procs.ALIVE, procs.DEAD, procs.DEAD, procs.UNCERTAIN]


def _fields(holder: LeaseHolder) -> dict[str, object]:
    return {f: getattr(holder, f) for f in holder.__struct_fields__ if f != "type"}
