"""A merge step refused its lease waits in the run only for a merge going on now."""

from __future__ import annotations

from actors import merge_wait_policy as policy


def test_a_refusal_for_a_holder_merging_now_is_waited_for_in_the_run():
    reason = policy.refusal("held by DEMO-1 since 3s", merging=True)
    assert reason.startswith("held by DEMO-1 since 3s")
    assert policy.waits_in_run(reason)


def test_a_lease_kept_past_its_run_is_not_waited_for_in_the_run():
    # A protected repository's task keeps it through its deploy, whose jobs need the slots.
    reason = policy.refusal("held by DEMO-1 since 300s", merging=False)
    assert reason == "held by DEMO-1 since 300s"
    assert not policy.waits_in_run(reason)


def test_other_refusals_are_not_waited_for_in_the_run():
    assert not policy.waits_in_run("lease changed concurrently; retry")
    assert not policy.waits_in_run("lease keeper error: boom")
