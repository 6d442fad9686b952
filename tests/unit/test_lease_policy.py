"""Merge-lease decisions: never take a lease from a live holder."""

from __future__ import annotations

import msgspec

from actors import lease_policy as lp
from bus.messages import LeaseHolder
from conveyor.config import LeaseConfig

NOW = 1_000_000.0
CFG = LeaseConfig(max_age_s=600.0)


def holder(task: str = "DEMO-1", pid: int = 100) -> LeaseHolder:
    return LeaseHolder(
        task_id=task,
        job_id=f"{task}.deploy-staging.1.merge",
        launcher="l1",
        host="h",
        pid=pid,
        create_time=1.0,
        boot_id="b",
    )


def held(task: str = "DEMO-1", age: float = 10.0, alerted: bool = False) -> lp.Lease:
    return lp.Lease(
        name="merge.demo",
        holder=holder(task),
        acquired_at=NOW - age,
        renewed_at=NOW - age,
        alerted=alerted,
    )


def test_a_free_lease_is_granted():
    grant = lp.on_acquire(None, "merge.demo", holder(), holder_alive=None, now=NOW)
    assert grant.granted
    assert grant.lease is not None
    assert grant.lease.holder.task_id == "DEMO-1"


def test_the_holding_task_gets_its_lease_again():
    grant = lp.on_acquire(held(), "merge.demo", holder(pid=200), holder_alive=True, now=NOW)
    assert grant.granted
    assert grant.lease is not None
    assert grant.lease.holder.pid == 200
    assert grant.lease.acquired_at == NOW - 10.0


def test_a_live_or_unknown_holder_is_never_dispossessed():
    for alive in (True, None):
        grant = lp.on_acquire(
            held(age=99999.0), "merge.demo", holder("DEMO-2"), holder_alive=alive, now=NOW
        )
        assert not grant.granted
        assert "DEMO-1" in grant.reason


def test_a_dead_holder_is_reclaimed_by_the_next_acquirer():
    grant = lp.on_acquire(held(), "merge.demo", holder("DEMO-2"), holder_alive=False, now=NOW)
    assert grant.granted
    assert grant.reclaimed is not None
    assert grant.reclaimed.holder.task_id == "DEMO-1"
    assert grant.lease is not None
    assert grant.lease.holder.task_id == "DEMO-2"


def test_release_is_holder_aware():
    assert lp.may_release(held(), "DEMO-1")
    assert not lp.may_release(held(), "DEMO-2")
    assert not lp.may_release(None, "DEMO-1")


def test_a_tick_reclaims_a_dead_holder_and_keeps_a_live_one():
    assert (
        lp.on_tick(held(), holder_alive=False, task_ended=False, now=NOW, cfg=CFG)[0] == "reclaim"
    )
    assert lp.on_tick(held(), holder_alive=True, task_ended=False, now=NOW, cfg=CFG)[0] == "keep"
    assert lp.on_tick(held(), holder_alive=None, task_ended=True, now=NOW, cfg=CFG)[0] == "reclaim"


def test_the_reclaim_switch_off_keeps_even_a_dead_holder():
    off = LeaseConfig(reclaim_enabled=False)
    assert lp.on_tick(held(), holder_alive=False, task_ended=False, now=NOW, cfg=off)[0] == "keep"


def test_an_old_lease_alerts_once_and_is_not_freed_silently():
    action, reason = lp.on_tick(
        held(age=601.0), holder_alive=True, task_ended=False, now=NOW, cfg=CFG
    )
    assert action == "alert"
    assert "ceiling" in reason
    again = lp.on_tick(
        held(age=700.0, alerted=True), holder_alive=True, task_ended=False, now=NOW, cfg=CFG
    )
    assert again[0] == "keep"


def _task_lease(job: str = "DEMO-1.development.1.work", launcher: str = "l1") -> lp.Lease:
    owner = msgspec.structs.replace(holder(), job_id=job, launcher=launcher)
    return lp.Lease(name=lp.task_lease("DEMO-1"), holder=owner, acquired_at=NOW, renewed_at=NOW)


