"""The wiring table itself: what each actor owns and consumes is part of the wire contract.

Durable consumer names and filters live in the server: renaming one orphans the old
consumer and replays or loses messages, so the table is pinned here entry by entry.
"""

from __future__ import annotations

from conveyor.app import wiring
from conveyor.config import Config

STAGES = "conveyor.stage.>"
ALERTS = "conveyor.alerts"

PINNED = [
    # name, part, bucket, [(stream, durable, filters)], [core subjects], ticks, status
    (
        "stage_engine",
        "control",
        "conveyor_tasks",
        [("CONVEYOR_JOBS", "stage_engine", ("conveyor.jobs.outcome",))],
        [],
        True,
        True,
    ),
    (
        "queue_worker",
        "control",
        "conveyor_jobs",
        [
            (
                "CONVEYOR_JOBS",
                "queue_worker",
                (
                    "conveyor.jobs.requested",
                    "conveyor.jobs.cancelled",
                    "conveyor.jobs.started",
                    "conveyor.jobs.finished",
                    "conveyor.jobs.reap",
                ),
            )
        ],
        ["conveyor.heartbeats.runs"],
        True,
        True,
    ),
    (
        "reaper",
        "control",
        "conveyor_runs",
        [],
        ["conveyor.heartbeats.runs", "conveyor.jobs.reaped"],
        True,
        True,
    ),
    (
        "lease_keeper",
        "control",
        "conveyor_leases",
        [
            ("CONVEYOR_NOTIFY", "lease_keeper", (STAGES, ALERTS)),
            ("CONVEYOR_LEASES", "lease_keeper", ("conveyor.lease_releases",)),
        ],
        [],
        True,
        True,
    ),
    (
        "tracker_sync",
        "control",
        "",
        [("CONVEYOR_NOTIFY", "tracker", (STAGES, ALERTS))],
        [],
        False,
        False,
    ),
    (
        "intake",
        "control",
        "conveyor_cards",
        [("CONVEYOR_EVENTS", "intake", ("conveyor.events.>",))],
        [],
        False,
        True,
    ),
    ("reconciler", "control", "", [], [], True, True),
    (
        "monitor",
        "control",
        "conveyor_monitor",
        [("CONVEYOR_NOTIFY", "monitor", (STAGES,))],
        [],
        True,
        True,
    ),
    (
        "notifier",
        "control",
        "",
        [("CONVEYOR_NOTIFY", "notifier", (ALERTS,))],
        [],
        False,
        True,
    ),
    ("janitor", "control", "", [], ["conveyor.stage.>"], True, True),
    (
        "launcher",
        "launcher",
        "conveyor_runs",
        [("CONVEYOR_LAUNCH", "launchers", ("conveyor.launch.orders",))],
        ["conveyor.launch.kill"],
        True,
        True,
    ),
]


def _row(spec: wiring.ActorSpec) -> tuple[object, ...]:
    return (
        spec.name,
        spec.part,
        spec.bucket,
        [(f.stream, f.durable, f.filters) for f in spec.feeds],
        [c.subject for c in spec.core_feeds],
        spec.ticks,
        spec.status is not None,
    )


def test_the_table_starts_every_actor_in_order_with_its_bucket_consumers_and_ticks():
    assert [_row(spec) for spec in wiring.TABLE] == PINNED


def test_an_entry_with_a_bucket_names_its_value_type_and_only_the_launcher_reserves_slots():
    for spec in wiring.TABLE:
        assert bool(spec.bucket) == (spec.value_type is not None), spec.name
        reserving = [f for f in spec.feeds if f.reserves_slot]
        assert bool(reserving) == (spec.name == "launcher"), spec.name


def test_the_notifier_runs_only_when_telegram_is_enabled(cfg: Config):
    names = [spec.name for spec in wiring.specs_of("control", cfg)]
    assert "notifier" not in names
    assert names == [row[0] for row in PINNED if row[1] == "control" and row[0] != "notifier"]
    assert [spec.name for spec in wiring.specs_of("launcher", cfg)] == ["launcher"]


def test_each_status_query_answers_on_its_actors_status_subject():
    for spec in wiring.TABLE:
        assert spec.status_subject == f"conveyor.status.{spec.name}"
