"""Reaper decisions: the three tiers, streaks, grace, live finalizers, backstop, kill-switch.

Ports the reference reaper's acceptance cases (TC-01 ... TC-09, grace, kill-switch)
to a pure policy: each test drives `decide` tick by tick with an explicit `now`.
"""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import reaper_policy as rp
from bus.messages import JobReaped
from conveyor.config import ReaperConfig

CFG = ReaperConfig(
    enabled=True,
    interval_s=2.0,
    dead_ticks=2,
    finalize_grace_s=300.0,
    heartbeat_timeout_s=15.0,
    max_running_s=3600.0,
)
NOW = 100_000.0
TICK = CFG.interval_s


def running(
    job_id: str = "j1",
    *,
    attempt: int = 1,
    age: float | None = 60.0,
    pid: int | None = 123,
    liveness: str = rp.ALIVE,
    exit_code: int | None = None,
    exit_age: float | None = None,
    heartbeat_age: float | None = None,
    now: float = NOW,
) -> rp.RunningJob:
    """A running job snapshot; ages are seconds before `now` (None = unknown)."""
    return rp.RunningJob(
        job_id=job_id,
        attempt=attempt,
        repo="demo",
        role="developer",
        claimed_at=None if age is None else now - age,
        pid=pid,
        liveness=liveness,
        exit_code=exit_code,
        exit_recorded_at=None if exit_age is None else now - exit_age,
        last_heartbeat_at=None if heartbeat_age is None else now - heartbeat_age,
    )


def confirmed(state: rp.ReaperState, reaps: tuple[rp.Reap, ...], now: float) -> rp.ReaperState:
    """The state once the QueueWorker applied every reap (each came back as `JobReaped`)."""
    for reap in reaps:
        state = rp.applied(state, JobReaped(**msgspec.structs.asdict(reap)), now=now)
    return state


def ticks(
    snapshots: list[list[rp.RunningJob]],
    *,
    cfg: ReaperConfig = CFG,
    state: rp.ReaperState | None = None,
) -> list[rp.Decision]:
    """Feed one snapshot per tick, `interval_s` apart, threading the state through.

    Every reap is applied by the QueueWorker before the next tick (no lost race).
    """
    current = rp.ReaperState() if state is None else state
    decisions = []
    for i, jobs in enumerate(snapshots):
        now = NOW + i * TICK
        d = rp.decide(current, jobs, now=now, cfg=cfg)
        d = msgspec.structs.replace(d, state=confirmed(d.state, d.reaps, now))
        decisions.append(d)
        current = d.state
    return decisions


def cfg(**changes: object) -> ReaperConfig:
    return msgspec.structs.replace(CFG, **changes)


# --- tier 1: dead pid on consecutive ticks -----------------------------------------------------


def test_a_dead_pid_is_reaped_on_the_second_consecutive_dead_tick():
    # Given a running job whose pid is gone, and dead_ticks 2 (TC-01)
    job = running(liveness=rp.DEAD, pid=4242)
    # When the reaper ticks twice
    first, second = ticks([[job], [job]])
    # Then the first tick only counts, the second asks for the reap with an unknown outcome
    assert first.reaps == ()
    assert first.state.streaks == {"j1": 1}
    assert first.state.reaped_total == 0
    (reap,) = second.reaps
    assert reap == rp.Reap(
        job_id="j1", attempt=1, tier=1, exit_code=None, reason="dead pid=4242 for 2 ticks"
    )
    assert second.state.reaped_total == 1
    assert second.state.streaks == {}
    assert second.state.last_reaped == {
        "job_id": "j1",
        "attempt": 1,
        "tier": 1,
        "reason": "dead pid=4242 for 2 ticks",
        "at": NOW + TICK,
    }


@pytest.mark.parametrize("dead_ticks", [1, 0, -3])
def test_a_dead_pid_is_reaped_on_the_first_tick_when_dead_ticks_is_one_or_less(dead_ticks: int):
    # Given a zombie at concurrency 1 with dead_ticks 1 (TC-09); 0 and below mean 1
    (d,) = ticks([[running(liveness=rp.DEAD)]], cfg=cfg(dead_ticks=dead_ticks))
    # Then one tick frees the slot
    assert [(r.job_id, r.tier) for r in d.reaps] == [("j1", 1)]
    assert d.reaps[0].reason == "dead pid=123 for 1 tick"


