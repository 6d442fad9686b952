"""PostDeployMonitor decisions: probes, consecutive failures, the 5xx ratio, actions, the window.

Ports the reference monitor's derived scenarios (healthy window, N consecutive
failures, 5xx ratio, uncertain is healthy, alert-only for protected) to a pure
policy: each test feeds probes with an explicit `now` from a fake clock.
"""

from __future__ import annotations

import msgspec
import pytest

from actors import monitor_policy as mp
from bus.messages import StageChanged
from conveyor.clock import FakeClock
from conveyor.config import MonitorConfig, RepoConfig

CFG = MonitorConfig(
    enabled=True,
    window_s=900.0,
    interval_s=30.0,
    fail_threshold=3,
    error_ratio=0.5,
    min_checks=4,
)
REPO = RepoConfig(
    name="shop",
    prefix="SHOP",
    health_url="http://127.0.0.1:9/health",
    rollback_command=["{python}", "rollback.py", "{work_item}"],
)

OK = mp.classify(200)
ERR = mp.classify(503)
BAD = mp.classify(404)
LOST = mp.classify(None, "timed out")


def done(task_id: str = "SHOP-1", *, at: float, repo: str = "shop") -> StageChanged:
    return StageChanged(
        task_id=task_id, repo=repo, old="deploy", new="done", cause="deployed", revision=9, at=at
    )


def started(clock: FakeClock, *, repo: RepoConfig = REPO, cfg: MonitorConfig = CFG) -> mp.Watch:
    watch = mp.start_watch(done(at=clock.now()), repo, now=clock.now(), cfg=cfg)
    assert watch is not None
    return watch


def feed(
    watch: mp.Watch, probes: list[mp.Probe], clock: FakeClock, cfg: MonitorConfig = CFG
) -> mp.Watch:
    """One probe per interval, the clock moving like the actor's ticks would."""
    for probe in probes:
        clock.advance(cfg.interval_s)
        watch = mp.on_probe(watch, probe, clock.now(), cfg)
    return watch


def cfg(**changes: object) -> MonitorConfig:
    return msgspec.structs.replace(CFG, **changes)


# --- classification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (200, mp.OK),
        (204, mp.OK),
        (301, mp.FAILED),
        (404, mp.FAILED),
        (500, mp.SERVER_ERROR),
        (503, mp.SERVER_ERROR),
        (None, mp.UNCERTAIN),
    ],
)
def test_a_probe_is_classified_by_its_status_code(code: int | None, outcome: str):
    assert mp.classify(code).outcome == outcome


def test_a_refused_connection_is_a_failure_not_doubt():
    assert mp.classify(None, "ConnectError", refused=True).outcome == mp.FAILED


# --- starting a watch ---------------------------------------------------------------------


def test_a_done_starts_a_window_counted_from_the_done():
    clock = FakeClock()
    watch = mp.start_watch(done(at=clock.now() - 100), REPO, now=clock.now(), cfg=CFG)
    assert watch is not None
    assert watch.started_at == clock.now() - 100
    assert watch.ends_at == clock.now() - 100 + CFG.window_s
    assert watch.status == mp.WATCHING
    assert watch.has_rollback
    assert not watch.protected


@pytest.mark.parametrize(
    ("repo", "config", "why"),
    [
        (REPO, cfg(enabled=False), "monitor disabled"),
        (None, CFG, "unknown repository"),
        (msgspec.structs.replace(REPO, health_url=""), CFG, "has no health_url"),
        (REPO, cfg(repos=["other"]), "not in monitor.repos"),
    ],
)
def test_no_watch_starts_when_disabled_unwatched_or_without_health_url(
    repo: RepoConfig | None, config: MonitorConfig, why: str
):
    clock = FakeClock()
    assert mp.start_watch(done(at=clock.now()), repo, now=clock.now(), cfg=config) is None
    assert why in mp.watched(repo, config)


def test_a_listed_repository_is_watched():
    clock = FakeClock()
    assert mp.start_watch(done(at=clock.now()), REPO, now=clock.now(), cfg=cfg(repos=["shop"]))


def test_a_stage_change_other_than_done_starts_nothing():
    clock = FakeClock()
    event = msgspec.structs.replace(done(at=clock.now()), new="deploy")
    assert mp.start_watch(event, REPO, now=clock.now(), cfg=CFG) is None


def test_a_done_delivered_after_its_window_would_have_ended_starts_nothing():
    clock = FakeClock()
    old = done(at=clock.now() - CFG.window_s - 1)
    assert mp.start_watch(old, REPO, now=clock.now(), cfg=CFG) is None


def test_a_done_stamped_in_the_future_starts_now():
    clock = FakeClock()
    watch = mp.start_watch(done(at=clock.now() + 50), REPO, now=clock.now(), cfg=CFG)
    assert watch is not None
    assert watch.started_at == clock.now()


