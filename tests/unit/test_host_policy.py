"""Other hosts, judged by what they say and by their silence: pure, on a fake clock."""

from __future__ import annotations

import msgspec
import pytest

from actors import host_policy as hp
from actors import lease_policy as lp
from actors import reaper_policy as rp
from bus.messages import LeaseHolder
from conveyor.config import ReaperConfig

SILENCE = 10.0


def started(at: float = 100.0) -> hp.HostState:
    return hp.HostState(since=at)


def test_a_host_heard_recently_is_not_silent_and_one_heard_long_ago_is():
    state = hp.heard(started(), "h1", "boot-a", now=105.0)
    assert not hp.is_silent(state, "h1", now=114.9, silence_s=SILENCE)
    assert hp.is_silent(state, "h1", now=115.0, silence_s=SILENCE)
    assert hp.silence(state, "h1", now=115.0) == pytest.approx(10.0)


def test_a_host_never_heard_is_silent_only_a_full_silence_after_the_watcher_started():
    # A control process that just restarted has heard nobody yet: that proves nothing.
    state = started(at=100.0)
    assert not hp.is_silent(state, "h2", now=109.0, silence_s=SILENCE)
    assert hp.is_silent(state, "h2", now=110.0, silence_s=SILENCE)


def test_hearing_a_host_again_ends_its_silence():
    state = hp.heard(started(), "h1", "b", now=100.0)
    assert hp.is_silent(state, "h1", now=200.0, silence_s=SILENCE)
    state = hp.heard(state, "h1", "b", now=200.0)
    assert not hp.is_silent(state, "h1", now=201.0, silence_s=SILENCE)


def test_the_empty_host_is_never_silent():
    assert not hp.is_silent(started(), "", now=1e9, silence_s=SILENCE)


def test_a_silent_host_is_alerted_once_until_it_is_heard_again():
    state, first = hp.alert_due(started(), "h1")
    state, second = hp.alert_due(state, "h1")
    assert (first, second) == (True, False)
    state, other = hp.alert_due(state, "h2")
    assert other
    state = hp.heard(state, "h1", "b", now=150.0)
    state, again = hp.alert_due(state, "h1")
    assert again


@pytest.mark.parametrize(("said", "expected"), [("alive", True), ("dead", False)])
def test_a_holder_is_what_its_host_says_of_it(said: str, expected: bool):
    state = hp.heard(started(), "h1", "b", now=100.0)
    verdict = hp.holder_alive(state, "h1", "b", said, now=101.0, silence_s=SILENCE)
    assert verdict is expected


def test_an_uncertain_or_missing_answer_from_a_host_still_heard_counts_as_alive():
    state = hp.heard(started(), "h1", "b", now=100.0)
    for said in ("uncertain", None):
        assert hp.holder_alive(state, "h1", "b", said, now=105.0, silence_s=SILENCE) is None


def test_a_holder_on_a_silent_host_is_dead():
    state = hp.heard(started(), "h1", "b", now=100.0)
    assert hp.holder_alive(state, "h1", "b", None, now=110.0, silence_s=SILENCE) is False


def test_a_holder_under_another_boot_than_its_host_now_runs_is_dead():
    state = hp.heard(started(), "h1", "boot-new", now=100.0)
    assert hp.holder_alive(state, "h1", "boot-old", None, now=101.0, silence_s=SILENCE) is False
    # A holder that recorded no boot proves nothing.
    assert hp.holder_alive(state, "h1", "", None, now=101.0, silence_s=SILENCE) is None


def test_a_run_reports_its_exit_as_an_age_on_its_own_clock():
    assert hp.run_liveness("dead", (3, 90.0), now=100.0) == ("dead", 3, 10.0)
    assert hp.run_liveness("alive", None, now=100.0) == ("alive", None, None)
    # A recorded time in this host's future is no negative age.
    assert hp.run_liveness("dead", (0, 120.0), now=100.0) == ("dead", 0, 0.0)


# --- fencing: an attempt the job no longer runs ----------------------------------------------


@pytest.mark.parametrize(
    ("status", "attempts", "attempt", "current"),
    [
        ("running", 1, 1, True),
        ("running", 2, 1, False),  # reaped and retried: attempt 2 runs elsewhere
        ("queued", 1, 1, False),  # reaped, waiting for its retry
        ("failed", 2, 2, False),
        ("done", 1, 1, False),
        (None, 0, 1, True),  # unknown job: nothing proven
        ("running", 3, 0, True),  # holder from before attempts were recorded
    ],
)
def test_only_the_attempt_a_job_runs_now_is_current(
    status: str | None, attempts: int, attempt: int, current: bool
):
    assert lp.attempt_current(status, attempts, attempt, running="running") is current


def test_a_lease_held_by_a_superseded_attempt_is_freed_for_the_asker_even_if_alive():
    old = LeaseHolder(
        task_id="T",
        job_id="T.dev.1.work",
        launcher="la",
        host="a",
        pid=1,
        create_time=1.0,
        boot_id="b",
        attempt=1,
    )
    new = msgspec.structs.replace(old, launcher="lb", host="b", attempt=2)
    current = lp.Lease(name=lp.task_lease("T"), holder=old, acquired_at=0.0, renewed_at=0.0)
    kept = lp.on_acquire(current, current.name, new, holder_alive=True, now=5.0)
    assert not kept.granted
    freed = lp.on_acquire(
        current, current.name, new, holder_alive=True, now=5.0, holder_superseded=True
    )
    assert freed.granted
    assert freed.lease is not None
    assert freed.lease.holder.attempt == 2
    assert "superseded attempt 1" in freed.reason


def test_a_superseded_refusal_is_recognisable_as_final():
    assert lp.superseded_reason("T.dev.1.work", 1).startswith(lp.SUPERSEDED)


# --- the Reaper over a silent host's jobs -----------------------------------------------------


def test_a_job_on_a_silent_host_is_reaped_as_dead_after_dead_ticks_and_says_why():
    cfg = ReaperConfig(dead_ticks=2, heartbeat_timeout_s=1.0)
    job = rp.RunningJob(
        job_id="T.dev.1.work",
        attempt=1,
        repo="demo",
        role="developer",
        claimed_at=0.0,
        pid=4242,
        liveness=rp.DEAD,
        evidence="host h1 silent for 12s",
    )
    first = rp.decide(rp.ReaperState(), [job], now=50.0, cfg=cfg)
    assert first.reaps == ()
    second = rp.decide(first.state, [job], now=52.0, cfg=cfg)
    assert [r.tier for r in second.reaps] == [rp.TIER_DEAD]
    assert "host h1 silent for 12s" in second.reaps[0].reason


def test_a_silent_host_job_with_a_live_finalizer_waits():
    cfg = ReaperConfig(dead_ticks=1, heartbeat_timeout_s=5.0)
    job = rp.RunningJob(
        job_id="j",
        attempt=1,
        repo="demo",
        role="developer",
        claimed_at=0.0,
        liveness=rp.DEAD,
        last_heartbeat_at=48.0,
    )
    assert rp.decide(rp.ReaperState(), [job], now=50.0, cfg=cfg).reaps == ()
    later = msgspec.structs.replace(job, last_heartbeat_at=40.0)
    assert len(rp.decide(rp.ReaperState(), [later], now=50.0, cfg=cfg).reaps) == 1
