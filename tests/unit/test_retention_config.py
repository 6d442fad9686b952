"""The `[retention]` and `[disk]` keys: their defaults and the rules a file must keep."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import config as config_mod
from conveyor.errors import ConfigError


def load(**overrides: Any) -> config_mod.Config:
    return config_mod.load(env={}, overrides=overrides)


def test_the_defaults_keep_a_week_of_worktrees_and_a_month_of_records():
    cfg = load()
    assert (cfg.retention.enabled, cfg.retention.interval_s) == (True, 3600.0)
    assert (cfg.retention.worktrees_days, cfg.retention.records_days) == (7.0, 30.0)
    assert (cfg.retention.log_max_mb, cfg.retention.log_keep) == (100.0, 3)
    assert (cfg.disk.interval_s, cfg.disk.alert_percent, cfg.disk.min_free_mb) == (
        30.0,
        90.0,
        1024.0,
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "rule"),
    [
        ("retention", "interval_s", 0.0, "must be > 0"),
        ("disk", "interval_s", -1.0, "must be > 0"),
        ("retention", "worktrees_days", -1.0, "must be >= 0"),
        ("retention", "records_days", float("nan"), "must be >= 0"),
        ("retention", "log_max_mb", -0.5, "must be >= 0"),
        ("retention", "log_keep", -1, "must be >= 0"),
        ("disk", "min_free_mb", -1.0, "must be >= 0"),
        ("disk", "alert_percent", 101.0, "must be between 0 and 100"),
    ],
)
def test_a_bad_figure_stops_start_up_naming_its_key(
    section: str, key: str, value: object, rule: str
):
    with pytest.raises(ConfigError, match=f"{section}.{key}: {rule}"):
        load(**{section: {key: value}})


def test_an_environment_override_reaches_the_retention():
    cfg = config_mod.load(env={"CONVEYOR_RETENTION__WORKTREES_DAYS": "0"})
    assert cfg.retention.worktrees_days == 0.0
