"""A launcher adopts nothing it no longer owns, and says what its host runs (real nats)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from actors.launcher_policy import RUN_FINISHED, Run
from actors.queue_policy import RUNNING, Job
from bus import subjects
from bus.bridge import Bus
from bus.messages_hosts import HostHeartbeat
from conveyor import procs
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ActorUnderTest, Captured
from tests.harness import make_config, wait_until

pytestmark = pytest.mark.timeout(60)

LAUNCHER = "la"


def test_a_restarted_launcher_kills_and_gives_up_a_run_whose_attempt_moved_on(
    bus: Bus, clock: FakeClock, tmp_path: Path, nats_url: str
):
    # Given a run of this launcher whose agent still runs, but whose job was reaped
    # and retried elsewhere while the launcher was away (attempt 2 runs now)
    agent = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        run = Run(
            id="DEMO-1.development.1.work.1",
            job_id="DEMO-1.development.1.work",
            attempt=1,
            task_id="DEMO-1",
            repo="demo",
            role="developer",
            stage="development",
            visit=1,
            branch="b",
            host="host-a",
            launcher=LAUNCHER,
            status="running",
            pid=agent.pid,
            create_time=psutil.Process(agent.pid).create_time(),
            boot_id=procs.boot_id(),
            run_dir=str(tmp_path / "run"),
        )
        bus.store(subjects.BUCKET_RUNS, Run).create(run.id, run)
        job = Job(
            id=run.job_id,
            task_id="DEMO-1",
            repo="demo",
            stage="development",
            role="developer",
            visit=1,
            branch="b",
            title="t",
            status=RUNNING,
            attempts=2,
            host="host-b",
        )
        bus.store(subjects.BUCKET_JOBS, Job).create(job.id, job)
        beats = Captured(bus, subjects.HOSTS_HEARTBEAT, HostHeartbeat)
        config = make_config(
            tmp_path / "data", nats_url, launcher={"name": LAUNCHER, "host_id": "host-a"}
        )

        # When the launcher starts again
        ctx = wiring.Context(config, bus, clock, forge=object())  # type: ignore[arg-type]
        launcher = ActorUnderTest(wiring.SPECS["launcher"], ctx, clock)
        try:
            status = launcher.tick(1.0)

            # Then it adopted nothing: the run is closed, reported, and its agent killed
            assert status["tracked"] == 0
            stored = launcher.store().get(run.id)
            assert stored is not None
            assert stored.value.status == RUN_FINISHED
            assert stored.value.reported
            assert stored.value.error.startswith("disowned")
            wait_until(lambda: agent.poll() is not None, what="the orphan agent killed")
            # And its host heartbeat names its host and no run
            (beat, *_) = beats.wait_for(HostHeartbeat, what="a host heartbeat")
            assert (beat.host, beat.launcher, beat.runs) == ("host-a", LAUNCHER, [])
            assert beat.boot_id == procs.boot_id()
        finally:
            launcher.ref.stop(block=True, timeout=10)
    finally:
        agent.kill()
        agent.wait(timeout=10)
