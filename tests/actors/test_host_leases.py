"""LeaseKeeper and holders on other hosts: their host answers, their silence frees, and a
superseded attempt gets no transition lease (real nats-server, fake clock)."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import psutil
import pytest

from actors import hosts
from actors.lease_policy import SUPERSEDED, Lease, merge_lease, task_lease
from actors.queue_policy import RUNNING, Job
from bus import subjects
from bus.bridge import Bus
from bus.messages import Alert, LeaseAcquire, LeaseHolder, LeaseRenew, LeaseReply
from conveyor import procs
from conveyor.clock import FakeClock
from tests.actors.conftest import ActorUnderTest, Captured, StartActor

pytestmark = pytest.mark.timeout(60)

LEASE = merge_lease("demo")
FAR = "far-host"
SILENCE_S = 60.0  # the default `launcher.host_silence_s`


def holder(task_id: str, *, host: str = FAR, pid: int | None = None, attempt: int = 1):
    pid = os.getpid() if pid is None else pid
    return LeaseHolder(
        task_id=task_id,
        job_id=f"{task_id}.development.1.work",
        launcher="far-launcher",
        host=host,
        pid=pid,
        create_time=psutil.Process(os.getpid()).create_time(),
        boot_id=procs.boot_id(),
        attempt=attempt,
    )


def ask(leases: ActorUnderTest, message: msgspec.Struct) -> LeaseReply:
    reply: LeaseReply = leases.ref.ask(message, timeout=10)
    return reply


def exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_a_lease_held_on_a_silent_host_is_reclaimed_once_the_silence_has_passed(
    start_actor: StartActor, bus: Bus, clock: FakeClock
):
    # Given a merge lease held on a host nobody hears (no launcher of it answers)
    store = bus.store(subjects.BUCKET_LEASES, Lease)
    at = clock.now()
    store.create(LEASE, Lease(name=LEASE, holder=holder("DEMO-1"), acquired_at=at, renewed_at=at))
    alerts = Captured(bus, subjects.ALERTS)
    leases = start_actor("lease_keeper")

    # While the host has been silent for less than the silence, it keeps its lease
    assert leases.tick(SILENCE_S - 1)["reclaimed_total"] == 0

    # Past it, the next tick reclaims it, with an alert
    status = leases.tick(1.0)
    assert status["reclaimed_total"] == 1
    assert store.get(LEASE) is None
    (alert,) = alerts.wait_for(Alert, what="the reclaim alert")
    assert "far-host silent for 60s" in alert.text


def test_another_host_answers_for_its_holder_when_a_second_task_asks(
    start_actor: StartActor, bus: Bus, clock: FakeClock
):
    # Given the far host's launcher answering liveness questions (probing this machine)
    hosts.serve(bus, FAR, lambda _key: None, clock)
    leases = start_actor("lease_keeper")
    assert ask(leases, LeaseAcquire(name=LEASE, holder=holder("DEMO-1"))).granted

    # When another task asks while the holder lives, its host says alive: refused
    refused = ask(leases, LeaseAcquire(name=LEASE, holder=holder("DEMO-2")))
    assert not refused.granted

    # And once the holder is dead, its host says so: reclaimed for the asker
    dead = holder("DEMO-3", pid=exited_pid())
    assert ask(leases, LeaseAcquire(name=LEASE, holder=dead)).granted is False
    other = merge_lease("other")
    assert ask(leases, LeaseAcquire(name=other, holder=dead)).granted
    taken = ask(leases, LeaseAcquire(name=other, holder=holder("DEMO-4")))
    assert taken.granted
    assert "reclaimed from dead holder DEMO-3" in taken.reason


def put_job(bus: Bus, job_id: str, *, status: str, attempts: int) -> None:
    jobs = bus.store(subjects.BUCKET_JOBS, Job)
    job = Job(
        id=job_id,
        task_id="DEMO-1",
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="b",
        title="t",
        status=status,
        attempts=attempts,
    )
    found = jobs.get(job_id)
    if found is None:
        jobs.create(job_id, job)
    else:
        jobs.update(job_id, job, expect=found.revision)


def test_a_superseded_attempt_gets_no_transition_lease_and_loses_the_one_it_held(
    start_actor: StartActor, bus: Bus
):
    # Given attempt 1 of a job holding its task's transition lease
    name = task_lease("DEMO-1")
    first = holder("DEMO-1", host=procs.host_id(), attempt=1)
    put_job(bus, first.job_id, status=RUNNING, attempts=1)
    leases = start_actor("lease_keeper")
    granted = ask(leases, LeaseAcquire(name=name, holder=first))
    assert granted.granted

    # When the job is reaped and retried elsewhere (attempt 2 runs now)
    put_job(bus, first.job_id, status=RUNNING, attempts=2)

    # Then attempt 1's renew (its fence check before a push) is refused for good
    renew = ask(leases, LeaseRenew(name=name, task_id="DEMO-1", revision=granted.revision))
    assert not renew.granted
    assert renew.reason.startswith(SUPERSEDED)
    # and so is a new acquire by attempt 1, while attempt 2 gets the lease
    again = ask(leases, LeaseAcquire(name=name, holder=first))
    assert not again.granted
    assert again.reason.startswith(SUPERSEDED)
    # (the lease attempt 1 still holds, alive, is no obstacle: it is freed from it)
    second = msgspec.structs.replace(first, launcher="other", attempt=2, pid=exited_pid())
    taken = ask(leases, LeaseAcquire(name=name, holder=second))
    assert taken.granted
    assert "superseded attempt 1" in taken.reason