def test_a_transition_lease_is_reentrant_per_job_and_launcher_not_per_task():
    current = _task_lease()
    same = msgspec.structs.replace(
        holder(pid=300), job_id="DEMO-1.development.1.work", launcher="l1"
    )
    assert lp.on_acquire(current, current.name, same, holder_alive=True, now=NOW).granted
    # Another attempt of the same task on another launcher waits for a live holder.
    other = msgspec.structs.replace(same, launcher="l2")
    busy = lp.on_acquire(current, current.name, other, holder_alive=True, now=NOW)
    assert not busy.granted
    assert "DEMO-1.development.1.work on l1" in busy.reason
    # and takes it over from a dead one.
    assert lp.on_acquire(current, current.name, other, holder_alive=False, now=NOW).granted


def test_a_merge_lease_stays_reentrant_per_task():
    other_job = msgspec.structs.replace(holder(), job_id="DEMO-1.deploy.1.merge", launcher="l9")
    assert lp.on_acquire(held(), "merge.demo", other_job, holder_alive=True, now=NOW).granted


def test_release_with_a_revision_frees_only_that_grant():
    assert lp.may_release(held(), "DEMO-1", revision=7, held=7)
    assert not lp.may_release(held(), "DEMO-1", revision=6, held=7)
    assert lp.may_release(held(), "DEMO-1", revision=0, held=7)


def test_a_protected_task_keeps_its_merge_lease_only_after_its_merge():
    kept = lp.merged_stages([("analysis", False), ("deploy-staging", True), ("deploy", False)])
    assert kept == frozenset({"deploy"})
    assert lp.release_on_stage("deploy", ended=False, kept=kept) == ""
    # A rework back to development frees the merge lease; an ended task frees all.
    assert lp.release_on_stage("development", ended=False, kept=kept) == "merge"
    assert lp.release_on_stage("done", ended=True, kept=kept) == "all"
    assert lp.merged_stages([("a", False)]) == frozenset()


# --- a release that was lost: the holder's run has finished -----------------------------


def run_holder(task: str = "DEMO-1", job: str = "analysis.1.work", attempt: int = 1) -> LeaseHolder:
    return msgspec.structs.replace(holder(task), job_id=f"{task}.{job}", attempt=attempt)


def transition_held(by: LeaseHolder) -> lp.Lease:
    return lp.Lease(name=lp.task_lease(by.task_id), holder=by, acquired_at=NOW, renewed_at=NOW)


def test_a_transition_lease_of_a_finished_run_is_freed_for_the_next_run_though_alive():
    current = transition_held(run_holder())
    nxt = run_holder(job="architecture.1.work")

    grant = lp.on_acquire(
        current, current.name, nxt, holder_alive=True, now=NOW, holder_finished=True
    )

    assert grant.granted
    assert grant.lease is not None
    assert grant.lease.holder == nxt
    assert grant.lost_release == current
    assert grant.reclaimed is None
    assert "finished holder DEMO-1.analysis.1.work" in grant.reason


def test_a_live_unfinished_holder_still_keeps_its_transition_lease():
    current = transition_held(run_holder())
    grant = lp.on_acquire(
        current, current.name, run_holder(job="x.1.work"), holder_alive=True, now=NOW
    )
    assert not grant.granted


def test_only_another_runs_transition_lease_naming_its_attempt_is_asked_about():
    current = transition_held(run_holder())
    assert lp.may_hold_finished(current, run_holder(job="architecture.1.work"))
    # Its own run again (re-entrance), an older holder without an attempt, a merge lease:
    assert not lp.may_hold_finished(current, run_holder())
    assert not lp.may_hold_finished(transition_held(run_holder(attempt=0)), run_holder(job="y"))
    assert not lp.may_hold_finished(held(), holder("DEMO-2"))
