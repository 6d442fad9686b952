"""LeaseKeeper: a merge lease's refusal says whether its holder is merging now."""

from __future__ import annotations

import msgspec

from actors import merge_wait_policy
from actors.launcher_policy import FINISHED, RUNNING
from actors.lease_policy import merge_lease
from bus.messages import LeaseAcquire, LeaseHolder, LeaseReply
from tests.actors.conftest import ActorUnderTest, StartActor
from tests.actors.test_lease_release import run_holder, store_run

LEASE = merge_lease("demo")


def _acquire(leases: ActorUnderTest, who: LeaseHolder) -> LeaseReply:
    reply: LeaseReply = leases.ref.ask(LeaseAcquire(name=LEASE, holder=who), timeout=10)
    return reply


def _other_task() -> LeaseHolder:
    waiter = run_holder("deploy-staging.1.merge", attempt=1)
    return msgspec.structs.replace(waiter, task_id="DEMO-2", job_id="DEMO-2.merge")


def test_a_merge_lease_held_by_a_running_merge_tells_the_asker_to_wait_for_it(
    start_actor: StartActor,
):
    # Given a merge run in progress holding the repository's merge lease
    leases = start_actor("lease_keeper")
    merging = run_holder("deploy-staging.1.merge")
    assert _acquire(leases, merging).granted
    store_run(leases, merging, RUNNING)

    # When another task's merge asks for it, the refusal says to wait in the run
    refused = _acquire(leases, _other_task())
    assert not refused.granted
    assert merge_wait_policy.waits_in_run(refused.reason)


def test_a_merge_lease_kept_past_its_run_tells_the_asker_to_defer(start_actor: StartActor):
    # Given a protected task's merge lease kept after its merge run finished
    leases = start_actor("lease_keeper")
    kept = run_holder("deploy-staging.1.merge")
    assert _acquire(leases, kept).granted
    store_run(leases, kept, FINISHED)

    # When another task's merge asks, the lease stays kept and the asker defers
    refused = _acquire(leases, _other_task())
    assert not refused.granted
    assert "held by DEMO-1" in refused.reason
    assert not merge_wait_policy.waits_in_run(refused.reason)


def test_a_merge_lease_whose_holder_names_no_run_is_not_waited_for(start_actor: StartActor):
    leases = start_actor("lease_keeper")
    assert _acquire(leases, run_holder("deploy-staging.1.merge", attempt=0)).granted
    refused = _acquire(leases, _other_task())
    assert not refused.granted
    assert not merge_wait_policy.waits_in_run(refused.reason)
