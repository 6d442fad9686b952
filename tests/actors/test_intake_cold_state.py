"""Intake on a real nats-server: no card is read at start, each is read when it moves.

A year of Plane cards is one record each in `conveyor_cards`; the Intake's start
decodes none of them, an event reads its own card by key, and only a bounded few
stay in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors import intake_cards
from actors.intake_cards import Cards
from actors.intake_policy import CardState
from bus import subjects
from bus.bridge import Bus
from bus.kv import Store
from conveyor.config import Config
from tests.actors.conftest import StartActor
from tests.actors.test_intake_moves import ITEM, PROJECT, STATES, Run, delivery, polled
from tests.harness import make_config
from tests.kv_raw import put_many

pytestmark = pytest.mark.timeout(60)

OTHER_CARDS = 500


def _card(state: str) -> CardState:
    return CardState(state_id=STATES[state], state_name=state, key="plane:old", at=1.0)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many card records were decoded (every read decodes); a full read fails."""
    counts = {"cards": 0}
    real = Store._decode

    def _counting(self: Store[Any], key: str, revision: int | None, data: bytes | None) -> Any:
        if self.bucket == subjects.BUCKET_CARDS:
            counts["cards"] += 1
        return real(self, key, revision, data)

    def _no_full_read(self: Store[Any], *_: Any, **__: Any) -> Any:
        raise AssertionError(f"read all of {self.bucket}")

    monkeypatch.setattr(Store, "_decode", _counting)
    monkeypatch.setattr(Store, "load_all", _no_full_read)
    return counts


def test_start_up_reads_no_card_and_an_event_reads_only_its_own(
    start_actor: StartActor, stub: Any, tmp_path: Path, nats_url: str, bus: Bus, decoded: Any
):
    cfg: Config = make_config(
        tmp_path / "data",
        nats_url,
        repos=[{"name": "demo", "prefix": "DEMO", "plane_project": PROJECT}],
    )
    # Cards of many other work items, and this one's, acted on in Confirm Deploy before.
    cards = {f"item-{n}": _card("Rejected") for n in range(OTHER_CARDS)}
    put_many(bus, subjects.BUCKET_CARDS, {**cards, ITEM: _card("Confirm Deploy")})

    run = Run(start_actor, stub, cfg, nats_url)
    try:
        assert run.intake.status()["cards_read"] == 0
        assert decoded["cards"] == 0

        # A poll of the state already acted on is not a move: its card, read by key, says so.
        run.send(*reversed(polled("Confirm Deploy", "in_progress")))
        assert run.states() == []
        assert decoded["cards"] == 1
        # A real move acts once, and is kept without reading the card again.
        run.send(delivery("Approved", old="Confirm Deploy"))
        run.send(delivery("Approved", field="labels"))
        assert run.states() == ["approved"]
        assert run.intake.status()["cards_read"] == 1
        stored = run.intake.store().get(ITEM)
        assert stored is not None
        assert stored.value.state_name == "Approved"
    finally:
        run.close()


def test_only_the_most_recently_used_cards_stay_in_memory(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(intake_cards, "CACHED", 2)
    store: Store[CardState] = bus.store(subjects.BUCKET_CARDS, CardState)
    cards = Cards(store)
    cards.acted("a", _card("Approved"))
    assert cards.get("b") is None
    cards.acted("c", _card("Rejected"))
    # Each was read once ("a" and "c" before their first write); "a" was let go since.
    assert (len(cards), cards.reads) == (2, 3)
    # Read back from KV when needed again, and written on the revision read.
    found = cards.get("a")
    assert found is not None
    assert found.state_name == "Approved"
    assert cards.reads == 4
    cards.acted("a", _card("Rejected"))
    again = store.get("a")
    assert again is not None
    assert again.value.state_name == "Rejected"
