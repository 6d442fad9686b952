"""The LeaseKeeper reads attempts from the QueueWorker beside it, not from KV."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import psutil
import pykka
import pytest

from actors.hosts import attempt_owner
from actors.hot_jobs import HotJobs
from actors.lease_policy import SUPERSEDED, task_lease
from actors.queue_policy import RUNNING, Job
from bus import subjects
from bus.bridge import Bus
from bus.kv import Versioned
from bus.messages import LeaseAcquire, LeaseHolder, LeaseRenew, LeaseReply, ReapJob
from conveyor import procs
from conveyor.app import wiring
from conveyor.clock import FakeClock
from conveyor.config import Config
from tests.actors.test_host_leases import put_job
from tests.harness import wait_until
from tests.kv_raw import api_requests, flush

JOB = "DEMO-1.development.1.work"


def live_holder(attempt: int) -> LeaseHolder:
    """A holder of `JOB`'s attempt `attempt`: this live test process."""
    return LeaseHolder(
        task_id="DEMO-1",
        job_id=JOB,
        launcher="l1",
        host=socket.gethostname(),
        pid=os.getpid(),
        create_time=psutil.Process(os.getpid()).create_time(),
        boot_id=procs.boot_id(),
        attempt=attempt,
    )


@pytest.fixture
def control(bus: Bus, clock: FakeClock, cfg: Config) -> Iterator[wiring.Context]:
    """The QueueWorker and the LeaseKeeper started from one context, as in `control`."""
    ctx = wiring.Context(cfg, bus, clock)
    names = ("queue_worker", "lease_keeper")
    refs = [wiring.start_actor(wiring.SPECS[name], ctx) for name in names]
    ctx.refs.update(zip(names, refs, strict=True))
    yield ctx
    for ref in refs:
        if ref.is_alive():
            ref.stop(block=True, timeout=10)


def _ask(ref: pykka.ActorRef[Any], message: Any) -> LeaseReply:
    reply: LeaseReply = ref.ask(message, timeout=10)
    return reply


@pytest.fixture
def running(bus: Bus) -> None:
    """Attempt 1 of the job running, stored before control starts."""
    put_job(bus, JOB, status=RUNNING, attempts=1)


@pytest.mark.usefixtures("running")
def test_a_running_attempt_gets_and_renews_its_lease_without_a_job_read(
    control: wiring.Context, bus: Bus
) -> None:
    reads = api_requests(bus, "STREAM.MSG.GET", subjects.BUCKET_JOBS)
    keeper = control.ref("lease_keeper")
    name = task_lease("DEMO-1")
    granted = _ask(keeper, LeaseAcquire(name=name, holder=live_holder(1)))
    assert granted.granted
    renewed = _ask(keeper, LeaseRenew(name=name, task_id="DEMO-1", revision=granted.revision))
    assert renewed.granted
    flush(bus)
    assert reads == []


@pytest.mark.usefixtures("running")
def test_an_attempt_the_worker_reaped_is_refused_at_its_next_check(
    control: wiring.Context, bus: Bus
) -> None:
    keeper = control.ref("lease_keeper")
    name = task_lease("DEMO-1")
    granted = _ask(keeper, LeaseAcquire(name=name, holder=live_holder(1)))
    assert granted.granted
    # The Reaper finds attempt 1's executor dead: the worker moves the job on.
    bus.publish(subjects.JOBS_REAP, ReapJob(job_id=JOB, attempt=1, tier=1), msg_id="reap-1")
    jobs = bus.store(subjects.BUCKET_JOBS, Job)

    def moved_on() -> bool:
        entry = jobs.get(JOB)
        return entry is not None and entry.value.status != RUNNING

    wait_until(moved_on, what="the reap applied")
    renew = _ask(keeper, LeaseRenew(name=name, task_id="DEMO-1", revision=granted.revision))
    assert not renew.granted
    assert renew.reason.startswith(SUPERSEDED)


def test_without_a_worker_in_the_process_attempts_are_read_from_kv(bus: Bus) -> None:
    put_job(bus, JOB, status=RUNNING, attempts=2)
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    detached = attempt_owner(jobs, HotJobs())
    assert detached(JOB, 2)
    assert not detached(JOB, 1)


def test_a_refusal_the_hot_set_would_give_is_read_again_from_kv(bus: Bus) -> None:
    # Given a hot set that lags the record: it still has the job queued, and the job's
    # record says attempt 1 runs (another active claimed it while this one was paused)
    put_job(bus, JOB, status=RUNNING, attempts=1)
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    stored = jobs.get(JOB)
    assert stored is not None
    queued = msgspec.structs.replace(stored.value, status="queued", attempts=0)
    hot = HotJobs()
    hot.attach({JOB: Versioned(queued, 1)})
    owns = attempt_owner(jobs, hot)
    reads = api_requests(bus, "STREAM.MSG.GET", subjects.BUCKET_JOBS)

    # Then attempt 1 is current, read from KV, and attempt 2 is not
    assert owns(JOB, 1)
    assert not owns(JOB, 2)
    flush(bus)
    assert len(reads) == 2