# --- healthy window -------------------------------------------------------------------------


def test_a_healthy_window_ends_healthy_with_no_action():
    # Given a full window of 2xx probes (900 s / 30 s = 30 probes)
    clock = FakeClock()
    watch = started(clock)
    watch = feed(watch, [OK] * 29, clock)
    assert watch.status == mp.WATCHING

    # When the window runs out
    clock.advance(CFG.interval_s)
    assert mp.window_over(watch, clock.now())
    watch = mp.on_window_end(watch, clock.now())

    # Then HEALTHY / NONE, with the figures of the reference log
    assert (watch.status, watch.action) == (mp.HEALTHY, mp.NONE)
    assert (watch.checks, watch.failures, watch.server_errors) == (29, 0, 0)
    assert mp.needs_finishing(watch)


def test_window_end_does_not_overwrite_a_degraded_verdict():
    clock = FakeClock()
    watch = feed(started(clock), [ERR] * 3, clock)
    assert mp.on_window_end(watch, clock.now() + CFG.window_s) == watch


# --- consecutive failures -----------------------------------------------------------------


def test_fail_threshold_consecutive_failures_make_it_degraded():
    clock = FakeClock()
    watch = feed(started(clock), [OK, BAD, ERR], clock)
    assert watch.status == mp.WATCHING
    watch = feed(watch, [BAD], clock)
    assert watch.status == mp.DEGRADED
    assert watch.consecutive_failures == 3
    assert "3 consecutive failed probes" in watch.reason
    assert watch.decided_at == clock.now()


def test_a_success_resets_the_consecutive_count():
    clock = FakeClock()
    watch = feed(started(clock), [BAD, BAD, OK, BAD, BAD, OK], clock, cfg(min_checks=100))
    assert watch.status == mp.WATCHING
    assert watch.consecutive_failures == 0
    assert watch.failures == 4


# --- the 5xx ratio --------------------------------------------------------------------------


def test_the_5xx_ratio_degrades_only_after_min_checks():
    # Given a threshold no run can reach, 5xx alternating with 2xx
    config = cfg(fail_threshold=100, min_checks=4, error_ratio=0.5)
    clock = FakeClock()
    watch = feed(started(clock, cfg=config), [ERR, OK, ERR], clock, config)
    # Then 2/3 is over the ratio, but there are fewer than min_checks probes
    assert watch.status == mp.WATCHING
    # When the fourth probe lands, 2/4 reaches 0.5
    watch = feed(watch, [OK], clock, config)
    assert watch.status == mp.DEGRADED
    assert "5xx ratio 2/4" in watch.reason


def test_a_5xx_ratio_below_the_threshold_stays_healthy():
    config = cfg(fail_threshold=100, min_checks=4, error_ratio=0.5)
    clock = FakeClock()
    watch = feed(started(clock, cfg=config), [OK, OK, ERR, OK, ERR, OK], clock, config)
    assert watch.status == mp.WATCHING


def test_4xx_answers_do_not_count_towards_the_5xx_ratio():
    config = cfg(fail_threshold=100, min_checks=2, error_ratio=0.5)
    clock = FakeClock()
    watch = feed(started(clock, cfg=config), [BAD, BAD, BAD, BAD], clock, config)
    assert watch.status == mp.WATCHING
    assert watch.server_errors == 0


# --- uncertain probes -----------------------------------------------------------------------


def test_uncertain_probes_never_degrade_however_many_in_a_row():
    clock = FakeClock()
    watch = feed(started(clock), [LOST] * 29, clock)
    assert watch.status == mp.WATCHING
    assert (watch.uncertain, watch.failures, watch.consecutive_failures) == (29, 0, 0)
    assert mp.on_window_end(watch, clock.now()).status == mp.HEALTHY


def test_an_uncertain_probe_breaks_a_run_of_failures():
    clock = FakeClock()
    watch = feed(started(clock), [ERR, ERR, LOST, ERR, ERR], clock, cfg(min_checks=100))
    assert watch.status == mp.WATCHING
    assert watch.consecutive_failures == 2


def test_uncertain_probes_count_as_healthy_checks_in_the_ratio():
    # 2 x 5xx among 5 checks is 0.4 < 0.5 because the 3 uncertain ones count as healthy
    config = cfg(fail_threshold=100, min_checks=4, error_ratio=0.5)
    clock = FakeClock()
    watch = feed(started(clock, cfg=config), [LOST, LOST, ERR, LOST, ERR], clock, config)
    assert watch.status == mp.WATCHING
    assert watch.checks == 5


# --- actions --------------------------------------------------------------------------------


def test_an_unprotected_repository_with_a_rollback_command_rolls_back():
    clock = FakeClock()
    watch = feed(started(clock), [ERR] * 3, clock)
    assert (watch.status, watch.action) == (mp.DEGRADED, mp.ROLLBACK)


