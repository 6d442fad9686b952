"""The supervisor's decisions: back-off, one alert per stop, giving up on a fence fight."""

from __future__ import annotations

from actors.owner import Stopped
from conveyor.app import supervisor as sup
from conveyor.clock import FakeClock
from conveyor.config import SupervisorConfig

CFG = SupervisorConfig(restart_base_s=1.0, restart_max_s=8.0, stable_s=60.0)
FAILED = Stopped("failed: RuntimeError('boom')")
FENCED = Stopped("fenced: conveyor_tasks/DEMO-1 moved past revision 3", fenced=True)


def _storm(clock: FakeClock, life: sup.Life, stopped: Stopped, deaths: int) -> list[str]:
    """Die right after each restart `deaths` times; the alert texts, one per death."""
    texts = []
    for _ in range(deaths):
        clock.advance(0.5)
        life, text = sup.went_down(life, clock.now(), stopped, CFG)
        texts.append(text)
        if life.given_up:
            break
        clock.advance(life.next_try_at - clock.now())
        assert sup.due(life, clock.now())
        life = sup.restarted(life, clock.now())
    return texts


def test_a_stopped_actor_is_down_with_why_since_when_and_alerted_once():
    clock = FakeClock()
    life = sup.born("reaper", clock.now())
    clock.advance(100)
    down, text = sup.went_down(life, clock.now(), FAILED, CFG)
    assert "reaper" in text
    assert "RuntimeError" in text
    assert sup.health(down) == {
        "healthy": False,
        "down": True,
        "reason": FAILED.reason,
        "since": clock.now(),
        "restarts": 0,
        "restarting": True,
        "next_restart_at": clock.now() + 1.0,
    }
    assert sup.problem({"reaper": down, "stage_engine": sup.born("stage_engine", 0.0)}) == (
        "actor(s) down: reaper"
    )
    assert not sup.due(down, clock.now() + 0.99)
    assert sup.due(down, clock.now() + 1.0)
    up = sup.restarted(down, clock.now() + 1.0)
    assert sup.health(up) == {"healthy": True, "up_since": clock.now() + 1.0, "restarts": 1}
    assert sup.problem({"reaper": up}) == ""


def test_a_restart_storm_backs_off_to_the_cap_and_alerts_only_once():
    clock = FakeClock()
    start = clock.now()
    life = sup.born("reaper", start)
    texts = _storm(clock, life, FAILED, 6)
    assert [bool(t) for t in texts] == [True, False, False, False, False, False]
    # The waits: 1, 2, 4, 8, 8, 8 (capped), seen as the clock's progress.
    assert clock.now() - start == 6 * 0.5 + 1 + 2 + 4 + 8 + 8 + 8


def test_after_a_stable_period_a_new_stop_alerts_again_and_backs_off_from_the_start():
    clock = FakeClock()
    life = sup.born("reaper", clock.now())
    for _ in range(3):
        clock.advance(0.5)
        life, _text = sup.went_down(life, clock.now(), FAILED, CFG)
        life = sup.restarted(life, life.next_try_at)
    clock.advance(CFG.stable_s + 100)
    down, text = sup.went_down(life, clock.now(), FAILED, CFG)
    assert text
    assert down.next_try_at == clock.now() + CFG.restart_base_s
    assert down.restarts == 3


def test_a_failed_restart_backs_off_further_and_keeps_the_actor_down():
    down, _ = sup.went_down(sup.born("launcher", 0.0), 10.0, FAILED, CFG)
    failed = sup.restart_failed(down, 11.0, "restart failed: BusUnavailable()", CFG)
    assert not failed.up
    assert failed.reason == "restart failed: BusUnavailable()"
    assert failed.next_try_at == 11.0 + 2.0
    assert not sup.due(failed, 12.0)
    assert sup.due(failed, 13.0)


def test_a_fenced_actor_is_restarted_until_the_fences_repeat_then_stays_down_alerting():
    clock = FakeClock()
    life = sup.born("stage_engine", clock.now())
    texts = _storm(clock, life, FENCED, 10)
    # Restarted after the first and second fence (max_fenced_restarts = 2), down after the third.
    assert len(texts) == 3
    assert texts[0]
    assert not texts[1]
    assert "stays down" in texts[2]
    assert "another process" in texts[2]


def test_a_fence_after_a_stable_period_starts_the_count_again():
    life = sup.born("stage_engine", 0.0)
    life, _ = sup.went_down(life, 1.0, FENCED, CFG)
    life = sup.restarted(life, 2.0)
    life, _ = sup.went_down(life, 3.0, FENCED, CFG)
    life = sup.restarted(life, 5.0)
    life, text = sup.went_down(life, 5.0 + CFG.stable_s, FENCED, CFG)
    assert life.fenced_streak == 1
    assert not life.given_up
    assert "restarting" in text


def test_a_failure_between_fences_ends_the_fence_streak():
    life = sup.born("stage_engine", 0.0)
    life, _ = sup.went_down(life, 1.0, FENCED, CFG)
    life = sup.restarted(life, 2.0)
    life, _ = sup.went_down(life, 3.0, FAILED, CFG)
    assert life.fenced_streak == 0


def test_with_restarts_off_a_stopped_actor_stays_down_with_an_alert():
    off = SupervisorConfig(enabled=False)
    down, text = sup.went_down(sup.born("reaper", 0.0), 1.0, FAILED, off)
    assert down.given_up
    assert not sup.due(down, 1e9)
    assert "stays down" in text
    assert "supervisor.enabled" in text
    assert sup.health(down)["restarting"] is False
    assert sup.health(down)["next_restart_at"] is None
