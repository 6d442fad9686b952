"""LeaseKeeper alone on a real nats-server: exclusive grants, holder-aware release, reclaim."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import psutil

from actors.lease_policy import Lease, merge_lease, task_lease
from bus import subjects
from bus.bridge import Bus
from bus.messages import (
    Alert,
    LeaseAcquire,
    LeaseHolder,
    LeaseRelease,
    LeaseRenew,
    LeaseReply,
    StageChanged,
)
from conveyor import procs
from conveyor.clock import FakeClock
from tests.actors.conftest import ActorUnderTest, Captured, StartActor
from tests.harness import make_config, wait_until
from tests.kv_raw import api_requests, flush

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


# --- sweeps with no other acquire --------------------------------------------------------------


def exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def stored_lease(name: str, who: LeaseHolder, at: float) -> Lease:
    return Lease(name=name, holder=who, acquired_at=at, renewed_at=at)


def test_the_start_up_sweep_frees_a_dead_holders_lease_with_no_acquire(
    start_actor: StartActor, bus: Bus, clock: FakeClock
):
    # Given a merge lease and a transition lease left by a holder that died while
    # no LeaseKeeper ran
    store = bus.store(subjects.BUCKET_LEASES, Lease)
    dead = holder("DEMO-1", pid=exited_pid())
    task = task_lease("DEMO-1")
    store.create(LEASE, stored_lease(LEASE, dead, clock.now()))
    store.create(task, stored_lease(task, dead, clock.now()))
    alerts = Captured(bus, subjects.ALERTS)

    # When the LeaseKeeper starts (and nothing asks for the leases)
    leases = start_actor("lease_keeper")

    # Then its start-up sweep freed both, counted them and alerted
    status = leases.status()
    assert (status["reclaimed_total"], status["lease_reclaimed_total"]) == (2, 2)
    assert status["leases"] == []
    assert (store.get(LEASE), store.get(task)) == (None, None)
    found = alerts.wait_for(Alert, 2, what="two reclaim alerts")
    assert sorted(a.text.split(":")[0] for a in found) == sorted(
        [f"lease {LEASE} reclaimed", f"lease {task} reclaimed"]
    )


def test_the_periodic_sweep_frees_a_lease_once_its_live_holder_dies(start_actor: StartActor):
    # Given a lease granted to a live process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = msgspec.structs.replace(
            holder("DEMO-1", pid=child.pid), create_time=psutil.Process(child.pid).create_time()
        )
        leases = start_actor("lease_keeper")
        assert acquire(leases, live).granted
        # While it lives, ticks keep it
        assert leases.tick(60.0)["lease_reclaimed_total"] == 0
        assert held_by(leases) == "DEMO-1"
    finally:
        child.kill()
        child.wait(timeout=30)

    # When it has died, the next tick frees the lease with no other acquire
    status = leases.tick(1.0)

    assert (status["reclaimed_total"], status["lease_reclaimed_total"]) == (1, 1)
    assert held_by(leases) == ""


def test_a_holder_the_probe_cannot_judge_keeps_its_lease(start_actor: StartActor):
    # Given a lease whose holder pid exists but whose start time was never recorded
    leases = start_actor("lease_keeper")
    unknown = msgspec.structs.replace(holder("DEMO-1"), create_time=0.0)
    assert acquire(leases, unknown).granted

    # When the LeaseKeeper ticks, and another task asks for the lease
    status = leases.tick(60.0)
    refused = acquire(leases, holder("DEMO-2"))

    # Then uncertain counts as alive: nothing is reclaimed
    assert status["lease_reclaimed_total"] == 0
    assert not refused.granted
    assert held_by(leases) == "DEMO-1"


# --- the kill switches, as docs/configuration.md describes them ------------------------------


def test_with_reclaim_switched_off_a_dead_holder_keeps_its_lease_until_its_task_ends(
    start_actor: StartActor, tmp_path: Path, nats_url: str
):
    # Given leases.reclaim_enabled = false and a lease whose holder is dead
    off = make_config(tmp_path / "off", nats_url, leases={"reclaim_enabled": False})
    leases = start_actor("lease_keeper", config=off)
    assert acquire(leases, holder("DEMO-1", pid=exited_pid())).granted

    # When ticks pass and another task asks for it
    status = leases.tick(60.0)
    refused = acquire(leases, holder("DEMO-2"))

    # Then neither the tick nor the acquire reclaims it
    assert status["lease_reclaimed_total"] == 0
    assert not refused.granted
    assert "held by DEMO-1" in refused.reason
    assert held_by(leases) == "DEMO-1"
    # but the end of its task still frees it, and an operator's forced release works
    done = StageChanged(
        task_id="DEMO-1", repo="demo", old="deploy", new="done", cause="c", revision=9, at=1.0
    )
    leases.bus.publish(subjects.stage_changed("DEMO-1"), done, msg_id="test:off:done:DEMO-1")
    wait_until(lambda: held_by(leases) == "", what="DEMO-1's lease freed by its end")
    assert acquire(leases, holder("DEMO-2", pid=exited_pid())).granted
    forced: LeaseReply = leases.ref.ask(LeaseRelease(name=LEASE, force=True), timeout=10)
    assert forced.granted
    assert held_by(leases) == ""


def test_with_leases_switched_off_every_acquire_and_renew_is_granted_and_nothing_stored(
    start_actor: StartActor, tmp_path: Path, nats_url: str
):
    off = make_config(tmp_path / "off", nats_url, leases={"enabled": False})
    leases = start_actor("lease_keeper", config=off)

    first, second = acquire(leases, holder("DEMO-1")), acquire(leases, holder("DEMO-2"))
    renew: LeaseReply = leases.ref.ask(
        LeaseRenew(name=LEASE, task_id="DEMO-1", revision=0), timeout=10
    )

    for reply in (first, second, renew):
        assert (reply.granted, reply.revision, reply.reason) == (True, 0, "leases disabled")
    assert held_by(leases) == ""
    assert leases.status()["enabled"] is False


def test_one_lease_that_cannot_be_freed_does_not_stop_the_sweep_for_the_others(
    start_actor: StartActor, bus: Bus
):
    # Given two leases of dead holders, one of them rewritten behind the keeper's back
    leases = start_actor("lease_keeper")
    dead = exited_pid()
    other = merge_lease("other")
    assert acquire(leases, holder("DEMO-1", pid=dead)).granted
    taken: LeaseReply = leases.ref.ask(
        LeaseAcquire(name=other, holder=holder("DEMO-2", pid=dead)), timeout=10
    )
    assert taken.granted
    store = bus.store(subjects.BUCKET_LEASES, Lease)
    moved = store.get(LEASE)
    assert moved is not None
    store.update(LEASE, moved.value, expect=moved.revision)

    # When the LeaseKeeper sweeps
    status = leases.tick(1.0)

    # Then the stale one fails alone, the other is freed in the same sweep
    assert status["lease_reclaimed_total"] == 1
    assert store.get(other) is None
    assert held_by(leases) == "DEMO-1"
    # and the next sweep, having read the bucket again, frees the first one too
    assert leases.tick(1.0)["lease_reclaimed_total"] == 2
    assert held_by(leases) == ""


def test_a_lease_taken_again_after_its_release_is_one_write_and_no_read(
    start_actor: StartActor,
):
    leases = start_actor("lease_keeper")
    bus = leases.bus
    reads = api_requests(bus, "STREAM.MSG.GET", subjects.BUCKET_LEASES)
    for task_id in ("DEMO-1", "DEMO-2", "DEMO-1"):
        assert acquire(leases, holder(task_id)).granted
        assert release(leases, task_id).granted
    assert acquire(leases, holder("DEMO-3")).granted
    flush(bus)
    # Each take after the first is over the keeper's own delete marker.
    assert reads == []
    assert held_by(leases) == "DEMO-3"
