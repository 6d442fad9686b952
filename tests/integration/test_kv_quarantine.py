"""A KV record that does not decode is quarantined: kept, skipped, alerted once; the rest loads."""

from __future__ import annotations

import msgspec
import pytest

from bus import subjects
from bus.bridge import Bus
from bus.effects import Effect, Ledger
from bus.kv import QUARANTINED, Quarantined
from bus.messages import Alert
from conveyor.clock import FakeClock
from tests.actors.conftest import Captured
from tests.kv_raw import get_raw, put_raw, settled_alerts

GARBAGE = b"\x00not json{"


class Record(msgspec.Struct, frozen=True):
    name: str
    count: int = 0


def test_load_all_skips_an_undecodable_record_keeps_it_and_alerts_once(bus: Bus) -> None:
    alerts = Captured(bus, subjects.ALERTS, Alert)
    store = bus.store(subjects.BUCKET_TASKS, Record)
    store.create("DEMO-1", Record(name="a"))
    revision = put_raw(bus, subjects.BUCKET_TASKS, "DEMO-2", GARBAGE)
    # Valid JSON of the wrong shape is as unreadable as bytes that are not JSON.
    put_raw(bus, subjects.BUCKET_TASKS, "DEMO-3", b'{"name": 7}')
    store.create("DEMO-4", Record(name="d"))

    for _ in range(3):
        loaded = store.load_all()
        assert sorted(loaded) == ["DEMO-1", "DEMO-4"]
    # Three loads, two bad records: one alert each, naming the record.
    found = settled_alerts(bus, alerts, QUARANTINED)
    assert len(found) == 2
    texts = sorted(a.text for a in found)
    assert f"{subjects.BUCKET_TASKS}/DEMO-2 (revision {revision})" in texts[0]
    assert f"{subjects.BUCKET_TASKS}/DEMO-3" in texts[1]
    assert all(a.level == "error" and a.source == "kv" for a in found)
    # Kept in place, untouched, for the operator.
    assert get_raw(bus, subjects.BUCKET_TASKS, "DEMO-2") == GARBAGE


def test_get_of_an_undecodable_record_raises_quarantined_and_alerts_once(bus: Bus) -> None:
    alerts = Captured(bus, subjects.ALERTS, Alert)
    store = bus.store(subjects.BUCKET_JOBS, Record)
    put_raw(bus, subjects.BUCKET_JOBS, "job-1", GARBAGE)
    for _ in range(2):
        with pytest.raises(Quarantined, match="job-1"):
            store.get("job-1")
    assert len(settled_alerts(bus, alerts, QUARANTINED)) == 1


def test_a_ledger_never_redoes_an_effect_whose_record_does_not_decode(bus: Bus) -> None:
    ledger = Ledger(bus.store(subjects.BUCKET_EFFECTS, Effect), FakeClock(), "test")
    put_raw(bus, subjects.BUCKET_EFFECTS, "DEMO-1.dev.1.push", GARBAGE)
    calls: list[str] = []

    def _do() -> str:
        calls.append("done")
        return "sha"

    with pytest.raises(Quarantined):
        ledger.once("DEMO-1.dev.1.push", _do, lambda: None)
    # Whether the effect happened is unknown: failing closed beats doing it twice.
    assert calls == []


def test_a_new_revision_of_a_bad_record_is_reported_again(bus: Bus) -> None:
    alerts = Captured(bus, subjects.ALERTS, Alert)
    store = bus.store(subjects.BUCKET_RUNS, Record)
    put_raw(bus, subjects.BUCKET_RUNS, "run-1", GARBAGE)
    store.load_all()
    assert len(settled_alerts(bus, alerts, QUARANTINED)) == 1
    put_raw(bus, subjects.BUCKET_RUNS, "run-1", GARBAGE + b"!")
    store.load_all()
    assert len(settled_alerts(bus, alerts, QUARANTINED)) == 2