def test_a_protected_repository_only_alerts():
    clock = FakeClock()
    repo = msgspec.structs.replace(REPO, protected=True)
    watch = feed(started(clock, repo=repo), [ERR] * 3, clock)
    assert (watch.status, watch.action) == (mp.DEGRADED, mp.ALERT)


def test_a_repository_without_a_rollback_command_only_alerts():
    clock = FakeClock()
    repo = msgspec.structs.replace(REPO, rollback_command=[])
    watch = feed(started(clock, repo=repo), [ERR] * 3, clock)
    assert (watch.status, watch.action) == (mp.DEGRADED, mp.ALERT)


@pytest.mark.parametrize(
    ("protected", "has_rollback", "action"),
    [(False, True, mp.ROLLBACK), (True, True, mp.ALERT), (False, False, mp.ALERT)],
)
def test_action_for_a_degraded_watch(protected: bool, has_rollback: bool, action: str):
    clock = FakeClock()
    watch = msgspec.structs.replace(started(clock), status=mp.DEGRADED)
    assert mp.action_for(watch, protected, has_rollback) == action


def test_a_watch_that_is_not_degraded_has_no_action():
    clock = FakeClock()
    assert mp.action_for(started(clock), False, True) == mp.NONE


def test_a_verdict_is_final_later_probes_change_nothing():
    clock = FakeClock()
    watch = feed(started(clock), [ERR] * 3, clock)
    assert feed(watch, [OK, OK], clock) == watch


# --- due ------------------------------------------------------------------------------------


def test_a_probe_is_due_at_once_then_every_interval():
    clock = FakeClock()
    watch = started(clock)
    assert mp.due(watch, clock.now(), CFG)
    watch = mp.on_probe(watch, OK, clock.now(), CFG)
    assert not mp.due(watch, clock.now() + CFG.interval_s - 0.5, CFG)
    assert mp.due(watch, clock.now() + CFG.interval_s, CFG)


def test_no_probe_is_due_after_the_window_or_the_verdict():
    clock = FakeClock()
    watch = started(clock)
    assert not mp.due(watch, watch.ends_at, CFG)
    assert mp.window_over(watch, watch.ends_at)
    decided = feed(watch, [ERR] * 3, clock)
    assert not mp.due(decided, clock.now() + CFG.interval_s, CFG)
    assert not mp.window_over(decided, decided.ends_at)


# --- outputs --------------------------------------------------------------------------------


def test_the_log_front_matter_names_the_figures_and_the_rollback_exit_code():
    clock = FakeClock()
    watch = feed(started(clock), [OK, ERR, ERR, ERR], clock)
    watch = msgspec.structs.replace(watch, rollback_result="0")
    fields = mp.log_front_matter(watch, window_started="a", window_ended="b")
    assert fields["post_deploy_status"] == "DEGRADED"
    assert fields["action"] == "ROLLBACK"
    assert fields["checks_total"] == 4
    assert fields["checks_failed"] == 3
    assert fields["server_errors"] == 3
    assert fields["rollback_exit_code"] == 0
    assert fields["work_item"] == "SHOP-1"


def test_a_rollback_without_an_exit_code_reports_none():
    assert mp.rollback_outcome("interrupted") is None
    assert mp.rollback_outcome("timeout") is None
    assert mp.rollback_outcome("2") == 2


def test_summary_counts_watches_by_status_and_action():
    clock = FakeClock()
    watching = started(clock)
    rolled = feed(watching, [ERR] * 3, clock)
    alerted = msgspec.structs.replace(rolled, action=mp.ALERT)
    healthy = mp.on_window_end(watching, watching.ends_at)
    counts = mp.summary([watching, rolled, alerted, healthy])
    assert counts == {
        "watching": 1,
        "HEALTHY": 1,
        "DEGRADED": 2,
        "rolled_back": 1,
        "alert_only": 1,
    }


def test_the_log_names_the_action_under_the_reference_key_and_the_old_one():
    clock = FakeClock()
    watch = feed(started(clock), [ERR, ERR, ERR], clock)
    fields = mp.log_front_matter(watch, window_started="a", window_ended="b")
    assert fields["action_taken"] == fields["action"] == watch.action
    text = mp.log_text(watch, window_started="a", window_ended="b", rollback_log="r.log")
    assert text.startswith('---\nwork_item: "SHOP-1"\n')
    assert f'action_taken: "{watch.action}"' in text
    # The same stored watch gives the same bytes: a commit a crash interrupted is found by them
    assert text == mp.log_text(watch, window_started="a", window_ended="b", rollback_log="r.log")


def test_a_refused_connection_fails_while_a_probe_without_an_answer_is_uncertain():
    assert mp.classify(None, "ConnectError", refused=True).outcome == mp.FAILED
    assert mp.classify(None, "ReadTimeout").outcome == mp.UNCERTAIN