def test_an_alive_pid_within_the_ceiling_is_never_reaped():
    # Given a live agent running 1800 s under a 3600 s ceiling (TC-02)
    job = running(liveness=rp.ALIVE, age=1800.0)
    # When the reaper ticks five times
    decisions = ticks([[job]] * 5)
    # Then nothing is reaped and no streak starts
    assert all(d.reaps == () for d in decisions)
    assert decisions[-1].state.reaped_total == 0
    assert decisions[-1].state.streaks == {}


def test_only_consecutive_dead_ticks_count():
    # Given dead_ticks 3 and the liveness sequence dead, dead, alive, dead, dead, dead (TC-03)
    sequence = [rp.DEAD, rp.DEAD, rp.ALIVE, rp.DEAD, rp.DEAD, rp.DEAD]
    snapshots = [[running(liveness=alive)] for alive in sequence]
    # When the reaper ticks through it
    decisions = ticks(snapshots, cfg=cfg(dead_ticks=3))
    # Then the alive tick breaks the streak and the job is reaped only on tick 6
    assert [len(d.reaps) for d in decisions] == [0, 0, 0, 0, 0, 1]
    assert [d.state.streaks.get("j1", 0) for d in decisions] == [1, 2, 0, 1, 2, 0]
    assert decisions[-1].reaps[0].reason == "dead pid=123 for 3 ticks"


def test_unknown_liveness_never_triggers_tier_one():
    # Given a job on another host: its pid cannot be probed here
    job = running(liveness=rp.UNKNOWN, pid=None, age=10.0)
    # When the reaper ticks many times within the ceiling
    decisions = ticks([[job]] * 20, cfg=cfg(dead_ticks=1))
    # Then no streak starts and nothing is reaped (only the backstop covers it)
    assert all(d.reaps == () and d.state.streaks == {} for d in decisions)


def test_a_liveness_the_policy_does_not_know_is_not_dead():
    (d,) = ticks([[running(liveness="zombie")]], cfg=cfg(dead_ticks=1))
    assert d.reaps == ()
    assert d.state.streaks == {}


# --- live finalizer ----------------------------------------------------------------------------


def test_a_dead_pid_with_a_live_finalizer_is_not_reaped_by_tier_one():
    # Given the agent exited without a recorded code while its launcher still finalizes
    # (the reference's "reaper racing a finalizing launcher" incident)
    finalizing = running(liveness=rp.DEAD, heartbeat_age=3.0)
    # When the reaper ticks while the launcher keeps heartbeating
    decisions = ticks([[finalizing]] * 6, cfg=cfg(dead_ticks=2))
    # Then the job is left to its finalizer and no dead streak builds up
    assert all(d.reaps == () and d.state.streaks == {} for d in decisions)
    assert decisions[-1].state.deferred_total == 0


def test_a_dead_pid_is_reaped_once_the_finalizer_stops_heartbeating_for_dead_ticks():
    # Given a finalizing launcher that then dies (its heartbeat goes stale)
    live = running(liveness=rp.DEAD, heartbeat_age=1.0)
    stale = running(liveness=rp.DEAD, heartbeat_age=CFG.heartbeat_timeout_s + 1)
    # When the reaper ticks: live, stale, stale
    decisions = ticks([[live], [stale], [stale]])
    # Then the streak only starts once the heartbeat is stale, and needs dead_ticks ticks
    assert [len(d.reaps) for d in decisions] == [0, 0, 1]
    assert decisions[-1].reaps[0].tier == 1


def test_a_heartbeat_exactly_as_old_as_the_timeout_is_no_live_finalizer():
    job = running(exit_code=0, exit_age=600.0, heartbeat_age=CFG.heartbeat_timeout_s)
    (d,) = ticks([[job]])
    assert [(r.tier, r.exit_code) for r in d.reaps] == [(2, 0)]


# --- tier 2: exit code recorded ----------------------------------------------------------------


def test_an_exit_code_within_the_grace_is_left_alone():
    # Given exit code 0 recorded 5 s ago with a 300 s grace (TC-05b)
    job = running(exit_code=0, exit_age=5.0, liveness=rp.DEAD)
    # When the reaper ticks
    (d,) = ticks([[job]], cfg=cfg(dead_ticks=1))
    # Then the launcher may still be finalizing: nothing is reaped, no dead streak starts
    assert d.reaps == ()
    assert d.state.streaks == {}
    assert d.state.deferred_total == 0


