"""The effect ledger runs each side effect at most once per key, across crashes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus import subjects
from bus.bridge import Bus, Versioned
from bus.effects import STARTED, Effect, Ledger, effect_key
from conveyor.clock import FakeClock


@pytest.fixture
def ledger(nats_url: str) -> Iterator[Ledger]:
    bus = Bus.connect(nats_url)
    bus.setup()
    yield Ledger(bus.store(subjects.BUCKET_EFFECTS, Effect), FakeClock(), "test")
    bus.close()


def test_an_effect_runs_once_and_its_result_is_replayed(ledger: Ledger) -> None:
    calls: list[int] = []

    def _do() -> str:
        calls.append(1)
        return "7"

    key = effect_key("DEMO-1", "pull", "abc")
    assert ledger.once(key, _do, lambda: None) == "7"
    assert ledger.once(key, _do, lambda: None) == "7"
    assert calls == [1]


def test_an_interrupted_effect_that_landed_is_adopted_not_repeated(ledger: Ledger) -> None:
    # Given a crash after the call landed but before it was recorded done
    key = effect_key("DEMO-1", "merge", "abc")
    ledger._store.create(key, Effect(key=key, status=STARTED, started_at=1.0))

    # When the step is replayed and the outside world shows the effect happened
    result = ledger.once(key, lambda: pytest.fail("must not run again"), lambda: "merged-sha")

    # Then it is adopted, and recorded done
    assert result == "merged-sha"
    entry = ledger._store.get(key)
    assert entry is not None
    assert entry.value.status == "done"


def test_an_interrupted_effect_that_did_not_land_runs_again(ledger: Ledger) -> None:
    key = effect_key("DEMO-1", "pull", "def")
    ledger._store.create(key, Effect(key=key, status=STARTED, started_at=1.0))
    assert ledger.once(key, lambda: "3", lambda: None) == "3"


def test_keys_are_kv_safe() -> None:
    assert effect_key("DEMO-1", "merge", "feature/DEMO-1-x.y") == "DEMO-1.merge.feature_DEMO-1-x_y"


def test_an_effect_is_recorded_with_one_read_and_keeps_its_start(ledger: Ledger) -> None:
    reads: list[str] = []
    store = ledger._store
    real_get = store.get

    def counting_get(key: str) -> Versioned[Effect] | None:
        reads.append(key)
        return real_get(key)

    store.get = counting_get  # type: ignore[method-assign]
    key = effect_key("DEMO-1", "comment", "x")
    assert ledger.once(key, lambda: "c1", lambda: None) == "c1"
    # The check before the call; the record done is written over the start it made.
    assert reads == [key]
    entry = real_get(key)
    assert entry is not None
    assert (entry.value.status, entry.value.result, entry.value.started_at) == (
        "done",
        "c1",
        1_000_000.0,
    )


def test_a_record_moved_during_the_call_still_gets_the_result(ledger: Ledger) -> None:
    key = effect_key("DEMO-1", "comment", "y")
    store = ledger._store

    def _do() -> str:
        # Someone rewrote the started record meanwhile (by hand, a restore).
        found = store.get(key)
        assert found is not None
        store.update(key, found.value, expect=found.revision)
        return "c2"

    assert ledger.once(key, _do, lambda: None) == "c2"
    entry = store.get(key)
    assert entry is not None
    assert (entry.value.status, entry.value.result) == ("done", "c2")
