"""LeaseKeeper alone on a real nats-server: exclusive grants, holder-aware release, reclaim."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import psutil

from actors.lease_policy import merge_lease
from bus import subjects
from bus.messages import (
    Alert,
    LeaseAcquire,
    LeaseHolder,
    LeaseRelease,
    LeaseReply,
    StageChanged,
)
from conveyor import procs
from tests.actors.conftest import ActorUnderTest, Captured, StartActor
from tests.harness import wait_until

LEASE = merge_lease("demo")


def holder(task_id: str, pid: int | None = None) -> LeaseHolder:
    """A holder on this host; by default this very (live) test process."""
    pid = os.getpid() if pid is None else pid
    return LeaseHolder(
        task_id=task_id,
        job_id=f"{task_id}.development.1.merge",
        launcher="l1",
        host=socket.gethostname(),
        pid=pid,
        create_time=psutil.Process(os.getpid()).create_time(),
        boot_id=procs.boot_id(),
    )


def acquire(leases: ActorUnderTest, who: LeaseHolder) -> LeaseReply:
    reply: LeaseReply = leases.ref.ask(LeaseAcquire(name=LEASE, holder=who), timeout=10)
    return reply


def release(leases: ActorUnderTest, task_id: str) -> LeaseReply:
    reply: LeaseReply = leases.ref.ask(LeaseRelease(name=LEASE, task_id=task_id), timeout=10)
    return reply


def held_by(leases: ActorUnderTest) -> str:
    entry = leases.store().get(LEASE)
    return entry.value.holder.task_id if entry is not None else ""


def test_a_merge_lease_is_held_by_one_task_at_a_time(start_actor: StartActor):
    leases = start_actor("lease_keeper")

    first = acquire(leases, holder("DEMO-1"))
    second = acquire(leases, holder("DEMO-2"))
    again = acquire(leases, holder("DEMO-1"))

    assert first.granted
    assert first.revision > 0
    assert not second.granted
    assert "held by DEMO-1" in second.reason
    assert again.granted
    assert held_by(leases) == "DEMO-1"


def test_only_the_holder_task_releases_a_lease(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    acquire(leases, holder("DEMO-1"))

    refused = release(leases, "DEMO-2")
    assert not refused.granted
    assert held_by(leases) == "DEMO-1"

    assert release(leases, "DEMO-1").granted
    assert held_by(leases) == ""
    assert acquire(leases, holder("DEMO-2")).granted


def test_a_lease_of_a_dead_holder_is_reclaimed_on_tick_with_an_alert(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    alerts = Captured(leases.bus, subjects.ALERTS)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert acquire(leases, holder("DEMO-1", pid=proc.pid)).granted

    status = leases.tick(1.0)

    assert status["reclaimed_total"] == 1
    assert status["leases"] == []
    assert held_by(leases) == ""
    (alert,) = alerts.wait_for(Alert, what="the reclaim alert")
    assert alert.task_id == "DEMO-1"
    assert f"lease {LEASE} reclaimed" in alert.text


def test_a_live_holder_keeps_its_lease_across_ticks(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    acquire(leases, holder("DEMO-1"))

    status = leases.tick(60.0)

    assert status["reclaimed_total"] == 0
    assert held_by(leases) == "DEMO-1"


def test_a_task_that_ends_or_escalates_frees_its_leases(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    acquire(leases, holder("DEMO-1"))
    done = StageChanged(
        task_id="DEMO-1", repo="demo", old="deploy", new="done", cause="c", revision=9, at=1.0
    )

    leases.bus.publish(subjects.stage_changed("DEMO-1"), done, msg_id="test:done:DEMO-1")

    wait_until(lambda: held_by(leases) == "", what="DEMO-1's lease freed by its end")
    assert acquire(leases, holder("DEMO-2")).granted
    assert held_by(leases) == "DEMO-2"
    escalated = Alert(level="error", text="DEMO-2 escalated", task_id="DEMO-2", kind="escalated")
    leases.bus.publish(subjects.ALERTS, escalated, msg_id="test:escalated:DEMO-2")

    wait_until(lambda: held_by(leases) == "", what="DEMO-2's lease freed by its escalation")