@pytest.mark.parametrize("code", [0, 1, 137, -9])
def test_an_exit_code_past_the_grace_is_reaped_with_that_code(code: int):
    # Given an exit code recorded 600 s ago and no launcher heartbeating (TC-05b)
    job = running(exit_code=code, exit_age=600.0, liveness=rp.DEAD, heartbeat_age=None)
    # When the reaper ticks
    (d,) = ticks([[job]])
    # Then the QueueWorker is asked to finish the attempt with the known code
    assert d.reaps == (
        rp.Reap(
            job_id="j1",
            attempt=1,
            tier=2,
            exit_code=code,
            reason=f"exit code {code} recorded 600s ago, no live finalizer",
        ),
    )
    assert d.state.reaped_total == 1


def test_an_exit_code_exactly_at_the_grace_is_reaped():
    (d,) = ticks([[running(exit_code=0, exit_age=CFG.finalize_grace_s)]])
    assert [r.tier for r in d.reaps] == [2]


def test_an_exit_code_recorded_at_an_unknown_time_counts_as_past_the_grace():
    (d,) = ticks([[running(exit_code=0, exit_age=None)]])
    assert [(r.tier, r.exit_code) for r in d.reaps] == [(2, 0)]
    assert d.reaps[0].reason == "exit code 0 recorded at an unknown time, no live finalizer"


def test_a_live_finalizer_defers_tier_two_and_counts_the_deferral():
    # Given exit code 0 recorded 600 s ago while the launcher is still pushing (heartbeat 2 s)
    job = running(exit_code=0, exit_age=600.0, heartbeat_age=2.0, age=1000.0)
    # When the reaper ticks three times
    decisions = ticks([[job]] * 3)
    # Then nothing is reaped and each tick counts one deferral
    assert all(d.reaps == () for d in decisions)
    assert [d.state.deferred_total for d in decisions] == [1, 2, 3]
    assert "live finalizer deferred j1" in decisions[0].reason


def test_the_backstop_reaps_past_the_ceiling_even_with_a_live_finalizer():
    # Given a finalizer that heartbeats forever on a job claimed 7300 s ago
    job = running(exit_code=0, exit_age=600.0, heartbeat_age=1.0, age=7300.0)
    # When the reaper ticks with a 7200 s ceiling
    (d,) = ticks([[job]], cfg=cfg(max_running_s=7200.0))
    # Then the deferral is counted, yet tier 3 bounds the stuck finalizer
    assert d.state.deferred_total == 1
    (reap,) = d.reaps
    assert (reap.tier, reap.exit_code) == (3, None)
    assert reap.reason.startswith("backstop: running 7300s")
    assert "finalizer heartbeat 1s ago ignored" in reap.reason


def test_a_recorded_exit_code_resets_the_dead_streak():
    # Given a dead pid counted once, then the wrapper's exit code shows up (within grace)
    dead = running(liveness=rp.DEAD)
    exited = running(liveness=rp.DEAD, exit_code=0, exit_age=1.0)
    # When the reaper ticks
    decisions = ticks([[dead], [exited], [exited]], cfg=cfg(dead_ticks=2))
    # Then tier 2 owns the job: the streak is gone and tier 1 never fires
    assert [d.state.streaks for d in decisions] == [{"j1": 1}, {}, {}]
    assert all(d.reaps == () for d in decisions)


def test_an_exit_code_that_is_not_an_integer_is_treated_as_absent():
    job = msgspec.structs.replace(running(liveness=rp.DEAD), exit_code="0")  # type: ignore[arg-type]
    (d,) = ticks([[job]], cfg=cfg(dead_ticks=1))
    assert [(r.tier, r.exit_code) for r in d.reaps] == [(1, None)]


# --- tier 3: backstop --------------------------------------------------------------------------


def test_the_backstop_reaps_an_alive_job_past_the_ceiling():
    # Given an alive pid claimed 500 s ago under a 100 s ceiling (TC-04)
    (d,) = ticks([[running(liveness=rp.ALIVE, age=500.0)]], cfg=cfg(max_running_s=100.0))
    # Then tier 3 reaps it regardless of liveness, outcome unknown
    (reap,) = d.reaps
    assert (reap.tier, reap.exit_code) == (3, None)
    assert reap.reason == "backstop: running 500s (ceiling 100s), pid=123 alive"


