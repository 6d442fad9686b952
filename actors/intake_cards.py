"""The Intake's cards: read from KV on demand, a bounded few kept in memory.

One record per Plane card ever seen (`conveyor_cards`): the state Conveyor last
acted on. Only a card that moves needs its record, so start-up reads none (see
docs/adr/0012-cold-state.md): the first event of a card since the start reads its
record by key (one KV get), and the most recently used `CACHED` cards stay in
memory. The Intake is the sole writer, so a kept card is what KV holds.
"""

from __future__ import annotations

from collections import OrderedDict

from actors.intake_policy import CardState
from bus.kv import KeyExists, Quarantined, Store, Versioned
from conveyor.errors import Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)

CACHED = 1000
"""Cards kept in memory at most (the most recently used; about 0.2 KB each)."""


class Cards:
    """The state acted on per card, by work item id; `None` store: nothing is kept."""

    def __init__(self, store: Store[CardState] | None) -> None:
        self._store = store
        self._kept: OrderedDict[str, Versioned[CardState] | None] = OrderedDict()
        self.reads = 0
        """Cards read from KV since the start."""

    @property
    def stored(self) -> bool:
        """True when cards are kept in KV (else nothing is remembered)."""
        return self._store is not None

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, work_item_id: str) -> CardState | None:
        """The state last acted on for this card, or None."""
        entry = self._entry(work_item_id)
        return entry.value if entry is not None else None

    def acted(self, work_item_id: str, card: CardState) -> None:
        """Store `card` as the state acted on (CAS on the kept revision)."""
        if self._store is None:
            return
        entry = self._entry(work_item_id)
        if entry is None:
            try:
                revision = self._store.create(work_item_id, card)
            except KeyExists:
                # A record that did not decode (quarantined, reported) is replaced.
                revision = self._store.put(work_item_id, card)
        else:
            try:
                revision = self._store.update(work_item_id, card, expect=entry.revision)
            except Fenced:
                # Written by someone else: the retried event reads it afresh.
                self._kept.pop(work_item_id, None)
                raise
        self._keep(work_item_id, Versioned(card, revision))

    def _entry(self, work_item_id: str) -> Versioned[CardState] | None:
        if work_item_id in self._kept:
            self._kept.move_to_end(work_item_id)
            return self._kept[work_item_id]
        if self._store is None:
            return None
        self.reads += 1
        try:
            entry = self._store.get(work_item_id)
        except Quarantined as err:
            # Reported by the read; the card is taken as never acted on.
            log.warning("intake.card_unreadable", work_item_id=work_item_id, error=str(err))
            entry = None
        self._keep(work_item_id, entry)
        return entry

    def _keep(self, work_item_id: str, entry: Versioned[CardState] | None) -> None:
        self._kept[work_item_id] = entry
        self._kept.move_to_end(work_item_id)
        while len(self._kept) > CACHED:
            self._kept.popitem(last=False)