@pytest.mark.parametrize(
    ("job", "evidence"),
    [
        (running(pid=None, liveness=rp.UNKNOWN, age=500.0), "running 500s"),
        (running(pid=None, liveness=rp.UNKNOWN, age=None), "claim time unknown"),
        (running(pid=77, liveness=rp.ALIVE, age=None, heartbeat_age=1.0), "claim time unknown"),
    ],
    ids=["no-pid", "no-pid-no-claim-time", "alive-no-claim-time"],
)
def test_the_backstop_covers_a_job_with_no_pid_or_no_claim_time(job: rp.RunningJob, evidence: str):
    (d,) = ticks([[job]], cfg=cfg(max_running_s=100.0))
    (reap,) = d.reaps
    assert reap.tier == 3
    assert evidence in reap.reason


def test_the_backstop_reaps_a_job_whose_exit_code_is_still_within_the_grace():
    job = running(exit_code=0, exit_age=5.0, age=5000.0)
    (d,) = ticks([[job]])
    assert [(r.tier, r.exit_code) for r in d.reaps] == [(3, None)]


def test_a_job_exactly_at_the_ceiling_is_reaped_and_one_second_younger_is_not():
    at, under = running("at", age=3600.0), running("under", age=3599.0)
    (d,) = ticks([[at, under]])
    assert [r.job_id for r in d.reaps] == ["at"]


def test_a_dead_job_past_the_ceiling_is_reaped_once_by_the_first_tier_that_fires():
    job = running(liveness=rp.DEAD, age=99_999.0)
    (d,) = ticks([[job]], cfg=cfg(dead_ticks=1))
    assert [r.tier for r in d.reaps] == [1]
    assert d.state.reaped_total == 1


# --- kill-switch -------------------------------------------------------------------------------


def test_the_kill_switch_reaps_nothing_and_only_stamps_the_run_time():
    # Given a state with counters and a streak, and jobs every tier would reap (TC-07)
    before = rp.ReaperState(
        streaks={"j1": 1},
        reaped_total=4,
        deferred_total=2,
        last_reaped={"job_id": "old", "attempt": 1, "tier": 1, "reason": "r", "at": 1.0},
        last_run_ts=NOW - 2,
    )
    jobs = [
        running("j1", liveness=rp.DEAD, age=99_999.0),
        running("j2", exit_code=0, exit_age=99_999.0),
        running("j3", age=None, pid=None),
    ]
    # When the reaper ticks with the switch off
    d = rp.decide(before, jobs, now=NOW, cfg=cfg(enabled=False, dead_ticks=1))
    # Then nothing is reaped, streaks are cleared and only last_run_ts moves
    assert d.reaps == ()
    assert d.state == msgspec.structs.replace(before, streaks={}, last_run_ts=NOW)
    assert "disabled" in d.reason


def test_a_reaper_switched_back_on_starts_its_streaks_afresh():
    dead = running(liveness=rp.DEAD)
    first = rp.decide(rp.ReaperState(), [dead], now=NOW, cfg=CFG)
    off = rp.decide(first.state, [dead], now=NOW + 2, cfg=cfg(enabled=False))
    on = rp.decide(off.state, [dead], now=NOW + 4, cfg=CFG)
    assert first.state.streaks == {"j1": 1}
    assert on.reaps == ()
    assert on.state.streaks == {"j1": 1}


# --- several jobs, vanished jobs, odd input ------------------------------------------------------


def test_several_jobs_in_one_tick_are_judged_independently():
    # Given four jobs: dead (streak 1 already), alive, exited past grace, past the ceiling
    state = rp.ReaperState(streaks={"dead": 1})
    jobs = [
        running("dead", liveness=rp.DEAD, pid=11),
        running("alive", liveness=rp.ALIVE, pid=12),
        running("exited", attempt=2, exit_code=3, exit_age=400.0),
        running("old", age=4000.0, liveness=rp.ALIVE),
    ]
    # When the reaper ticks once
    d = rp.decide(state, jobs, now=NOW, cfg=CFG)
    # Then each job gets its own tier and the counters add up
    assert [(r.job_id, r.attempt, r.tier, r.exit_code) for r in d.reaps] == [
        ("dead", 1, 1, None),
        ("exited", 2, 2, 3),
        ("old", 1, 3, None),
    ]
    assert d.state.requested_total == 3
    done = confirmed(d.state, d.reaps, NOW)
    assert done.reaped_total == 3
    assert done.last_reaped is not None
    assert done.last_reaped["job_id"] == "old"
    assert d.state.streaks == {}
    assert d.reason.startswith("4 running; reaped dead attempt 1 (tier 1: dead pid=11 for 2 ticks)")


def test_streaks_of_jobs_that_left_the_snapshot_are_dropped():
    # Given two dead jobs counted once each
    a, b = running("a", liveness=rp.DEAD), running("b", liveness=rp.DEAD)
    first, second, third = ticks([[a, b], [a], [a, b]], cfg=cfg(dead_ticks=3))
    assert first.state.streaks == {"a": 1, "b": 1}
    # When "b" is not running at the next tick (finished normally), then shows up again
    # Then its streak was forgotten, so it starts again from one
    assert second.state.streaks == {"a": 2}
    assert third.state.streaks == {"b": 1}
    assert [r.job_id for r in third.reaps] == ["a"]


def test_a_malformed_snapshot_does_not_affect_the_other_jobs():
    # Given a tick with broken snapshots next to one dead job
    good = running("good", liveness=rp.DEAD)
    broken = [
        msgspec.structs.replace(running("x"), job_id=None),  # type: ignore[arg-type]
        msgspec.structs.replace(running("y"), attempt="1"),  # type: ignore[arg-type]
        msgspec.structs.replace(running("z"), job_id=""),
        None,
        {"job_id": "dict"},
        msgspec.structs.replace(
            running("nan", liveness=rp.DEAD),
            claimed_at=math.nan,
            exit_recorded_at=math.inf,
            last_heartbeat_at=math.nan,
            pid=-1,
        ),
    ]
    # When the reaper ticks
    d = rp.decide(rp.ReaperState(), [*broken, good], now=NOW, cfg=cfg(dead_ticks=1))  # type: ignore[list-item]
    # Then the good job is reaped as usual; unusable ones are skipped, NaN times are unknown
    assert [(r.job_id, r.tier) for r in d.reaps] == [("nan", 1), ("good", 1)]
    assert "5 malformed or repeated snapshot(s) skipped" in d.reason


def test_unknown_times_count_as_old_and_a_nan_heartbeat_is_no_live_finalizer():
    job = msgspec.structs.replace(
        running(exit_code=0),
        exit_recorded_at=math.nan,
        last_heartbeat_at=math.nan,
        claimed_at=10**400,  # type: ignore[arg-type]
    )
    (d,) = ticks([[job]])
    assert [(r.tier, r.exit_code) for r in d.reaps] == [(2, 0)]


def test_a_repeated_job_id_is_judged_once_per_tick():
    # Given the same job twice in one snapshot, both past the ceiling
    job = running(age=9000.0)
    d = rp.decide(
        rp.ReaperState(), [job, msgspec.structs.replace(job, attempt=2)], now=NOW, cfg=CFG
    )
    # Then it is reaped once, for the first snapshot's attempt
    assert [(r.job_id, r.attempt) for r in d.reaps] == [("j1", 1)]
    assert d.state.requested_total == 1


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_a_time_that_is_not_finite_decides_nothing(now: float):
    state = rp.ReaperState(streaks={"j1": 1}, last_run_ts=5.0)
    d = rp.decide(state, [running(liveness=rp.DEAD, age=None)], now=now, cfg=CFG)
    assert d.reaps == ()
    assert d.state == state


def test_no_running_jobs_only_stamps_the_run_time():
    d = rp.decide(rp.ReaperState(streaks={"gone": 1}), [], now=NOW, cfg=CFG)
    assert d.state == rp.ReaperState(last_run_ts=NOW)
    assert d.reason == "0 running; nothing reaped"


def test_decide_never_changes_the_state_it_is_given():
    state = rp.ReaperState(streaks={"j1": 1}, last_reaped={"job_id": "old"})
    snapshot = msgspec.json.encode(state)
    rp.decide(state, [running(liveness=rp.DEAD)], now=NOW, cfg=CFG)
    assert msgspec.json.encode(state) == snapshot


# --- status and persistence --------------------------------------------------------------------


def test_reaper_status_reports_the_switch_the_counters_and_the_streak_count():
    # Given a tick reaping "b" by the backstop, then one reaping "a" and counting "c"
    a, b, c = (running(job_id, liveness=rp.DEAD) for job_id in "abc")
    b = msgspec.structs.replace(b, claimed_at=None)
    (_, d) = ticks([[a, b], [a, c]])
    # When the status is asked for
    status = rp.reaper_status(d.state, CFG)
    # Then it shows the switch, the figures, the last reap and how many streaks run
    assert status == {
        "enabled": True,
        "interval_s": 2.0,
        "interval": 2.0,
        "last_run_ts": NOW + TICK,
        "reaped_total": 2,
        "requested_total": 2,
        "deferred_total": 0,
        "last_reaped": {
            "job_id": "a",
            "attempt": 1,
            "tier": 1,
            "reason": "dead pid=123 for 2 ticks",
            "at": NOW + TICK,
        },
        "streaks": 1,
        "last_error": "",
    }
    assert status["last_reaped"] is not d.state.last_reaped
    msgspec.json.encode(status)


def test_the_state_survives_a_json_round_trip():
    (_, d) = ticks([[running(liveness=rp.DEAD), running("k", liveness=rp.DEAD)]] * 2)
    assert msgspec.json.decode(msgspec.json.encode(d.state), type=rp.ReaperState) == d.state
    for reap in d.reaps:
        assert msgspec.json.decode(msgspec.json.encode(reap), type=rp.Reap) == reap


# --- properties --------------------------------------------------------------------------------

IDS = st.sampled_from(["a", "b", "c", "d"])
RECENT = st.builds(lambda ago: NOW - ago, st.floats(min_value=-100.0, max_value=10_000.0))
# Mostly plausible times (so streaks and deferrals happen), sometimes missing or absurd ones.
ODD_TIMES = st.one_of(RECENT, RECENT, RECENT, st.none(), st.floats())
LIVENESS = st.sampled_from([rp.ALIVE, rp.DEAD, rp.UNKNOWN, "", "DEAD"])

snapshots = st.builds(
    rp.RunningJob,
    job_id=IDS,
    attempt=st.integers(min_value=0, max_value=3),
    repo=st.just("demo"),
    role=st.just("developer"),
    claimed_at=ODD_TIMES,
    pid=st.one_of(st.none(), st.integers(min_value=-1, max_value=2**22)),
    liveness=LIVENESS,
    exit_code=st.one_of(st.none(), st.none(), st.integers(min_value=-255, max_value=255)),
    exit_recorded_at=ODD_TIMES,
    last_heartbeat_at=ODD_TIMES,
)
configs = st.builds(
    ReaperConfig,
    enabled=st.booleans(),
    dead_ticks=st.integers(min_value=-1, max_value=4),
    finalize_grace_s=st.one_of(st.just(300.0), st.floats(min_value=0.0, max_value=1_000.0)),
    heartbeat_timeout_s=st.one_of(st.just(15.0), st.floats(min_value=0.0, max_value=60.0)),
    max_running_s=st.one_of(st.just(1e9), st.floats(min_value=0.0, max_value=10_000.0)),
)
states = st.builds(
    rp.ReaperState,
    streaks=st.dictionaries(st.sampled_from(["a", "b", "x", "y"]), st.integers(1, 5)),
    reaped_total=st.integers(min_value=0, max_value=1_000),
    deferred_total=st.integers(min_value=0, max_value=1_000),
)


def _protected(job: rp.RunningJob, now: float, config: ReaperConfig) -> bool:
    """A healthy run: alive pid, fresh heartbeat, under the ceiling, no exit code."""
    hb, claimed = job.last_heartbeat_at, job.claimed_at
    return (
        job.liveness == rp.ALIVE
        and job.exit_code is None
        and hb is not None
        and math.isfinite(hb)
        and now - hb < config.heartbeat_timeout_s
        and claimed is not None
        and math.isfinite(claimed)
        and now - claimed < config.max_running_s
    )


@settings(max_examples=400, deadline=None)
@given(
    state=states,
    jobs=st.lists(snapshots, max_size=8),
    now=st.one_of(st.just(NOW), st.floats(min_value=-1e12, max_value=1e12)),
    config=configs,
)
def test_decide_keeps_its_invariants_for_any_snapshot(
    state: rp.ReaperState, jobs: list[rp.RunningJob], now: float, config: ReaperConfig
):
    d = rp.decide(state, jobs, now=now, cfg=config)
    first = {}
    for job in jobs:
        first.setdefault(job.job_id, job)
    reaped = [r.job_id for r in d.reaps]
    # Each job at most once, and only jobs of this snapshot, for the attempt it showed
    assert len(reaped) == len(set(reaped))
    for reap in d.reaps:
        job = first[reap.job_id]
        assert reap.attempt == job.attempt
        assert reap.tier in (1, 2, 3)
        assert reap.exit_code == (job.exit_code if reap.tier == 2 else None)
        assert reap.reason
        assert not _protected(job, now, config)
    # Counters move by exactly what happened
    assert d.state.requested_total == state.requested_total + len(d.reaps)
    # and only the QueueWorker's confirmations count as reaped
    assert d.state.reaped_total == state.reaped_total
    assert d.state.deferred_total >= state.deferred_total
    assert d.state.last_run_ts == now
    # Streaks: only running jobs, never a reaped one, always short of the threshold
    assert set(d.state.streaks) <= set(first) - set(reaped)
    assert all(1 <= n < max(config.dead_ticks, 1) for n in d.state.streaks.values())
    if not config.enabled:
        assert d.reaps == ()
        assert d.state.streaks == {}
    # Deterministic: the same input gives the same decision
    assert rp.decide(state, jobs, now=now, cfg=config) == d


@settings(max_examples=200, deadline=None)
@given(
    dead_ticks=st.integers(min_value=1, max_value=4),
    observations=st.lists(
        st.tuples(st.sampled_from([rp.ALIVE, rp.DEAD, rp.UNKNOWN]), st.booleans()),
        max_size=15,
    ),
)
def test_tier_one_reaps_exactly_when_the_consecutive_dead_ticks_reach_the_threshold(
    dead_ticks: int, observations: list[tuple[str, bool]]
):
    # A model of tier 1: dead without a live finalizer counts, anything else resets
    config = cfg(dead_ticks=dead_ticks)
    state, streak = rp.ReaperState(), 0
    for i, (liveness, heartbeating) in enumerate(observations):
        now = NOW + i * TICK
        job = running(liveness=liveness, heartbeat_age=1.0 if heartbeating else None, now=now)
        d = rp.decide(state, [job], now=now, cfg=config)
        streak = streak + 1 if liveness == rp.DEAD and not heartbeating else 0
        expected = streak >= dead_ticks
        assert bool(d.reaps) == expected
        if expected:
            streak = 0
        assert d.state.streaks.get("j1", 0) == streak
        state = d.state


# --- honest counts: only reaps the QueueWorker applied ---------------------------------------


def test_a_requested_reap_counts_as_reaped_only_once_the_queue_worker_applied_it():
    # Given a tick that asks for two reaps
    jobs = [running("won", liveness=rp.DEAD), running("lost", age=9000.0)]
    d = rp.decide(rp.ReaperState(streaks={"won": 1}), jobs, now=NOW, cfg=CFG)
    assert [r.job_id for r in d.reaps] == ["won", "lost"]
    # Then asking counts as a request, not as a reap
    assert (d.state.requested_total, d.state.reaped_total, d.state.last_reaped) == (2, 0, None)

    # When only "won" comes back applied ("lost" lost the race to a late finisher)
    won = next(r for r in d.reaps if r.job_id == "won")
    after = rp.applied(d.state, JobReaped(**msgspec.structs.asdict(won)), now=NOW + 1)

    # Then one reap is counted, and the last one is the applied one
    assert (after.requested_total, after.reaped_total) == (2, 1)
    assert after.last_reaped == {
        "job_id": "won",
        "attempt": 1,
        "tier": 1,
        "reason": "dead pid=123 for 2 ticks",
        "at": NOW + 1,
    }


def test_a_pass_without_verdict_stamps_the_time_keeps_the_streaks_and_says_why():
    state = rp.ReaperState(streaks={"j1": 1}, reaped_total=3, last_run_ts=5.0)

    blind = rp.without_verdict(state, now=NOW, error="Timeout: no answer")

    assert blind == msgspec.structs.replace(state, last_run_ts=NOW, last_error="Timeout: no answer")
    assert rp.reaper_status(blind, CFG)["last_error"] == "Timeout: no answer"
    # The next pass that lists the jobs clears the error
    d = rp.decide(blind, [], now=NOW + TICK, cfg=CFG)
    assert (d.state.last_run_ts, d.state.last_error) == (NOW + TICK, "")


def test_the_status_names_the_interval_both_ways():
    status = rp.reaper_status(rp.ReaperState(), cfg(interval_s=7.5))
    assert (status["interval_s"], status["interval"]) == (7.5, 7.5)
